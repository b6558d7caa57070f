"""Backend `dynamic_int8`: torch's dynamically quantized Linear (int8 weights and activations).

Each twin is a `torch.ao.nn.quantized.dynamic.Linear`: the weight is quantized once to qint8
(symmetric, per output channel by default) and prepacked for the quantized engine; every call
quantizes its float32 input with a scale computed from that input (so there is nothing to
calibrate), runs an int8 GEMM and returns float32.

The twins are built directly from an observer and `set_weight_bias`, not with
`torch.ao.quantization.quantize_dynamic` / `from_float`: those read (and `quantize_dynamic` leaves)
a `.qconfig` attribute on the float module, which then overrides the config of the next call on
the same module. Here nothing is ever set on the original; its weight is only read, and the bias is
cloned, so a tied weight is never altered.

Engine: the prepacking, and therefore the GEMM that runs, follows
`torch.backends.quantized.engine` at build time. `build` selects the first of `x86`, `fbgemm`,
`qnnpack` that this torch supports and that passes a small probe, sets it only for the duration of
the build and restores the previous global setting in `finally` (a packed weight keeps its engine's
implementation: measured, the forward gives the same result whatever the global engine is later).
`ENGINE_USED` records the engine of the last build. On x86 the engine quantizes activations with
a reduced range (7 bits) to avoid overflow in its AVX2 int8 dot products; qnnpack uses 8 bits.

The activation scale is one per call, over all rows of the input: fine for draft forwards of a few
tokens, bad for long inputs (measured on SmolLM2 layer 5 down_proj over a 40-token prompt: median
relative error 0.12 as one call vs 0.035 row by row, because a few outlier rows set the scale).
Do not prefill through the twins; draft with them over the float32 target's cache.
"""

from __future__ import annotations

import contextlib
import threading
import warnings

import torch
import torch.ao.nn.quantized.dynamic as nnqd
from torch import nn

NEEDS_CALIBRATION = False
ENGINE_PREFERENCE: tuple[str, ...] = ("x86", "fbgemm", "qnnpack")
ENGINE_USED: str | None = None  # the engine the last `build` prepacked with

_lock = threading.Lock()
_probe: dict[str, object] = {}  # "engine" -> str | None, "reason" -> str | None


class DynamicLinear(nnqd.Linear):
    """`torch.ao.nn.quantized.dynamic.Linear` that also takes a 1-D input, like `nn.Linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            return super().forward(x.unsqueeze(0)).squeeze(0)
        return super().forward(x)

    def _get_name(self) -> str:
        return "DynamicInt8Twin"


@contextlib.contextmanager
def _quiet():
    # torch 2.10+ deprecates quantized tensor creation (`quantize_per_channel`, prepacking) with
    # a UserWarning per call; the ops still work and are what the dynamic Linear is made of.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*quantiz.*deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*reduce_range.*", category=UserWarning)
        yield


@contextlib.contextmanager
def _engine(name: str):
    previous = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = name
        yield
    finally:
        torch.backends.quantized.engine = previous


def _twin(linear: nn.Linear, per_channel: bool) -> nn.Module:
    from torch.ao.quantization.observer import default_per_channel_weight_observer, default_weight_observer

    with torch.no_grad():
        weight = linear.weight.detach().to(torch.float32)
        observer = (default_per_channel_weight_observer if per_channel else default_weight_observer)()
        observer(weight)
        scale, zero_point = observer.calculate_qparams()
        if per_channel:
            qweight = torch.quantize_per_channel(
                weight, scale.to(torch.float64), zero_point.to(torch.int64), 0, torch.qint8
            )
        else:
            qweight = torch.quantize_per_tensor(weight, float(scale), int(zero_point), torch.qint8)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.float32).clone()
        twin = DynamicLinear(linear.in_features, linear.out_features, bias_=bias is not None, dtype=torch.qint8)
        twin.set_weight_bias(qweight, bias)
    return twin.eval()


def _probe_engines() -> None:
    supported = set(torch.backends.quantized.supported_engines)
    reasons = []
    gen = torch.Generator().manual_seed(0)
    linear = nn.Linear(64, 48)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(48, 64, generator=gen) * 0.1)
        linear.bias.copy_(torch.randn(48, generator=gen) * 0.1)
    x = torch.randn(3, 64, generator=gen)
    for name in ENGINE_PREFERENCE:
        if name not in supported:
            reasons.append(f"{name}: not built into this torch")
            continue
        try:
            with _quiet(), _engine(name), torch.no_grad():
                out = _twin(linear, per_channel=True)(x)
                ref = linear(x)
            err = ((out - ref).norm() / ref.norm()).item()
            if not err < 0.05:
                reasons.append(f"{name}: relative error {err:.3g} in the probe")
                continue
        except Exception as exc:
            reasons.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        _probe.update(engine=name, reason=None)
        return
    _probe.update(
        engine=None,
        reason="no quantized engine runs a dynamic int8 Linear here ("
        + "; ".join(reasons)
        + f"; supported engines: {sorted(supported)})",
    )


def engine() -> str | None:
    """The quantized engine the twins are built with here (None when none works)."""
    with _lock:
        if not _probe:
            _probe_engines()
    return _probe["engine"]  # type: ignore[return-value]


def unavailable_reason() -> str | None:
    engine()
    return _probe["reason"]  # type: ignore[return-value]


def build(linears: list[nn.Linear], *, per_channel: bool = True) -> list[nn.Module]:
    global ENGINE_USED
    name = engine()
    if name is None:
        raise RuntimeError(f"dynamic_int8 is not available: {_probe['reason']}")
    with _quiet(), _engine(name):
        twins = [_twin(linear, per_channel) for linear in linears]
    ENGINE_USED = name
    return twins


@contextlib.contextmanager
def calibrating():
    yield  # activation scales are computed per call


def finish(twins: list[nn.Module]) -> None:
    return None


def nbytes(twin: DynamicLinear) -> int:
    """Bytes of one prepacked twin: int8 weight, per-channel (or one) scale and zero point
    (float32 + int32 as fbgemm keeps them), fbgemm's int32 column offsets, float32 bias."""
    with _quiet():
        qweight, bias = twin._packed_params._weight_bias()
    out_features = qweight.shape[0]
    scales = (
        qweight.q_per_channel_scales().numel()
        if qweight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        else 1
    )
    total = qweight.numel() * qweight.element_size() + scales * (4 + 4) + out_features * 4
    if bias is not None:
        total += bias.numel() * 4
    return total
