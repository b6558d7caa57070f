"""Online acceptance estimates and the expected value of verifying a chain.

Model: each drafted token is accepted with probability α given that the tokens before it were
(the i.i.d. model of Leviathan et al.); a chain of m draft tokens then commits
E(m) = (1 − α^(m+1)) / (1 − α) tokens, bonus included, at the cost of one target forward over
m + 1 tokens. α is estimated per level as an exponential moving average over verified steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


def expected_tokens(alpha: float, drafted: int) -> float:
    """Expected tokens committed by verifying `drafted` chain tokens, bonus token included."""
    if alpha >= 1.0:
        return drafted + 1.0
    return (1.0 - alpha ** (drafted + 1)) / (1.0 - alpha)


@dataclass
class AcceptanceEstimate:
    """EMA of the per-token acceptance probability α of one level: α ← λ·α + (1 − λ)·α_step."""

    alpha: float = 0.6  # prior: optimistic enough that a new level gets tried
    decay: float = 0.7  # λ
    steps: int = 0

    def update(self, drafted: int, accepted: int) -> None:
        """One verified chain: `accepted` of its first `drafted` tokens were accepted in a row."""
        if drafted <= 0:
            return
        failures = 1 if accepted < drafted else 0
        observed = accepted / (accepted + failures) if accepted + failures else 0.0
        self.alpha = self.decay * self.alpha + (1.0 - self.decay) * observed
        self.steps += 1


def best_draft_length(
    alpha: float,
    available: int,
    cost: Callable[[int, int], float],
    context: int,
    draft_cost: float = 0.0,
    call_cost: float = 0.0,
) -> int:
    """How many tokens to draft, or of `available` drafted tokens to verify: maximise
    E(m) / (cost(m + 1) + call_cost + m · draft_cost) over m ≥ 1, against 1 / cost(1) for m = 0.

    `cost(n, context)` is the relative cost of a target forward over n tokens (a `CostTable.cost`);
    `draft_cost` and `call_cost` are the costs of drafting one token and of one draft call in the
    same unit (0 once the draft is paid for). Returns 0 when verifying the root alone (a plain
    decoding step) is best.
    """
    best, best_value = 0, 1.0 / cost(1, context)
    for m in range(1, available + 1):
        value = expected_tokens(alpha, m) / (cost(m + 1, context) + call_cost + m * draft_cost)
        if value > best_value * (1 + 1e-9):
            best, best_value = m, value
    return best


@dataclass
class WindowedAcceptance:
    """DyTC's per-level estimate (`notes/papers.md` §1.3): α̂ ← λ·α̂ + (1 − λ)·α_recent, updated
    once per step that brings evidence, with α_recent the acceptance rate over the last `window`
    steps (steps that did not score the level's tokens count as nothing, so old evidence ages out
    even while the level is unused; a window that also reached back for a minimum number of tokens
    recovered more slowly from a collapse and paid nothing in the simulations of
    `tests/schedulers/test_dytc.py`).

    Counted per drafted token whose parent was on the committed path (the i.i.d. chain model's
    α), pruned tokens included, so `hits / seen` is an unbiased rate. Until `warmup` steps
    with evidence are seen, α̂ is the running rate over all of them with `prior` worth two
    observations, so a new level is tried, the first steps do not swing it too far, and a level
    seen only through sparse probes is judged on all its probes, not on the last one."""

    prior: float = 0.6
    decay: float = 0.7  # λ
    window: int = 20  # H, in steps
    warmup: int = 20
    alpha: float = 0.6
    steps: int = 0  # steps with evidence
    history: list[tuple[float, float]] = field(default_factory=list)  # (eligible, accepted) per step
    carried: float = 8.0  # tokens of evidence α̂ is worth in the window at a new generation's start
    seen: int = 0  # eligible tokens since the start
    hits: int = 0  # accepted tokens since the start

    def __post_init__(self) -> None:
        self.alpha = self.prior

    def restart(self) -> None:
        """A new generation: the window restarts with α̂ alone in it, as `carried` tokens of
        evidence (one pseudo-step that ages out like any step), so the new text's rate replaces
        the last one's within a few steps (a short answer is over before `window` steps of
        another text would age out), yet one unlucky first draft does not sink α̂."""
        self.history[:] = [(self.carried, self.carried * self.alpha)]

    def update(self, eligible: int, accepted: int) -> None:
        """One verified step: `accepted` of the `eligible` tokens of this level (0, 0 if unused)."""
        self.history.append((eligible, accepted))
        del self.history[: -self.window]
        if eligible <= 0:
            return
        self.steps += 1
        self.seen += eligible
        self.hits += accepted
        if self.steps <= self.warmup:
            self.alpha = (self.hits + 2 * self.prior) / (self.seen + 2)
        else:
            seen = sum(e for e, _ in self.history)
            hits = sum(a for _, a in self.history)
            self.alpha = self.decay * self.alpha + (1 - self.decay) * hits / seen


ALTERNATIVE = 100  # bucket keys of runners-up start here
ALTERNATIVE_PRIOR = 0.1  # a runner-up's acceptance before its bucket has evidence


@dataclass
class ConfidenceCalibration:
    """Acceptance probability of a drafted token given its drafter's confidence, learned online.

    Confidences are bucketed (draft probabilities in fifths; lookup match lengths 1..6+), drafted
    tokens apart from runners-up (`alternative`). A drafted token's probability is the level's α̂
    scaled by how its bucket fares against the level's drafted tokens overall (both counted with
    forgetting, shrunk by `strength` pseudo-observations), so the level's α̂ sets the level and the
    buckets only rank tokens within it. A runner-up's is its bucket's own rate (shrunk toward
    `ALTERNATIVE_PRIOR`): it is a sibling of a drafted token, not a continuation the level's α̂
    describes."""

    strength: float = 3.0
    decay: float = 0.98
    buckets: dict[int, list[float]] = field(default_factory=dict)  # key -> [accepted, eligible]

    @staticmethod
    def bucket(confidence: float, alternative: bool = False) -> int:
        key = 10 + min(int(confidence), 6) if confidence >= 1.0 else min(int(confidence * 5), 4)
        return key + (ALTERNATIVE if alternative else 0)

    def probability(self, key: int, alpha: float) -> float:
        accepted, eligible = self.buckets.get(key, (0.0, 0.0))
        if key >= ALTERNATIVE:
            return (accepted + self.strength * ALTERNATIVE_PRIOR) / (eligible + self.strength)
        drafted = [counts for k, counts in self.buckets.items() if k < ALTERNATIVE]
        total_accepted = sum(a for a, _ in drafted)
        total_eligible = sum(e for _, e in drafted)
        overall = (total_accepted + self.strength * 0.5) / (total_eligible + self.strength)
        rate = (accepted + self.strength * overall) / (eligible + self.strength)
        return min(alpha * rate / overall, 1.0)

    def update(self, key: int, accepted: bool) -> None:
        for counts in self.buckets.values():
            counts[0] *= self.decay
            counts[1] *= self.decay
        counts = self.buckets.setdefault(key, [0.0, 0.0])
        counts[0] += float(accepted)
        counts[1] += 1.0
