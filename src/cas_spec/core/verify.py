"""Pure acceptance kernels. Notation: p = target probabilities, q = draft probabilities.

Greedy: accept the longest path whose tokens equal the target's argmax, then the bonus token.

Sampling, at one tree node with target distribution p and children x_1..x_m tried in order
(DESIGN §6): each child either carries the q it was sampled from (independently of its
siblings) or is a deterministic candidate, a point mass q = δ(x). Child i is accepted with
probability min(1, r_i(x_i) / q_i(x_i)), where r_1 = p; on rejection r_{i+1} = norm(max(r_i − q_i, 0)).
If every child is rejected the bonus token is drawn from r_{m+1}. For a point mass this is
"accept with r_i(x), else zero x and renormalise". The emitted token is distributed exactly as p.

The kernels return probabilities, so tests can check this algebra exactly, not by sampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

Candidate = tuple[int, "torch.Tensor | None"]  # (token, q it was sampled from [V], or None = point mass)


@dataclass(frozen=True)
class SiblingStep:
    """Acceptance of one candidate given the residual it meets."""

    accept_prob: float  # probability of accepting this candidate once it is tried
    residual: torch.Tensor  # [V] float64 residual distribution after rejecting it


def _normalise(weights: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    total = weights.sum()
    if total <= 0:
        # Only reachable with probability zero (r ≤ q everywhere means acceptance was certain);
        # keep a valid distribution for the exact-probability kernels.
        return fallback
    return weights / total


def candidate_step(residual: torch.Tensor, token: int, draft_probs: torch.Tensor | None) -> SiblingStep:
    """Try one candidate against the current residual r ([V], float64)."""
    if draft_probs is None:
        accept = float(residual[token])
        rejected = residual.clone()
        rejected[token] = 0.0
        return SiblingStep(min(1.0, accept), _normalise(rejected, residual))
    q = draft_probs.to(residual.dtype)
    q_x = float(q[token])
    accept = 1.0 if q_x <= 0 else min(1.0, float(residual[token]) / q_x)
    return SiblingStep(accept, _normalise(torch.clamp(residual - q, min=0.0), residual))


def sibling_steps(target_probs: torch.Tensor, candidates: Sequence[Candidate]) -> list[SiblingStep]:
    """The acceptance probability of each candidate in turn and the residual it leaves."""
    residual = target_probs.double()
    steps = []
    for token, q in candidates:
        step = candidate_step(residual, token, q)
        steps.append(step)
        residual = step.residual
    return steps


def emission_distribution(target_probs: torch.Tensor, candidates: Sequence[Candidate]) -> torch.Tensor:
    """[V] float64: probability that the sibling rule emits each token, for these fixed candidates.

    Σ_i P(reach i) · accept_i · δ(x_i)  +  P(reject all) · residual.
    """
    out = torch.zeros_like(target_probs, dtype=torch.float64)
    reach = 1.0
    residual = target_probs.double()
    for (token, _), step in zip(candidates, sibling_steps(target_probs, candidates)):
        out[token] += reach * step.accept_prob
        reach *= 1.0 - step.accept_prob
        residual = step.residual
    return out + reach * residual


def greedy_walk(
    children: Sequence[Sequence[int]], node_tokens: Sequence[int], argmax: Sequence[int]
) -> tuple[list[int], int]:
    """Longest path from the root whose tokens equal the target argmax; returns (nodes, bonus)."""
    path: list[int] = []
    node = 0
    while True:
        want = argmax[node]
        nxt = next((c for c in children[node] if node_tokens[c] == want), None)
        if nxt is None:
            return path, want
        path.append(nxt)
        node = nxt
