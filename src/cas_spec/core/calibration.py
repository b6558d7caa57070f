"""What a pipeline measures about its model and machine before decoding: which linear kernel to
run for each number of rows, and the resulting cost of target forwards by number of new tokens.

Both are measured (never constants: the best kernel and the cost curve change between CPUs),
cached together per model shape, machine, thread count and kernel settings, and reused. A quick
measurement runs on first use; `cas-spec calibrate` runs the full one. The same kernels serve
every pipeline on the model, the autoregressive reference included, so speculative and plain
decoding run identical arithmetic for a forward of the same size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace

from cas_spec.costs.table import CostTable, calibration_key, load_cached, save


QUICK_KERNEL_SIZES = (1, 2, 3, 4, 6, 8, 12, 16)


@dataclass(frozen=True)
class Calibration:
    costs: CostTable
    linear_plan: object | None  # a kernels.LinearPlan, or None for stock linear layers
    attention: str | None  # attention implementation to run under, or None to leave the model's


def fast_kernels_apply(model) -> bool:
    """The CPU kernels are built for float32 on the CPU; elsewhere the stock path is used."""
    import torch

    param = next(model.parameters())
    return param.device.type == "cpu" and param.dtype == torch.float32


def _plan_to_json(plan) -> dict:
    return {"table": [list(entry) for entry in plan.table], "default": plan.default}


def _plan_from_json(data: dict):
    from cas_spec.kernels import LinearPlan

    return LinearPlan(tuple((int(r), str(k)) for r, k in data["table"]), data["default"])


@contextlib.contextmanager
def kernels_active(model, calibration: Calibration | None) -> Iterator[None]:
    """Within the block the model runs the calibrated kernels; restored in `finally`."""
    if calibration is None or (calibration.linear_plan is None and calibration.attention is None):
        yield
        return
    from cas_spec.kernels import attention_kernel, linear_kernels

    with contextlib.ExitStack() as stack:
        if calibration.attention is not None:
            stack.enter_context(attention_kernel(model, calibration.attention))
        if calibration.linear_plan is not None:
            stack.enter_context(linear_kernels(model, calibration.linear_plan))
        yield


def calibrate(target, threads: int | None, linear: str, attention: str, *, quick: bool, use_cache: bool,
              progress: bool = True) -> Calibration:
    """The calibration of `target`'s model: cached, or measured (and cached)."""
    from cas_spec.costs.calibrate import QUICK_SIZES, measure

    model = target.model
    fast = fast_kernels_apply(model)
    use_linear = fast and linear == "auto"
    attention_name = None
    if fast and attention == "auto":
        from cas_spec.kernels import ATTENTION_NAME

        attention_name = ATTENTION_NAME
    key = calibration_key(model, threads, kernels=f"linear={use_linear},attention={attention_name}")
    cached = load_cached(key) if use_cache else None
    if cached is not None and (quick or not cached.quick):
        plan = _plan_from_json(cached.extra["linear_plan"]) if cached.extra.get("linear_plan") else None
        return Calibration(cached, plan, attention_name)

    plan = None
    extra: dict = {}
    if use_linear:
        from cas_spec.kernels import DEFAULT_NS, select_plan

        selection = select_plan(model, QUICK_KERNEL_SIZES if quick else DEFAULT_NS, repeats=2 if quick else 7,
                                threads=threads, attention=attention_name, progress=progress,
                                new_cache=target.adapter.new_cache)
        plan = selection.plan
        extra = {"linear_plan": _plan_to_json(plan),
                 "kernel_timings": {str(n): row for n, row in selection.timings.items()}}
    calibration = Calibration(None, plan, attention_name)  # type: ignore[arg-type]
    with kernels_active(model, calibration):
        if quick:
            table = measure(target, sizes=QUICK_SIZES, context_lengths=(300,), repeats=3, key=key,
                            quick=True, progress=progress)
        else:
            table = measure(target, key=key, progress=progress)
    table = replace(table, extra=extra)
    save(table)
    return Calibration(table, plan, attention_name)
