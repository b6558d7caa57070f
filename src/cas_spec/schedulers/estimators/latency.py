"""`LatencyModel`: predicted cost of verifying a tree and of each level's draft calls.

Unit: one one-token target forward at the current context (so a cost is comparable with the
cost table's relative costs). Verification comes from the pipeline's read-only `CostModel`
(the calibrated table, measured per number of tokens and context length; without one, a
conservative line 1 + 0.1·(n − 1)).

Draft costs are learned online from the engine's step timings and the levels' counters (the
time spent in each level's draft calls, and how many calls and proposed tokens it took), as
seconds = a·calls + b·tokens by least squares with exponential forgetting (`decay` per step),
and divided by the measured seconds of a one-token target forward (verification seconds of the
step divided by the table's cost of that tree size). Until a level has drafted in this
generation, its cost comes from its calibrated draft cost (`CostModel.draft`, measured ahead per
level and context length and cached by `costs/draft_costs.py`); a level with neither costs 0, so it
is tried and priced from then on. The papers fit a Bayesian linear regression with roofline
features (not published); two features fitted per pipeline on the machine it runs on are what
the data here support.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cas_spec.core.cost_model import CostModel
from cas_spec.core.levels import Level
from cas_spec.core.types import StepTimings

UNMEASURED_TOKEN_COST = 1.0  # one-token target forwards per drafted token of a level never measured


@dataclass
class LevelCost:
    """seconds ≈ per_call · calls + per_token · tokens, least squares with forgetting.

    When calls and tokens are too collinear to separate (a level always drafting the same
    length), or the fit goes negative, the time is all put on tokens (or on calls when there are
    no tokens)."""

    sums: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("cc", "ct", "tt", "cs", "ts", "c", "t", "s"), 0.0)
    )
    per_call: float = 0.0
    per_token: float = 0.0
    observations: int = 0

    def update(self, calls: int, tokens: float, seconds: float, decay: float) -> None:
        new = {
            "cc": calls * calls,
            "ct": calls * tokens,
            "tt": tokens * tokens,
            "cs": calls * seconds,
            "ts": tokens * seconds,
            "c": calls,
            "t": tokens,
            "s": seconds,
        }
        self.sums = {k: decay * v + new[k] for k, v in self.sums.items()}
        self.observations += 1
        m = self.sums
        det = m["cc"] * m["tt"] - m["ct"] ** 2
        if det > 1e-3 * m["cc"] * m["tt"]:
            per_call = (m["tt"] * m["cs"] - m["ct"] * m["ts"]) / det
            per_token = (m["cc"] * m["ts"] - m["ct"] * m["cs"]) / det
            if per_call >= 0 and per_token >= 0:
                self.per_call, self.per_token = per_call, per_token
                return
        if m["t"] > 0:
            self.per_call, self.per_token = 0.0, m["s"] / m["t"]
        else:
            self.per_call, self.per_token = m["s"] / m["c"], 0.0

    def seconds(self, calls: int, tokens: int) -> float:
        return self.per_call * calls + self.per_token * tokens


class LatencyModel:
    """Predicts, in one-token target forwards, the cost of verifying n tokens and of drafting."""

    def __init__(self, costs: CostModel, levels: Sequence[Level] = (), decay: float = 0.9):
        self.costs = costs  # the pipeline's read-only cost view (compared by identity on carry-over)
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
        return self.costs.verify(n, context)

    def draft(self, level: str, calls: int, tokens: int, context: int = 0) -> float:
        """Cost of `calls` draft calls of `level` proposing `tokens` tokens in all, at `context`."""
        if self.forward_seconds and self.measured(level):
            return self.level_costs[level].seconds(calls, tokens) / self.forward_seconds
        prior = self.costs.draft(level)
        return prior.cost(calls, tokens, context) if prior is not None else tokens * UNMEASURED_TOKEN_COST

    def measured(self, level: str) -> bool:
        return self.level_costs[level].observations > 0

    def known(self, level: str) -> bool:
        """Whether `level`'s cost was measured online or calibrated ahead."""
        return self.measured(level) or self.costs.draft(level) is not None

    def observe(self, tree_size: int, context: int, timings: StepTimings) -> None:
        """Refine the model from one verified step."""
        if timings.verify > 0:
            forward = timings.verify / self.verify(tree_size, context)
            self.forward_seconds = (
                forward
                if self.forward_seconds is None
                else self.decay * self.forward_seconds + (1 - self.decay) * forward
            )
        now = self._snapshot()
        for name, (calls, tokens, seconds) in now.items():
            before = self._counters.get(name, (0, 0, 0.0))
            d_calls, d_tokens, d_seconds = calls - before[0], tokens - before[1], seconds - before[2]
            if d_calls > 0:
                self.level_costs[name].update(d_calls, d_tokens, d_seconds, self.decay)
        self._counters = now

    def describe(self, context: int = 0) -> dict[str, dict[str, float]]:
        """Per level: cost of one call and of one token, in one-token target forwards."""
        return {
            name: {"per_call": self.draft(name, 1, 0, context), "per_token": self.draft(name, 0, 1, context)}
            for name in self.level_costs
        }


__all__ = ["UNMEASURED_TOKEN_COST", "LatencyModel", "LevelCost"]
