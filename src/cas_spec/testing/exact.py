"""Exact laws, for checks that compare numbers instead of samples.

- Distributions: `as_distribution`, `point_mass`, `random_distribution` (a seeded variety of
  integer-weighted, float-weighted and point-mass distributions).
- Trees: `tree_from_branches` builds a `TokenTree` from (parent, token) pairs.
- `TargetLaw`: the exact law of the first `length` tokens plain sampling emits after a prompt
  (sequences that reach an end-of-sequence token stop there), with every conditional it used.
- `step_law`: the exact law of the tokens one verification step emits (accepted path + bonus) for
  a fixed token tree and fixed target probabilities, by the same kernels the sampling verifier
  uses (`cas_spec.core.verify.candidate_step`), so no sampling is involved.
- `first_step_law`: `step_law` continued by the target's own conditionals up to `length` tokens:
  the law of a whole generation given its first tree. Averaged over the draft's randomness it must
  equal `TargetLaw.law` exactly when the drafts are honest (each sampled token drawn from the q it
  carries) and the target logits are right.

Notation: target = p, draft = q.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from cas_spec.core.sampling import target_probs
from cas_spec.core.verify import candidate_step
from cas_spec.plugin import SamplingParams, TokenTree, TreeBuilder

Sequence_ = tuple[int, ...]
PLAIN_SAMPLING = SamplingParams(temperature=1.0)  # unwarped sampling: the default law


# -- distributions --------------------------------------------------------------------------------
def as_distribution(weights: Iterable[float]) -> torch.Tensor:
    """Non-negative weights (not all zero) → a [V] float64 distribution."""
    w = torch.tensor(list(weights), dtype=torch.float64)
    return w / w.sum()


def point_mass(vocab: int, token: int) -> torch.Tensor:
    """[V] float64 distribution with all its mass on `token`."""
    out = torch.zeros(vocab, dtype=torch.float64)
    out[token] = 1.0
    return out


def random_distribution(rng: random.Random, vocab: int) -> torch.Tensor:
    """A [V] float64 distribution from a seeded RNG: small integer weights (exact ties and zeros),
    float weights with zeros, or a point mass."""
    kind = rng.choice(["int", "int", "float", "float", "point"])
    if kind == "point":
        return point_mass(vocab, rng.randrange(vocab))
    while True:
        if kind == "int":
            weights = [float(rng.randint(0, 3)) for _ in range(vocab)]
        else:
            weights = [0.0 if rng.random() < 0.3 else rng.uniform(0.01, 1.0) for _ in range(vocab)]
        if sum(weights) > 0:
            return as_distribution(weights)


# -- trees --------------------------------------------------------------------------------------------
def tree_from_branches(root: int, branches: Iterable[tuple[int, int]], level: str = "hand") -> TokenTree:
    """A tree rooted at token `root`; `branches` are (parent node, token) in insertion order, so
    node i + 1 is the i-th branch."""
    builder = TreeBuilder(root)
    for parent, token in branches:
        builder.add(parent, token, level)
    return builder.build()


def path_tokens(tree: TokenTree, node: int) -> Sequence_:
    """Tokens from below the root down to `node` (the root excluded)."""
    out = []
    while node > 0:
        out.append(int(tree.tokens[node]))
        node = tree.parents[node]
    return tuple(reversed(out))


def _truncate(seq: Sequence_, eos: Iterable[int], length: int) -> Sequence_:
    """What the engine keeps of emitted tokens: up to and including the first EOS, at most `length`."""
    eos = set(eos)
    for i, token in enumerate(seq):
        if token in eos:
            return seq[: min(i + 1, length)]
    return seq[:length]


# -- the target's law ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetLaw:
    """The exact law of the first `length` tokens plain sampling emits after `prompt`."""

    prompt: Sequence_
    length: int
    eos: Sequence_
    sampling: SamplingParams
    conditionals: Mapping[Sequence_, torch.Tensor]  # continuation → [V] float64 p(· | prompt + continuation)
    law: Mapping[Sequence_, float]  # output (length tokens, or fewer ending in EOS) → probability
    _continuations: dict = field(default_factory=dict, repr=False, compare=False)

    def continuation(self, emitted: Sequence_) -> list[tuple[Sequence_, float]]:
        """(output, probability) of every way the target completes `emitted` to an output. An
        emitted prefix the target cannot produce stays as it is (a comparison with `law` then
        sees an impossible output)."""
        emitted = _truncate(emitted, self.eos, self.length)
        if emitted not in self._continuations:
            if len(emitted) >= self.length or (emitted and emitted[-1] in self.eos) or emitted not in self.conditionals:
                out = [(emitted, 1.0)]
            else:
                out = [
                    (seq, p * w)
                    for token, p in enumerate(self.conditionals[emitted].tolist())
                    if p > 0
                    for seq, w in self.continuation(emitted + (token,))
                ]
            self._continuations[emitted] = out
        return self._continuations[emitted]

    def extend(self, emitted: Sequence_, weight: float, out: dict) -> None:
        """Add to `out` the law of the output when a run has emitted `emitted` (probability
        `weight`) and the target samples the rest."""
        for seq, w in self.continuation(emitted):
            out[seq] = out.get(seq, 0.0) + weight * w


def law_from(
    next_probs: Callable[[list[Sequence_]], torch.Tensor],
    length: int,
    eos: Iterable[int] = (),
    sampling: SamplingParams = PLAIN_SAMPLING,
    prompt: Sequence[int] = (),
) -> TargetLaw:
    """The `TargetLaw` of a sampler whose next-token law after each continuation in a batch is
    `next_probs(continuations)` ([B, V] float64 rows): a model (`target_law`) or a synthetic one."""
    eos = tuple(eos)
    conditionals: dict[Sequence_, torch.Tensor] = {}
    law: dict[Sequence_, float] = {}
    frontier: dict[Sequence_, float] = {(): 1.0}
    for _ in range(length):
        live = list(frontier)
        nxt: dict[Sequence_, float] = {}
        for s, row in zip(live, next_probs(live)):
            conditionals[s] = row
            for token, p in enumerate(row.tolist()):
                if p > 0:
                    seq = s + (token,)
                    (law if token in eos else nxt)[seq] = frontier[s] * p
        frontier = nxt
    law.update(frontier)
    return TargetLaw(tuple(int(t) for t in prompt), length, eos, sampling, conditionals, law)


def target_law(
    model: torch.nn.Module,
    prompt: Sequence[int],
    length: int,
    eos: Iterable[int] = (),
    sampling: SamplingParams = PLAIN_SAMPLING,
) -> TargetLaw:
    """Exact law of plain sampling's first `length` tokens after `prompt` (one batched forward
    per depth: 1 + V + … + V^(length−1) sequences, fine for V ≈ 10 and length ≤ 3), warped by
    `sampling` as the verifier warps the target's logits."""
    prompt = [int(t) for t in prompt]
    device = next(model.parameters()).device

    @torch.inference_mode()
    def next_probs(continuations: list[Sequence_]) -> torch.Tensor:
        ids = torch.tensor([prompt + list(c) for c in continuations], dtype=torch.long, device=device)
        logits = model(input_ids=ids).logits[:, -1].float().cpu()
        return target_probs(logits, sampling).double()

    return law_from(next_probs, length, eos, sampling, prompt)


