"""`LatencyModel`: predicted cost of verifying a tree and of each level's draft calls.

Unit: one one-token target forward at the current context (so a cost is comparable with the
cost table's relative costs). Verification uses the calibrated `CostTable` (measured per number
of tokens and context length); without one, a conservative line 1 + 0.1·(n − 1).

Draft costs are learned online from the engine's step timings and the levels' counters (the
time spent in each level's draft calls, and how many calls and proposed tokens it took), as
seconds = a·calls + b·tokens by least squares with exponential forgetting (`decay` per step),
and divided by the measured seconds of a one-token target forward (verification seconds of the
step divided by the table's cost of that tree size). Until a level has drafted in this
generation, its cost comes from the calibrated `DraftCostTable` (`costs/draft_costs.py`,
measured ahead per level and context length and cached); a level with neither costs 0, so it
is tried and priced from then on. The papers fit a Bayesian linear regression with roofline
features (not published); two features fitted per pipeline on the machine it runs on are what
the data here support.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cas_spec.core.levels import Level
from cas_spec.core.types import StepTimings
from cas_spec.costs.draft_costs import LevelCost, LevelDraftCost


UNMEASURED_TOKEN_COST = 1.0  # one-token target forwards per drafted token of a level never measured


def verify_cost(costs, n: int, context: int) -> float:
    """Cost of one target forward over n tokens (n ≥ 1), in one-token forwards: from the cost
    table `costs`, or a conservative line without one."""
    if costs is not None:
        return costs.cost(n, context)
    return 1.0 + 0.1 * (n - 1)


class LatencyModel:
    """Predicts, in one-token target forwards, the cost of verifying n tokens and of drafting."""

    def __init__(self, costs=None, levels: Sequence[Level] = (), decay: float = 0.9,
                 draft_costs: Mapping[str, LevelDraftCost] | None = None):
        self.costs = costs  # a `CostTable`, or None
        self.draft_costs = dict(draft_costs or {})  # level name -> calibrated prior
        self.decay = decay
        self.levels = list(levels)
        self.level_costs = {level.name: LevelCost() for level in self.levels}
        self.forward_seconds: float | None = None  # EMA of a one-token target forward
        self._counters = self._snapshot()

    def _snapshot(self) -> dict[str, tuple[int, int, float]]:
        return {lv.name: (lv.calls, lv.proposed, lv.seconds) for lv in self.levels}

    def restart(self) -> None:
        """A new generation: the levels' counters were reset; what was learned stays."""
        self._counters = self._snapshot()

    def verify(self, n: int, context: int) -> float:
        """Cost of one target forward over n tokens (n ≥ 1)."""
        return verify_cost(self.costs, n, context)

    def draft(self, level: str, calls: int, tokens: int, context: int = 0) -> float:
        """Cost of `calls` draft calls of `level` proposing `tokens` tokens in all, at `context`."""
        if self.forward_seconds and self.measured(level):
            return self.level_costs[level].seconds(calls, tokens) / self.forward_seconds
        prior = self.draft_costs.get(level)
        return prior.cost(calls, tokens, context) if prior is not None else tokens * UNMEASURED_TOKEN_COST

    def measured(self, level: str) -> bool:
        return self.level_costs[level].observations > 0

    def known(self, level: str) -> bool:
        """Whether `level`'s cost was measured online or calibrated ahead."""
        return self.measured(level) or level in self.draft_costs

    def observe(self, tree_size: int, context: int, timings: StepTimings) -> None:
        """Refine the model from one verified step."""
        if timings.verify > 0:
            forward = timings.verify / self.verify(tree_size, context)
            self.forward_seconds = forward if self.forward_seconds is None else \
                self.decay * self.forward_seconds + (1 - self.decay) * forward
        now = self._snapshot()
        for name, (calls, tokens, seconds) in now.items():
            before = self._counters.get(name, (0, 0, 0.0))
            d_calls, d_tokens, d_seconds = calls - before[0], tokens - before[1], seconds - before[2]
            if d_calls > 0:
                self.level_costs[name].update(d_calls, d_tokens, d_seconds, self.decay)
        self._counters = now

    def describe(self, context: int = 0) -> dict[str, dict[str, float]]:
        """Per level: cost of one call and of one token, in one-token target forwards."""
        return {name: {"per_call": self.draft(name, 1, 0, context), "per_token": self.draft(name, 0, 1, context)}
                for name in self.level_costs}


__all__ = ["LatencyModel", "LevelCost", "UNMEASURED_TOKEN_COST", "verify_cost"]
