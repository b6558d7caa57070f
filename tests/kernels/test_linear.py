"""Row-count dispatching linear layers: same logits as stock, parameters untouched, restored always."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cas_spec.kernels import linear as linear_mod
from cas_spec.kernels.linear import (
    KERNELS,
    LinearPlan,
    available_kernels,
    cached_copy_bytes,
    extra_memory_bytes,
    kernel_status,
    linear_kernels,
    release_copies,
)
from tests.helpers import cached_logits, gqa_llama, tied_llama

PROMPT = 20
ONEDNN = pytest.mark.skipif("onednn" not in available_kernels(), reason="oneDNN linear ops unavailable here")


def linear_classes(model):
    return {name: type(m) for name, m in model.named_modules() if isinstance(m, nn.Linear)}


@pytest.fixture
def spy(monkeypatch):
    """Records (rows, kernel) of every non-stock kernel call."""
    calls: list[tuple[int, str]] = []
    real = linear_mod._run

    def run(module, kernel, x):
        calls.append((x.numel() // x.shape[-1], kernel))
        return real(module, kernel, x)

    monkeypatch.setattr(linear_mod, "_run", run)
    return calls


# -- plans ------------------------------------------------------------------------------------------


def test_plan_lookup_is_a_step_function_with_a_default_above_the_table():
    plan = LinearPlan.from_mapping({1: "xwt", 2: "wxt", 4: "onednn", 8: "stock"}, default="wxt")
    assert [plan.kernel_for(r) for r in range(11)] == [
        "stock",
        "xwt",
        "wxt",
        "wxt",
        "onednn",
        "onednn",
        "onednn",
        "onednn",
        "stock",
        "wxt",
        "wxt",
    ]
    assert plan.kernels == {"xwt", "wxt", "onednn", "stock"}
    assert LinearPlan.from_mapping({1: "xwt", 3: "onednn"}).default == "onednn"
    assert LinearPlan.uniform("wxt").kernel_for(1000) == "wxt"
    assert LinearPlan() == LinearPlan.uniform("stock")
    assert hash(plan) == hash(LinearPlan.from_mapping({8: "stock", 4: "onednn", 2: "wxt", 1: "xwt"}, "wxt"))


@pytest.mark.parametrize("bad", [{1: "fast"}, {0: "xwt"}, {-2: "xwt"}])
def test_plan_rejects_unknown_kernels_and_rows(bad):
    with pytest.raises(ValueError):
        LinearPlan.from_mapping(bad, default="stock")
    with pytest.raises(ValueError):
        LinearPlan.uniform("fast")


def test_stock_xwt_wxt_are_always_available():
    assert {"stock", "xwt", "wxt"} <= set(available_kernels())
    assert set(kernel_status()) == set(KERNELS)


# -- numerics ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_kernel_matches_stock_for_1_to_10_new_tokens(model, kernel, spy):
    ids = torch.randint(0, 256, (1, PROMPT + 10), generator=torch.Generator().manual_seed(1))
    for n in range(1, 11):
        reference = cached_logits(model, ids[:, : PROMPT + n], [PROMPT, n])[1]
        with linear_kernels(model, LinearPlan.uniform(kernel)):
            got = cached_logits(model, ids[:, : PROMPT + n], [PROMPT, n])[1]
        assert (got - reference).abs().max().item() < 1e-4, (kernel, n)
        assert torch.equal(got.argmax(-1), reference.argmax(-1)), (kernel, n)
    used = {k for _, k in spy}
    if kernel in ("xwt", "wxt") or (kernel == "onednn" and "onednn" in available_kernels()):
        assert used == {kernel}  # the kernel itself ran, not a silent fallback
        assert {r for r, _ in spy} >= set(range(1, 11))
    if kernel == "stock":
        assert not spy


def test_mixed_plan_dispatches_by_rows(model, spy):
    plan = LinearPlan.from_mapping({1: "xwt", 2: "wxt", 3: "onednn"}, default="stock")
    ids = torch.randint(0, 256, (1, 40))
    with linear_kernels(model, plan):
        cached_logits(model, ids, [20, 1, 2, 3, 4])
    by_rows = dict(spy)
    assert by_rows[1] == "xwt" and by_rows[2] == "wxt" and by_rows[3] == "onednn"
    assert 4 not in by_rows and 20 not in by_rows  # rows above the table: the default, stock


@pytest.mark.parametrize("kernel", ["xwt", "wxt", "onednn"])
def test_kernels_handle_bias_and_flat_inputs(kernel):
    torch.manual_seed(0)
    layer = nn.Linear(24, 40, bias=True)
    holder = nn.Sequential(layer)
    for shape in [(24,), (3, 24), (2, 5, 24), (1, 1, 7, 24)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            reference = layer(x)
            with linear_kernels(holder, LinearPlan.uniform(kernel)):
                got = layer(x)
        assert got.shape == reference.shape
        assert torch.allclose(got, reference, atol=1e-5), (kernel, shape)


# -- parameters, state dict, tying ------------------------------------------------------------------


def test_parameters_state_dict_and_tying_are_unchanged():
    model = tied_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    buffers = [name for name, _ in model.named_buffers()]
    plan = LinearPlan.from_mapping({1: "xwt", 2: "wxt", 3: "onednn"})
    with linear_kernels(model, plan):
        cached_logits(model, torch.randint(0, 256, (1, 12)), [8, 1, 3])
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert type(model.lm_head) is not nn.Linear and isinstance(model.lm_head, nn.Linear)
        inside = model.state_dict()
        assert [id(p) for p in model.parameters()] == params
        assert [name for name, _ in model.named_buffers()] == buffers
    assert cached_copy_bytes(model) > 0  # copies exist, as plain attributes only
    for state in (inside, model.state_dict()):
        assert list(state) == list(before)
        assert all(torch.equal(state[k], before[k]) for k in before)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert all(cls is nn.Linear for cls in linear_classes(model).values())


def test_classes_are_restored_when_the_block_raises(model):
    plan = LinearPlan.uniform("xwt")
    with pytest.raises(RuntimeError, match="boom"):
        with linear_kernels(model, plan):
            assert all(cls is not nn.Linear for cls in linear_classes(model).values())
            raise RuntimeError("boom")
    assert all(cls is nn.Linear for cls in linear_classes(model).values())
    assert not any("_cas_plan" in m.__dict__ for m in model.modules())


def test_nested_activations_restore_the_outer_plan(model, spy):
    outer, inner = LinearPlan.uniform("xwt"), LinearPlan.uniform("wxt")
    x = torch.randint(0, 256, (1, 3))
    with torch.no_grad(), linear_kernels(model, outer):
        with linear_kernels(model, inner):
            model(x)
        assert {k for _, k in spy} == {"wxt"}
        spy.clear()
        model(x)
        assert {k for _, k in spy} == {"xwt"}
    assert all(cls is nn.Linear for cls in linear_classes(model).values())


def test_quantized_style_subclasses_are_left_alone():
    class Custom(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 0

    holder = nn.Sequential(Custom(4, 4), nn.Linear(4, 4))
    with linear_kernels(holder, LinearPlan.uniform("xwt")):
        assert type(holder[0]) is Custom and type(holder[1]) is not nn.Linear
        assert torch.equal(holder[0](torch.ones(2, 4)), torch.zeros(2, 4))


# -- weight copies --------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["xwt", "onednn"])
def test_copies_are_rebuilt_when_a_weight_changes(model, kernel):
    if kernel == "onednn" and "onednn" not in available_kernels():
        pytest.skip("oneDNN linear ops unavailable here")
    ids = torch.randint(0, 256, (1, 24))
    plan = LinearPlan.uniform(kernel)
    with linear_kernels(model, plan):
        cached_logits(model, ids, [20, 4])
    layer = model.model.layers[0].mlp.down_proj
    first = layer.__dict__["_cas_copies"][kernel][1]
    with torch.no_grad():  # in place: the version counter moves
        layer.weight.mul_(3.0)
        model.lm_head.weight.add_(0.5)
    reference = cached_logits(model, ids, [20, 4])[1]
    with linear_kernels(model, plan):
        got = cached_logits(model, ids, [20, 4])[1]
    assert (got - reference).abs().max().item() < 1e-4
    assert layer.__dict__["_cas_copies"][kernel][1] is not first
    # a new tensor in place of the parameter: the data pointer moves
    layer.weight = nn.Parameter(torch.randn_like(layer.weight))
    reference = cached_logits(model, ids, [20, 4])[1]
    with linear_kernels(model, plan):
        got = cached_logits(model, ids, [20, 4])[1]
    assert (got - reference).abs().max().item() < 1e-4


def test_copies_are_cached_across_activations_and_released(model):
    plan = LinearPlan.uniform("xwt")
    with linear_kernels(model, plan):
        pass
    layer = model.model.layers[1].self_attn.q_proj
    copy = layer.__dict__["_cas_copies"]["xwt"][1]
    with torch.no_grad(), linear_kernels(model, plan):
        model(torch.randint(0, 256, (1, 2)))
    assert layer.__dict__["_cas_copies"]["xwt"][1] is copy
    expected = sum(m.weight.numel() * 4 for m in model.modules() if isinstance(m, nn.Linear))
    assert extra_memory_bytes(model, plan) == expected == cached_copy_bytes(model)
    assert extra_memory_bytes(model, LinearPlan.uniform("wxt")) == 0
    assert release_copies(model, keep=LinearPlan.uniform("xwt")) == 0
    assert release_copies(model) == expected
    assert cached_copy_bytes(model) == 0


def test_other_dtypes_run_stock_and_build_nothing(spy):
    model = gqa_llama().to(torch.float64)
    ids = torch.randint(0, 256, (1, 24))
    reference = cached_logits(model, ids, [20, 4])[1]
    with linear_kernels(model, LinearPlan.uniform("xwt")):
        got = cached_logits(model, ids, [20, 4])[1]
    assert torch.equal(got, reference)
    assert not spy and cached_copy_bytes(model) == 0


def test_gradients_still_reach_the_weights(model):
    ids = torch.randint(0, 256, (1, 6))
    model(ids).logits.sum().backward()
    reference = model.model.layers[0].self_attn.o_proj.weight.grad.clone()
    model.zero_grad()
    with linear_kernels(model, LinearPlan.uniform("xwt")):
        model(ids).logits.sum().backward()  # weights need gradients: the kernels step aside
    assert torch.allclose(model.model.layers[0].self_attn.o_proj.weight.grad, reference, atol=1e-5)


# -- oneDNN fallbacks -------------------------------------------------------------------------------


def test_onednn_marked_unavailable_runs_stock(model, spy):
    linear_mod._status["onednn"] = "pretend it is missing"
    assert "onednn" not in available_kernels()
    ids = torch.randint(0, 256, (1, 24))
    reference = cached_logits(model, ids, [20, 4])[1]
    with linear_kernels(model, LinearPlan.uniform("onednn")):
        got = cached_logits(model, ids, [20, 4])[1]
    assert torch.equal(got, reference)
    assert extra_memory_bytes(model, LinearPlan.uniform("onednn")) == 0


NATIVE = pytest.mark.skipif(
    "native" not in available_kernels(), reason=f"native kernel unavailable: {kernel_status().get('native')}"
)


@pytest.mark.parametrize(
    "kernel,function,error",
    [
        pytest.param("onednn", "_onednn_linear", RuntimeError("simulated onednn failure"), marks=ONEDNN),
        pytest.param("native", "_native_linear", OSError("simulated native failure"), marks=NATIVE),
    ],
)
def test_a_kernel_failing_on_use_falls_back_and_says_so(model, monkeypatch, kernel, function, error):
    def broken(*args):
        raise error

    monkeypatch.setattr(linear_mod, function, broken)
    ids = torch.randint(0, 256, (1, 24))
    reference = cached_logits(model, ids, [20, 4])[1]
    with linear_kernels(model, LinearPlan.uniform(kernel)):
        got = cached_logits(model, ids, [20, 4])[1]
    assert torch.equal(got, reference)
    assert f"simulated {kernel} failure" in kernel_status()[kernel]
    assert kernel not in available_kernels()