# -- one verification step ------------------------------------------------------------------------
def step_law(tree: TokenTree, probs: torch.Tensor) -> dict[Sequence_, float]:
    """Exact law of the tokens the sampling verifier emits for `tree` (accepted tokens + bonus),
    given the target's warped probabilities `probs` ([N, V], row i = p after node i). Children are
    tried in insertion order against the running residual, as `SamplingVerifier` does."""
    probs = probs.double()
    tokens = tree.tokens.tolist()
    memo: dict[int, dict[Sequence_, float]] = {}

    def below(node: int) -> dict[Sequence_, float]:
        if node in memo:
            return memo[node]
        out: dict[Sequence_, float] = defaultdict(float)
        reach, residual = 1.0, probs[node]
        for child in tree.children[node]:
            step = candidate_step(residual, tokens[child], tree.draft_probs[child])
            accepted = reach * step.accept_prob
            if accepted > 0:
                for tail, w in below(child).items():
                    out[(tokens[child],) + tail] += accepted * w
            reach *= 1.0 - step.accept_prob
            residual = step.residual
        for token, r in enumerate(residual.tolist()):
            if r > 0:
                out[(token,)] += reach * r
        memo[node] = dict(out)
        return memo[node]

    return below(0)


def first_step_law(tree: TokenTree, target_logits: torch.Tensor, law: TargetLaw) -> dict[Sequence_, float]:
    """Law of a generation's first `law.length` tokens given its first tree and the target logits
    the engine computed over it: `step_law`, continued by the target's exact conditionals."""
    out: dict[Sequence_, float] = {}
    for seq, w in step_law(tree, target_probs(target_logits.float(), law.sampling)).items():
        law.extend(seq, w, out)
    return out


def row_errors(tree: TokenTree, target_logits: torch.Tensor, law: TargetLaw) -> list[tuple[Sequence_, float]]:
    """(path, max |p_engine − p_exact|) for every node whose path `law` has a conditional for:
    the probabilities the engine verified with, against plain forwards over prompt + path."""
    probs = target_probs(target_logits.float(), law.sampling).double()
    out = []
    for node in range(tree.size):
        path = path_tokens(tree, node)
        if path in law.conditionals:
            out.append((path, float((probs[node] - law.conditionals[path]).abs().max())))
    return out


def total_variation(a: Mapping, b: Mapping) -> float:
    """½ Σ |a(x) − b(x)| over the union of both supports."""
    return 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))


__all__ = [
    "TargetLaw",
    "as_distribution",
    "first_step_law",
    "law_from",
    "path_tokens",
    "point_mass",
    "random_distribution",
    "row_errors",
    "step_law",
    "target_law",
    "total_variation",
    "tree_from_branches",
]
