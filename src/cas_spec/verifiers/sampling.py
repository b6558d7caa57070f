"""Sampling verification: speculative sampling over a token tree (see `cas_spec.core.verify`).

Target = p, draft = q. Children that carry the q they were sampled from are tested with
min(1, p/q); deterministic children (prompt lookup, argmax drafts) are point masses. The target
logits are warped (temperature, top-k, top-p) exactly as plain sampling warps them, so the
output is distributed as the target's.
"""

from __future__ import annotations

import torch

from cas_spec.core.interfaces import Verifier
from cas_spec.core.sampling import target_probs
from cas_spec.core.types import SamplingParams, TokenTree, Verdict
from cas_spec.core.verify import candidate_step


def _uniform(generator: torch.Generator | None) -> float:
    # Draw on the generator's own device: the engine seeds a generator on the target's device,
    # and torch refuses a CUDA generator for a (default) CPU tensor.
    device = generator.device if generator is not None else "cpu"
    return float(torch.rand((), generator=generator, dtype=torch.float64, device=device))


class SamplingVerifier(Verifier):
    """Lossless for any tree, any temperature, top-k and top-p."""

    name = "sampling"

    def verify(
        self, tree: TokenTree, target_logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None
    ) -> Verdict:
        probs = target_probs(target_logits, sampling).double()  # [N, V]
        tokens = tree.tokens.tolist()
        path: list[int] = []
        node = 0
        while True:
            residual = probs[node]
            accepted = None
            for child in tree.children[node]:
                step = candidate_step(residual, tokens[child], tree.draft_probs[child])
                if _uniform(generator) < step.accept_prob:
                    accepted = child
                    break
                residual = step.residual
            if accepted is None:
                bonus = int(torch.multinomial(residual, 1, generator=generator).item())
                return Verdict(tuple(path), tuple(tokens[n] for n in path), bonus)
            path.append(accepted)
            node = accepted
