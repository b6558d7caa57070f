"""Online acceptance estimates and the expected value of verifying a chain.

Model: each drafted token is accepted with probability α given that the tokens before it were
(the i.i.d. model of Leviathan et al.); a chain of m draft tokens then commits
E(m) = (1 − α^(m+1)) / (1 − α) tokens, bonus included, at the cost of one target forward over
m + 1 tokens. α is estimated per level as an exponential moving average over verified steps.
"""

from __future__ import annotations

from dataclasses import dataclass


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


def best_draft_length(alpha: float, available: int, cost, context: int, draft_cost: float = 0.0) -> int:
    """How many tokens to draft, or of `available` drafted tokens to verify: maximise
    E(m) / (cost(m + 1) + m · draft_cost).

    `cost(n, context)` is the relative cost of a target forward over n tokens (a `CostTable.cost`);
    `draft_cost` is the cost of drafting one token in the same unit (0 once the draft is paid for).
    Returns 0 when verifying the root alone (a plain decoding step) is best.
    """
    best, best_value = 0, 1.0 / cost(1, context)
    for m in range(1, available + 1):
        value = expected_tokens(alpha, m) / (cost(m + 1, context) + m * draft_cost)
        if value > best_value * (1 + 1e-9):
            best, best_value = m, value
    return best
