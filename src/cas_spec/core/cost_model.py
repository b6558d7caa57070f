"""`CostModel`: what a pipeline knows ahead about the cost of its forwards and drafts, read-only.

Schedulers price their choices with it (`DecodingState.costs`); they never see the target or the
calibration behind it. Units: one one-token target forward at the same context, so every cost
compares with every other. Notation: target = p, draft = q (not used here).

- `verify(n, context)`: a target forward over n new tokens (n ≥ 1) on `context` cached tokens,
  from the measured table (`costs/table.py`, `cas-spec calibrate`) or, without one, the
  conservative line 1 + 0.1 · (n − 1).
- `draft(level)`: the level's calibrated draft cost (per call, per drafted token, and for model
  levels their agreement with the target's greedy tokens; `costs/draft_costs.py`), or None.

The tables are measured objects from `cas_spec.costs`; this module names only what it reads of
them (`VerifyTable`, `DraftCost`), so `core` depends on no layer above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@runtime_checkable
class VerifyTable(Protocol):
    """A measured table of target forward costs (`cas_spec.costs.table.CostTable`)."""

    def cost(self, n: int, context: int = 0) -> float:
        """Cost of a forward over n new tokens relative to a one-token forward."""
        ...


@runtime_checkable
class DraftCost(Protocol):
    """A level's calibrated draft cost (`cas_spec.costs.draft_costs.LevelDraftCost`)."""

    @property
    def agreement(self) -> float | None:
        """Share of positions where the level's greedy token is the target's (model levels)."""
        ...

    def cost(self, calls: int, tokens: int, context: int) -> float:
        """Cost of `calls` draft calls proposing `tokens` tokens in all, at `context`."""
        ...


def fallback_verify_cost(n: int) -> float:
    """What a forward over n tokens is assumed to cost without a measured table."""
    return 1.0 + 0.1 * (n - 1)


class CostModel(Protocol):
    """The read-only cost view a scheduler gets (`DecodingState.costs`)."""

    @property
    def measured(self) -> bool:
        """Whether verification costs come from a measured table (else the fallback line)."""
        ...

    def verify(self, n: int, context: int) -> float:
        """Cost of one target forward over n tokens (n ≥ 1) on `context` cached tokens."""
        ...

    def draft(self, level: str) -> DraftCost | None:
        """The calibrated draft cost of the level named `level`, or None."""
        ...


@dataclass(frozen=True)
class CostView:
    """The `CostModel` a pipeline hands its scheduler: its verification table (or none) and its
    levels' calibrated draft costs. One object per calibration: schedulers that carry learning
    over between generations compare it by identity to tell a recalibration."""

    table: VerifyTable | None = None  # measured verification costs, or None (the fallback line)
    drafts: Mapping[str, DraftCost] = field(default_factory=dict)  # level name -> calibrated draft cost

    @property
    def measured(self) -> bool:
        return self.table is not None

    def verify(self, n: int, context: int) -> float:
        if self.table is not None:
            return self.table.cost(n, context)
        return fallback_verify_cost(n)

    def draft(self, level: str) -> DraftCost | None:
        return self.drafts.get(level)


UNCALIBRATED = CostView()  # no table, no draft costs: `calibration: off`

__all__ = ["UNCALIBRATED", "CostModel", "CostView", "DraftCost", "VerifyTable", "fallback_verify_cost"]
