"""Quantized twins of Linear layers (`cas_spec.strategies.dsia.quantization`): every backend."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from cas_spec.strategies.dsia import quantization as qz
from cas_spec.strategies.dsia.quantization import dynamic_int8, native_int8
from cas_spec.strategies.dsia.quantization import quanto as quanto_backend
from tests.helpers import IdTokenizer, repetitive_prompt, tiny_llama

AVAILABLE = qz.available_backends()
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(AVAILABLE[name] is not None, reason=str(AVAILABLE[name])))
    for name in qz.BACKENDS
]


def linear(seed: int = 0, in_features: int = 64, out_features: int = 96, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


def snapshot(module: nn.Module) -> dict:
    return {
        "vars": {k: v for k, v in vars(module).items() if k not in ("_parameters", "_buffers", "_modules")},
        "params": {k: (p, p.detach().clone()) for k, p in module.named_parameters()},
        "buffers": {k: (b, b.detach().clone()) for k, b in module.named_buffers()},
        "modules": dict(module.named_modules()),
    }


def assert_unchanged(module: nn.Module, before: dict) -> None:
    after = snapshot(module)
    assert after["vars"].keys() == before["vars"].keys()
    for key, value in before["vars"].items():
        current = after["vars"][key]
        assert current is value or current == value, key
    assert after["params"].keys() == before["params"].keys()
    for key, (param, copy) in before["params"].items():
        assert after["params"][key][0] is param, key  # the same Parameter object
        assert torch.equal(param, copy) and param.dtype == copy.dtype, key
    for key, (buf, copy) in before["buffers"].items():
        assert after["buffers"][key][0] is buf and torch.equal(buf, copy), key
    assert after["modules"] == before["modules"]


def calibrate(twins: dict, backend: str, inputs: list[torch.Tensor]) -> None:
    if qz.needs_calibration(backend):
        with qz.calibrating(backend):
            for _lin, twin in twins.items():
                for x in inputs:
                    twin(x)
    qz.finish(twins, backend)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


@contextlib.contextmanager
def swapped(model: nn.Module, twins: dict):
    """Replace every module that has a twin by it (restored in finally)."""
    where = [
        (parent, name, child) for parent in model.modules() for name, child in parent.named_children() if child in twins
    ]
    try:
        for parent, name, child in where:
            setattr(parent, name, twins[child])
        yield
    finally:
        for parent, name, child in where:
            setattr(parent, name, child)


def test_available_backends_lists_every_backend():
    status = qz.available_backends()
    assert set(status) == set(qz.BACKENDS)
    assert all(reason is None or (isinstance(reason, str) and reason) for reason in status.values())
    assert qz.needs_calibration("quanto") and not qz.needs_calibration("dynamic_int8")
    assert not qz.needs_calibration("native_int8")
    assert qz.BACKENDS[:2] == ("native_int8", "dynamic_int8")  # the order `auto` prefers


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
def test_originals_bitwise_unchanged(backend, bias):
    lin = linear(bias=bias)
    lin.weight.requires_grad_(True)
    before = snapshot(lin)
    twins = qz.build_twins([lin, lin], backend)  # a duplicate gets one twin
    assert list(twins) == [lin]
    assert_unchanged(lin, before)
    x = torch.randn(4, 64)
    calibrate(twins, backend, [x])
    with torch.inference_mode():
        twins[lin](x)
    assert_unchanged(lin, before)
    if bias:
        assert all(p.data_ptr() != lin.bias.data_ptr() for p in twins[lin].parameters())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_channel", [True, False])
def test_twin_output_close_to_float(backend, per_channel):
    if backend == "quanto" and not per_channel:
        with pytest.raises(ValueError, match="per output channel"):
            qz.build_twins([linear()], backend, per_channel=False)
        return
    lin = linear(1, 128, 80)
    twins = qz.build_twins([lin], backend, per_channel=per_channel)
    gen = torch.Generator().manual_seed(0)
    calibrate(twins, backend, [torch.randn(2, 7, 128, generator=gen) for _ in range(3)])
    for shape in [(128,), (1, 128), (3, 128), (2, 5, 128)]:
        x = torch.randn(*shape, generator=gen)
        with torch.inference_mode():
            out = twins[lin](x)
        ref = lin(x).detach()
        assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == ref.shape
        assert rel_err(out, ref) < 0.05
    assert rel_err(out, ref) > 0  # it is quantized


def test_quanto_refuses_to_run_uncalibrated():
    if AVAILABLE["quanto"] is not None:
        pytest.skip(AVAILABLE["quanto"])
    a, b = linear(0), linear(1)
    twins = qz.build_twins([a, b], "quanto")
    x = torch.randn(3, 64)
    with pytest.raises(RuntimeError, match="not calibrated"):
        twins[a](x)
    with pytest.raises(RuntimeError, match="2 of 2 quanto twins never ran"):
        qz.finish(twins, "quanto")
    with qz.calibrating("quanto"):
        twins[a](x)
    with pytest.raises(RuntimeError, match="1 of 2"):
        qz.finish(twins, "quanto")
    with pytest.raises(RuntimeError, match="not calibrated"):
        twins[b](x)
    with qz.calibrating("quanto"):
        twins[b](x)
    qz.finish(twins, "quanto")
    qz.finish(twins, "quanto")  # idempotent
    assert rel_err(twins[b](x), b(x)) < 0.05
    assert twins[a].input_scale.item() != 1.0


def test_dynamic_second_build_not_contaminated_by_first():
    if AVAILABLE["dynamic_int8"] is not None:
        pytest.skip(AVAILABLE["dynamic_int8"])
    lin = linear(2)
    x = torch.randn(4, 64)

    def qscheme(twins):
        with dynamic_int8._quiet():
            scheme = twins[lin]._packed_params._weight_bias()[0].qscheme()
        return "channel" if scheme in (torch.per_channel_affine, torch.per_channel_symmetric) else "tensor"

    first = qz.build_twins([lin], "dynamic_int8", per_channel=True)
    second = qz.build_twins([lin], "dynamic_int8", per_channel=False)
    third = qz.build_twins([lin], "dynamic_int8", per_channel=True)
    assert (qscheme(first), qscheme(second), qscheme(third)) == ("channel", "tensor", "channel")
    assert not hasattr(lin, "qconfig")
    fresh = linear(2)  # never quantized before
    fresh_per_tensor = qz.build_twins([fresh], "dynamic_int8", per_channel=False)[fresh]
    assert torch.equal(second[lin](x), fresh_per_tensor(x))
    assert torch.equal(first[lin](x), third[lin](x))
    assert not torch.equal(first[lin](x), second[lin](x))


def test_dynamic_restores_global_engine():
    if AVAILABLE["dynamic_int8"] is not None:
        pytest.skip(AVAILABLE["dynamic_int8"])
    engines = torch.backends.quantized.supported_engines
    other = "qnnpack" if "qnnpack" in engines else torch.backends.quantized.engine
    previous = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = other
        qz.build_twins([linear()], "dynamic_int8")
        assert torch.backends.quantized.engine == other
        assert dynamic_int8.ENGINE_USED == dynamic_int8.engine() in dynamic_int8.ENGINE_PREFERENCE
    finally:
        torch.backends.quantized.engine = previous


@pytest.mark.parametrize("backend", BACKENDS)
def test_twin_bytes_about_a_quarter(backend):
    lin = linear(0, 256, 192)
    twins = qz.build_twins([lin], backend)
    float_bytes = sum(p.numel() * p.element_size() for p in lin.parameters())
    size = qz.twin_bytes(twins)
    assert float_bytes / 4 < size < float_bytes * 0.3
    assert qz.twin_bytes({}) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_llama_tied_head(backend):
    model = tiny_llama(3, vocab=128, hidden=64, intermediate=96)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(3, 128, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(ids).logits
    linears = [m for m in model.model.layers.modules() if isinstance(m, nn.Linear)] + [model.lm_head]
    before = {id(m): snapshot(m) for m in (*linears, model.model.embed_tokens)}
    with torch.inference_mode():
        twins = qz.build_twins(linears, backend)
        assert len(twins) == len(linears) == 7 * 3 + 1
        with swapped(model, twins):
            if qz.needs_calibration(backend):
                with qz.calibrating(backend):
                    model(ids[:, :12])
            qz.finish(twins, backend)
            quant = model(ids).logits
        after = model(ids).logits
    assert torch.equal(after, ref)  # the float model is exactly as before
    for m in (*linears, model.model.embed_tokens):
        assert_unchanged(m, before[id(m)])
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert rel_err(quant, ref) < 0.2
    float_bytes = sum(m.weight.numel() * 4 for m in linears)
    assert qz.twin_bytes(twins) < float_bytes * 0.3


def test_unknown_and_unavailable_backends(monkeypatch):
    with pytest.raises(ValueError, match="known: native_int8, dynamic_int8, quanto"):
        qz.build_twins([linear()], "int3")
    monkeypatch.setattr(quanto_backend, "unavailable_reason", lambda: "optimum-quanto is not installed")
    assert qz.available_backends()["quanto"] == "optimum-quanto is not installed"
    expected = ", ".join(b for b in ("native_int8", "dynamic_int8") if AVAILABLE[b] is None) or "none"
    with pytest.raises(
        RuntimeError, match=f"'quanto' is not available here: optimum-quanto is not installed. Available: {expected}"
    ):
        qz.build_twins([linear()], "quanto")
    with pytest.raises(RuntimeError, match="not available"):
        with qz.calibrating("quanto"):
            pass
    monkeypatch.setattr(dynamic_int8, "unavailable_reason", lambda: "no quantized engine")
    monkeypatch.setattr(native_int8, "unavailable_reason", lambda: "no AVX2")
    with pytest.raises(RuntimeError, match="Available: none"):
        qz.build_twins([linear()], "dynamic_int8")
    with pytest.raises(RuntimeError, match="'native_int8' is not available here: no AVX2"):
        qz.build_twins([linear()], "native_int8")


def test_rejects_non_linear():
    with pytest.raises(TypeError, match="nn.Linear"):
        qz.build_twins([nn.Embedding(4, 4)], "dynamic_int8")


# -- native_int8 ---------------------------------------------------------------------------------------
NATIVE = pytest.mark.skipif(AVAILABLE["native_int8"] is not None, reason=str(AVAILABLE["native_int8"]))


@NATIVE
def test_native_twins_error_bounds_and_memory():
    from cas_spec.kernels.int8_linear import Int8Linear

    lins = [linear(0, 576, 192), linear(1, 1536, 576, bias=False), linear(2, 33, 50)]
    twins = qz.build_twins(lins, "native_int8")
    gen = torch.Generator().manual_seed(0)
    total = 0
    for lin, twin in twins.items():
        assert isinstance(twin, Int8Linear) and list(twin.parameters()) == []
        x = torch.randn(4, lin.in_features, generator=gen)
        with torch.inference_mode():
            out, ref = twin(x), lin(x)
        assert rel_err(out, ref) < 0.02  # 8-bit weights and activations: ~0.5-1% here
        # the int8 error, row by row: |Δ| <= Σ_k |x||Δw| + |Δx||w| + |Δx||Δw|, half a step each
        sx = x.abs().amax(dim=1, keepdim=True) / 127
        sw = lin.weight.abs().amax(dim=1) / 127
        bound = (
            x.abs() @ (sw[:, None] / 2).expand_as(lin.weight).t()
            + (sx / 2) * lin.weight.abs().sum(dim=1)
            + (sx / 2) * (sw / 2) * lin.in_features
        )
        assert ((out - ref).abs() <= bound * 1.001 + 1e-5).all()
        total += twin.memory_bytes
    assert qz.twin_bytes(twins) == total
    float_bytes = sum(p.numel() * 4 for lin in lins for p in lin.parameters())
    assert float_bytes / 4 < total < float_bytes * 0.3


@NATIVE
def test_auto_prefers_native_int8_then_dynamic_int8(monkeypatch):
    from cas_spec.core.errors import ConfigError
    from cas_spec.strategies.dsia.twins import resolve_backend

    assert resolve_backend("auto") == "native_int8"
    assert resolve_backend("dynamic_int8") == "dynamic_int8" or AVAILABLE["dynamic_int8"] is not None
    monkeypatch.setattr(native_int8, "unavailable_reason", lambda: "the CPU lacks AVX2/FMA")
    expected = "dynamic_int8" if AVAILABLE["dynamic_int8"] is None else "quanto"
    assert resolve_backend("auto") == expected
    with pytest.raises(ConfigError, match="'native_int8' is unavailable here: the CPU lacks AVX2/FMA"):
        resolve_backend("native_int8")


@NATIVE
@pytest.mark.parametrize(
    "level",
    [
        {"kind": "quanto_activation", "options": {"backend": "native_int8"}},
        {"kind": "quanto_activation"},  # auto
        {"kind": "layer_sparsity", "options": {"skip": ["2.mlp"], "quantize": "auto", "stop_below": 0.0}},
        {"kind": "early_exit", "options": {"exit_layer": 3, "quantize": "native_int8"}},
    ],
)
def test_greedy_identity_with_native_int8_levels(level):
    from cas_spec import load_pipeline
    from cas_spec.strategies.dsia import twins
    from tests.helpers import AUTOREGRESSIVE

    model = tiny_llama(3, layers=4)
    prompt = repetitive_prompt(3, model.config.vocab_size)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer()).generate(prompt, max_new_tokens=40)
    config = {
        "scheduler": {"kind": "chain", "options": {"level": "int8", "k": 4, "adaptive": False}},
        "levels": [{"name": "int8", **level}],
        "calibration": "off",
    }
    got = load_pipeline(config, model=model, tokenizer=IdTokenizer()).generate(prompt, max_new_tokens=40)
    assert got.token_ids == plain.token_ids
    assert got.stats.levels["int8"].drafted > 0
    assert set(twins._TWINS[model]) == {"native_int8"}
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
