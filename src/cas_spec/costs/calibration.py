"""`Calibration`: what a pipeline measures about its model, levels and machine before decoding.

Which linear kernel to run for each number of rows, the resulting cost of target forwards by
number of new tokens (`CostTable`), and each level's draft cost and agreement with the target
(`LevelDraftCost`). All measured (never constants: the best kernel and the cost curve change between
CPUs), cached per model shape, machine, thread count and kernel settings (the draft costs per level
signature too), and reused. A quick measurement runs on a pipeline's first use; `cas-spec calibrate`
runs the full one. The same kernels serve every pipeline on the model, the autoregressive reference
included, so speculative and plain decoding run identical arithmetic for a forward of the same size.

A `Calibration` is immutable; `measure` builds one, `view()` is the read-only `CostView` the
scheduler sees, and `kernels_active` switches the model to its kernels for a block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from cas_spec.core.cost_model import CostView
from cas_spec.core.levels import Level
from cas_spec.core.target import Target
from cas_spec.costs.calibrate import QUICK_SIZES
from cas_spec.costs.calibrate import measure as measure_table
from cas_spec.costs.draft_costs import LevelDraftCost, calibrated_draft_costs, calibration_text_ids
from cas_spec.costs.table import CostTable, calibration_key, load_cached, save
from cas_spec.kernels import ATTENTION_NAME, DEFAULT_NS, LinearPlan, attention_kernel, linear_kernels, select_plan

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

QUICK_KERNEL_SIZES = (1, 2, 3, 4, 6, 8, 12, 16)
PREPARE_TOKENS = 512  # tokens of real text the levels' one-time work (`prepare`) runs on


@dataclass(frozen=True)
class Calibration:
    costs: CostTable
    linear_plan: LinearPlan | None  # None: stock linear layers
    attention: str | None  # attention implementation to run under, or None to leave the model's
    drafts: Mapping[str, LevelDraftCost] = field(default_factory=lambda: MappingProxyType({}))  # level -> cost
    _view: CostView = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "drafts", MappingProxyType(dict(self.drafts)))
        object.__setattr__(self, "_view", CostView(self.costs, self.drafts))

    def view(self) -> CostView:
        """The read-only cost view of this calibration (one object: schedulers compare it by
        identity to tell a recalibration)."""
        return self._view


def fast_kernels_apply(model: nn.Module) -> bool:
    """The CPU kernels are built for float32 on the CPU; elsewhere the stock path is used."""
    param = next(model.parameters())
    return param.device.type == "cpu" and param.dtype == torch.float32


def _plan_to_json(plan: LinearPlan) -> dict:
    return {"table": [list(entry) for entry in plan.table], "default": plan.default}


def _plan_from_json(data: dict) -> LinearPlan:
    return LinearPlan(tuple((int(r), str(k)) for r, k in data["table"]), data["default"])


@contextlib.contextmanager
def kernels_active(model: nn.Module, calibration: Calibration | None) -> Iterator[None]:
    """Within the block the model runs the calibrated kernels; restored in `finally`."""
    if calibration is None:
        yield
        return
    with running(model, calibration.linear_plan, calibration.attention):
        yield


@contextlib.contextmanager
def running(model: nn.Module, plan: LinearPlan | None, attention: str | None) -> Iterator[None]:
    """Within the block the model runs linear kernels by `plan` and `attention` (None: as loaded)."""
    with contextlib.ExitStack() as stack:
        if attention is not None:
            stack.enter_context(attention_kernel(model, attention))
        if plan is not None:
            stack.enter_context(linear_kernels(model, plan))
        yield


def measure_target(
    target: Target,
    threads: int | None,
    linear: str,
    attention: str,
    *,
    quick: bool,
    use_cache: bool,
    progress: bool = True,
) -> Calibration:
    """The kernels and forward-cost table of `target`'s model: cached, or measured (and cached)."""
    model = target.model
    fast = fast_kernels_apply(model)
    use_linear = fast and linear == "auto"
    attention_name = ATTENTION_NAME if fast and attention == "auto" else None
    key = calibration_key(model, threads, kernels=f"linear={use_linear},attention={attention_name}")
    cached = load_cached(key) if use_cache else None
    if cached is not None and (quick or not cached.quick):
        plan = _plan_from_json(cached.extra["linear_plan"]) if cached.extra.get("linear_plan") else None
        return Calibration(cached, plan, attention_name)

    plan = None
    extra: dict = {}
    if use_linear:
        selection = select_plan(
            model,
            QUICK_KERNEL_SIZES if quick else DEFAULT_NS,
            repeats=2 if quick else 7,
            threads=threads,
            attention=attention_name,
            progress=progress,
            new_cache=target.adapter.new_cache,
        )
        plan = selection.plan
        extra = {
            "linear_plan": _plan_to_json(plan),
            "kernel_timings": {str(n): row for n, row in selection.timings.items()},
        }
    with running(model, plan, attention_name):
        if quick:
            table = measure_table(
                target, sizes=QUICK_SIZES, context_lengths=(300,), repeats=3, key=key, quick=True, progress=progress
            )
        else:
            table = measure_table(target, key=key, progress=progress)
    table = CostTable(
        table.sizes, table.context_lengths, table.relative, table.step_seconds, table.key, table.quick, extra
    )
    save(table)
    return Calibration(table, plan, attention_name)


def measure_levels(
    calibration: Calibration,
    target: Target,
    levels: Sequence[Level],
    kinds: Mapping[str, str],
    tokenizer: Any,
    *,
    quick: bool,
    use_cache: bool,
    progress: bool = True,
) -> Calibration:
    """`calibration` with each level's draft cost (`costs/draft_costs.py`): cached, or measured
    and cached, under the calibrated kernels. Each level first does its one-time work
    (`DraftStrategy.prepare`, e.g. a skip-set search when none is cached) on real text, so that
    its cost is measured as it will draft."""
    if not levels:
        return calibration
    model = target.model
    with kernels_active(model, calibration):
        text = calibration_text_ids(tokenizer, PREPARE_TOKENS, cast("PreTrainedConfig", model.config).vocab_size)
        for level in levels:
            level.strategy.prepare(target, text, progress=progress)
        drafts = calibrated_draft_costs(
            target,
            levels,
            dict(kinds),
            tokenizer,
            key=calibration.costs.key,
            quick=quick,
            use_cache=use_cache,
            progress=progress,
        )
    return Calibration(calibration.costs, calibration.linear_plan, calibration.attention, drafts)


__all__ = ["Calibration", "fast_kernels_apply", "kernels_active", "measure_levels", "measure_target", "running"]
