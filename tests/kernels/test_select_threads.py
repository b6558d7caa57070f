"""Plan selection from full-model timings (on a tiny model: structure, not speed) and `threads`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cas_spec.kernels.linear import KERNELS, LinearPlan, available_kernels, cached_copy_bytes
from cas_spec.kernels.select import Selection, plan_from_timings, select_plan, time_forwards
from cas_spec.kernels.threads import threads


def test_select_plan_times_every_kernel_and_picks_the_fastest(model):
    before = torch.get_num_threads()
    selection = select_plan(
        model, ns=(1, 2, 4), cache_tokens=24, repeats=2, threads=1, progress=False, attention="cas_sdpa", tolerance=0.0
    )
    assert isinstance(selection, Selection)
    assert set(selection.timings) == {1, 2, 4}
    for n, row in selection.timings.items():
        assert set(row) == set(available_kernels())
        assert all(t > 0 for t in row.values())
        assert selection.plan.kernel_for(n) == min(row, key=row.get)
    assert selection.plan.default == "stock" and selection.plan.kernel_for(5) == "stock"
    assert selection.plan.kernels <= set(KERNELS)
    assert "ms" in selection.format() and selection.relative()[1]["stock"] == 1.0
    # everything put back: threads, classes, attention; copies the plan does not use are freed
    assert torch.get_num_threads() == before
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    assert model.config._attn_implementation == "sdpa"
    needs_copy = selection.plan.kernels & {"xwt", "onednn"}
    assert (cached_copy_bytes(model) > 0) == bool(needs_copy)


def test_select_plan_with_tolerance_prefers_kernels_without_copies(model):
    selection = select_plan(
        model, ns=(1, 3), kernels=("stock", "xwt"), cache_tokens=16, repeats=1, progress=False, tolerance=100.0
    )
    assert selection.plan == LinearPlan.from_mapping({1: "stock", 3: "stock"})
    assert cached_copy_bytes(model) == 0


def test_plan_from_timings_tolerance_above_and_subsets():
    timings = {1: {"stock": 10.0, "xwt": 8.0, "native": 8.3}, 4: {"stock": 20.0, "onednn": 12.0, "wxt": 15.0}}
    assert plan_from_timings(timings, tolerance=0.0) == LinearPlan.from_mapping({1: "xwt", 4: "onednn"}, "stock")
    assert plan_from_timings(timings).kernel_for(1) == "native"  # within 5%, and needs no copy
    assert plan_from_timings(timings, above=None).default == "onednn"
    assert plan_from_timings(timings, ("stock", "wxt")) == LinearPlan.from_mapping({1: "stock", 4: "wxt"}, "stock")
    with pytest.raises(ValueError):
        plan_from_timings(timings, ("onednn",))


def test_select_plan_rejects_unknown_kernels(model):
    with pytest.raises(ValueError, match="unknown kernels"):
        select_plan(model, ns=(1,), kernels=("stock", "fast"), progress=False)


def test_time_forwards_leaves_every_repeat_and_rolls_the_cache_back(model):
    entered = []

    class Probe:
        def __enter__(self):
            entered.append(1)

        def __exit__(self, *exc):
            return False

    times = time_forwards(model, {"a": Probe, "b": Probe}, ns=(1, 3), cache_tokens=10, repeats=3, progress=False)
    assert {n: {k: len(v) for k, v in row.items()} for n, row in times.items()} == {
        1: {"a": 3, "b": 3},
        3: {"a": 3, "b": 3},
    }
    assert len(entered) == 4 * 2 * 2  # one warm-up pass plus 3 repeats


def test_threads_sets_and_restores_even_under_an_exception():
    before = torch.get_num_threads()
    with threads(2) as k:
        assert k == torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with threads(3):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with threads(None) as k:
        assert k == before
    with pytest.raises(ValueError):
        with threads(0):
            pass
