"""A frozen clock for checks that must not depend on how fast the machine runs.

Schedulers decide from measured time (a level's draft cost, the plain step a gate compares with).
Inside `frozen_clock(pipe)` every time the engine and the levels measure is zero, so nothing is
learned from timings: costs stay what the pipeline was given (its calibration, or stand-ins such
as `harness.PriorCost`), and the same seeds make the same trees on any machine and under any load.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING, cast

from cas_spec.core import engine

if TYPE_CHECKING:
    from cas_spec.pipeline import Pipeline


def _zero() -> float:
    return 0.0


@contextlib.contextmanager
def frozen_clock(pipe: Pipeline) -> Iterator[None]:
    """Within the block, the engine's and `pipe`'s levels' clocks read 0; restored in `finally`."""

    saved_time, saved_clocks = engine.time, [level.clock for level in pipe.levels]
    try:
        engine.time = cast(ModuleType, SimpleNamespace(perf_counter=_zero))  # the engine reads only perf_counter
        for level in pipe.levels:
            level.clock = _zero
        yield
    finally:
        engine.time = saved_time
        for level, clock in zip(pipe.levels, saved_clocks, strict=True):
            level.clock = clock


__all__ = ["frozen_clock"]
