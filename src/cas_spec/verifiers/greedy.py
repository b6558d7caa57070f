"""Greedy verification: the longest path equal to the target's argmax, plus the bonus token."""

from __future__ import annotations

import torch

from cas_spec.core.interfaces import Verifier
from cas_spec.core.types import SamplingParams, TokenTree, Verdict
from cas_spec.core.verify import greedy_walk


class GreedyVerifier(Verifier):
    """Accepts exactly what plain greedy decoding would produce (temperature 0)."""

    name = "greedy"

    def verify(
        self, tree: TokenTree, target_logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None
    ) -> Verdict:
        argmax = target_logits.argmax(dim=-1).tolist()
        tokens = tree.tokens.tolist()
        nodes, bonus = greedy_walk(tree.children, tokens, argmax)
        return Verdict(tuple(nodes), tuple(tokens[n] for n in nodes), int(bonus))
