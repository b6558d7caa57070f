"""Backend `native_int8`: the project's own W8A8 kernel (`cas_spec.kernels.int8`) as int8 twins.

Each twin is a `cas_spec.kernels.int8_linear.Int8Linear`: the weight quantized once, symmetric per output
channel, to int8 (a copy; the float module is only read), activations quantized per token on every
call inside the compiled AVX2 kernel (so there is nothing to calibrate), float32 out. Unlike
`dynamic_int8`, whose activation scale is one per call over all rows, every token gets its own scale,
so a draft over several rows quantizes each row as a 1-row draft would.

Measured on SmolLM2-135M (`benchmarks/int8_kernel_cost.py`, 1 thread, 300 cached tokens, details in
the docstring of `cas_spec.strategies.dsia.quantization`): a draft token costs 0.40-0.43 of a calibrated
float32 target step (dynamic_int8 0.55-0.58), its argmax agrees with the target's greedy token at
0.917 of 300 positions (dynamic_int8 0.900), 129 MiB of twins for 513 MiB of float32 weights.

Available where the kernel compiles and passes its probe (x86-64 with AVX2, a C++ compiler,
`CAS_SPEC_INT8_KERNEL` not 0); `unavailable_reason()` says why not.
"""

from __future__ import annotations

import contextlib

from torch import nn

from cas_spec.kernels import int8, int8_linear

NEEDS_CALIBRATION = False


def unavailable_reason() -> str | None:
    why = int8.status()
    return None if why is None else f"the native int8 kernel is unavailable: {why}"


def build(linears: list[nn.Linear], *, per_channel: bool = True) -> list[nn.Module]:
    return [int8_linear.Int8Linear.from_float(linear, per_channel) for linear in linears]


@contextlib.contextmanager
def calibrating():
    yield  # activation scales are computed per token, per call


def finish(twins: list[nn.Module]) -> None:
    return None
