"""Backend `quanto`: optimum-quanto `QLinear` twins, qint8 weights (per output channel) and qint8
activations with a static per-tensor input scale that must be calibrated.

Each twin is built with the `QLinear.from_module` path of `optimum.quanto.nn.quantize_module` (on
a `QLinear` subclass that enforces calibration, see below) and then, at once:

* frozen: the weight is quantized once into a new int8 `WeightQBytesTensor`; the twin's reference
  to the original float weight is dropped (quantize-then-calibrate without freezing re-quantizes
  every weight on every calibration forward; freezing first gives bit-identical scales);
* given its own copy of the bias (`quantize_module` would share the original's `Parameter`);
* set to return float32: output quantization is disabled (`disable_output_quantization`), so a
  twin maps float32 -> float32 like the original and never hands a quantized tensor to the float
  code around it (quanto's `streamline` calibration would decide this per module otherwise).

Calibration is enforced: until `finish` has accepted it, a twin's forward raises unless it runs
inside `calibrating()` (quanto's `Calibration`, which sets the input scale from the absmax of the
inputs it sees, momentum 0.9); `finish` raises if a twin never ran under calibration. Without
calibration the input scale is 1.0 and the output is garbage (top-1 agreement 5-10% measured).

optimum-quanto is imported lazily (importing it takes seconds). Only per-channel weights exist in
quanto: `per_channel=False` raises. qint4 weights fail under `torch.inference_mode()` and are not
offered.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from typing import Any

import torch
from torch import nn

NEEDS_CALIBRATION = True

_local = threading.local()  # .depth: nesting depth of `calibrating()` in this thread
_twin_class = None


def unavailable_reason() -> str | None:
    try:
        spec = importlib.util.find_spec("optimum.quanto")
    except (ImportError, ValueError) as exc:
        spec, error = None, f" ({exc})"
    else:
        error = ""
    if spec is None:
        return f"optimum-quanto is not installed{error} (pip install optimum-quanto)"
    return None


def _calibrating_now() -> bool:
    return getattr(_local, "depth", 0) > 0


def twin_class():
    """The `QLinear` subclass of the twins (imports optimum-quanto on first use)."""
    global _twin_class
    if _twin_class is None:
        from optimum.quanto.nn import QLinear

        class QuantoTwin(QLinear):
            """A frozen W8A8 `QLinear` that refuses to run uncalibrated."""

            def forward(self, input: torch.Tensor) -> torch.Tensor:
                if not self._cas_ready:
                    if not _calibrating_now():
                        raise RuntimeError(
                            "this quanto W8A8 twin is not calibrated: run forwards through it inside "
                            "quantization.calibrating('quanto'), then quantization.finish(twins, 'quanto')"
                        )
                    self._cas_calibrated = True
                out = super().forward(input)
                if input.dim() == 1 and out.dim() == 2:  # quanto's int8 matmul returns [1, out]
                    out = out.squeeze(0)
                return out

        _twin_class = QuantoTwin
    return _twin_class


def _twin(linear: nn.Linear) -> nn.Module:
    from optimum.quanto import qint8

    cls = twin_class()
    with torch.no_grad():
        twin = cls.from_module(linear, weights=qint8, activations=qint8)
        twin.freeze()  # new int8 weight: the shared float Parameter is no longer referenced
        if twin.weight is linear.weight:
            raise RuntimeError("quanto did not replace the float weight when freezing")
        twin.weight.requires_grad_(False)
        if linear.bias is not None:
            twin.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        twin.disable_output_quantization()
    twin._cas_calibrated = False
    twin._cas_ready = False
    return twin.eval()


def build(linears: list[nn.Linear], *, per_channel: bool = True) -> list[nn.Module]:
    if not per_channel:
        raise ValueError(
            "the quanto backend quantizes weights per output channel only; "
            "per_channel=False is supported by dynamic_int8"
        )
    return [_twin(linear) for linear in linears]


@contextlib.contextmanager
def calibrating():
    from optimum.quanto import Calibration

    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        # streamline only decides output quantization, which the twins have switched off
        with Calibration(momentum=0.9, streamline=False):
            yield
    finally:
        _local.depth -= 1


def finish(twins: list[Any]) -> None:  # QuantoTwin modules (optimum-quanto is untyped)
    cls = twin_class()
    foreign = [t for t in twins if not isinstance(t, cls)]
    if foreign:
        raise TypeError(f"not quanto twins: {sorted({type(t).__name__ for t in foreign})}")
    missing = [t for t in twins if not t._cas_calibrated]
    if missing:
        raise RuntimeError(
            f"{len(missing)} of {len(twins)} quanto twins never ran inside "
            "calibrating('quanto'); calibrate them with forwards on representative inputs "
            "(their static activation scales would otherwise be 1.0: garbage output)"
        )
    bad = [t for t in twins if not (torch.isfinite(t.input_scale).all() and (t.input_scale > 0).all())]
    if bad:
        raise RuntimeError(
            f"{len(bad)} quanto twins have an invalid input scale after calibration (zero or non-finite inputs?)"
        )
    for twin in twins:
        twin._cas_ready = True
