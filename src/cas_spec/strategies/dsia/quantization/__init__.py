"""Quantized twins of float `nn.Linear` layers, for drafting with the target's own weights in int8.

A *twin* is a separate module built once from a float `nn.Linear`: int8 weights, int8 activations,
float32 in and out (`[..., in] -> [..., out]`, like the original). The draft machinery swaps twins
in for a draft pass and the float originals back for verification; building a twin never touches
its original (same parameters bitwise, no new attributes, tied weights left alone).

Backends (one module each):

| backend        | library                                           | activations                        | calibration |
| -------------- | ------------------------------------------------- | ---------------------------------- | ----------- |
| `native_int8`  | the project's AVX2 W8A8 kernel, `cas_spec.kernels.int8_linear.Int8Linear` (int8 weights per channel, or per tensor) | int8, scale per token, computed per call | no |
| `dynamic_int8` | `torch.ao.nn.quantized.dynamic.Linear` (fbgemm/x86 prepacked int8 weights, per-channel by default) | int8, scale computed per call | no |
| `quanto`       | optimum-quanto `QLinear` (frozen qint8 weights, always per-channel) | int8, static per-tensor scale | **yes**: a twin refuses to run until calibrated |

Use:

    from cas_spec.strategies.dsia import quantization as qz
    twins = qz.build_twins(linears, "dynamic_int8")
    if qz.needs_calibration(backend):
        with qz.calibrating(backend):
            ...   # forwards of the model with the twins swapped in, on representative text
    qz.finish(twins, backend)
    ...           # draft with the twins swapped in
    qz.twin_bytes(twins)

`BACKENDS` lists them in order of preference (`quanto_activation`'s `auto` takes the first usable).

Measured on SmolLM2-135M, 1 thread, 300 cached tokens, on the dev box (AMD EPYC, 2 vCPUs shared
with other work): `.venv/bin/python benchmarks/int8_kernel_cost.py` (21 interleaved repeats,
median of the per-repeat ratios) — one draft token (a 1-token forward with every twin swapped in,
through `build_variant`/`ModelAdapter.swapped`) against one float32 target step under the calibrated
kernels (`native` linears, `cas_sdpa`; 41-43 ms): native_int8 c = 0.40-0.43 over four quiet runs
(0.57 in a run with the host loaded), dynamic_int8 0.55-0.58 in the same runs; a forward over 4
new tokens: native_int8 0.51-0.57, dynamic_int8 0.57 (from 3 rows the AVX2 kernel is compute-bound). The same forward with every
Linear free (returning zeros) costs 0.23 (~10 ms: norms, rotary, attention over the cache, cache
updates, Python; `torch.cat` of the cache ~1.5 ms of it), a floor no Linear kernel removes; the
int8 weights (134 MB) streamed at memory speed add ~0.13, so ~0.36 is the best this machine allows
for a W8A8 draft token. Agreement of the draft's argmax with the target's greedy token over 300
positions of 6 Spec-Bench questions: native_int8 0.917, dynamic_int8 0.900. Twins: 129.0 MiB
(native_int8) / 130.6 MiB (dynamic_int8) for 513 MiB of float32 weights.

Earlier, on the AVX2 box without VNNI (`benchmarks/int8_draft_cost.py`, AMD EPYC, 1 thread,
300 cached tokens, a contended host): dynamic_int8 c ~0.5-0.65 at n=1 and ~0.4 at n=4 of a float32
forward (~0.55-0.6 / 0.45-0.6 against the repo's fast float kernels), first-draft-token agreement
0.905 over 200 greedy positions, 131 MiB of twins for 513 MiB of float32 weights; quanto c 2-6
(`torch._int_mm` without VNNI is slower than a float matmul), agreement 0.67, 129 MiB.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol, cast

import torch
from torch import nn

BACKENDS: tuple[str, ...] = ("native_int8", "dynamic_int8", "quanto")  # in order of preference

__all__ = ["BACKENDS", "available_backends", "build_twins", "calibrating", "finish", "needs_calibration", "twin_bytes"]


def _module(backend: str):
    if backend == "native_int8":
        from cas_spec.strategies.dsia.quantization import native_int8

        return native_int8
    if backend == "dynamic_int8":
        from cas_spec.strategies.dsia.quantization import dynamic_int8

        return dynamic_int8
    if backend == "quanto":
        from cas_spec.strategies.dsia.quantization import quanto

        return quanto
    raise ValueError(f"unknown quantization backend {backend!r}; known: {', '.join(BACKENDS)}")


def available_backends() -> dict[str, str | None]:
    """`{backend: None}` when usable here, else `{backend: why not}` (probed once, cheaply;
    optimum-quanto is looked up, not imported)."""
    return {name: _module(name).unavailable_reason() for name in BACKENDS}


def _require(backend: str):
    module = _module(backend)  # unknown names raise here
    reason = module.unavailable_reason()
    if reason is not None:
        usable = [name for name, why in available_backends().items() if why is None]
        raise RuntimeError(
            f"quantization backend {backend!r} is not available here: {reason}. "
            f"Available: {', '.join(usable) or 'none'}"
        )
    return module


def build_twins(linears: Sequence[nn.Linear], backend: str, *, per_channel: bool = True) -> dict[nn.Linear, nn.Module]:
    """A quantized twin for every given float `nn.Linear` (duplicates get one twin).

    The originals are untouched: same parameters bitwise, no attribute added or changed. A weight
    shared with another module (an LM head tied to the embedding) is only read.
    `per_channel=False` (per-tensor weight scales) is supported by `native_int8` and `dynamic_int8`.
    """
    module = _require(backend)
    twins: dict[nn.Linear, nn.Module] = {}
    for linear in linears:
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"build_twins takes nn.Linear modules, got {type(linear).__name__}")
        if linear in twins:
            continue
        if not linear.weight.is_floating_point():
            raise TypeError(f"{type(linear).__name__} has a {linear.weight.dtype} weight; expected a float one")
        twins[linear] = None  # type: ignore[assignment]
    if not twins:
        return {}
    built = module.build(list(twins), per_channel=per_channel)
    return dict(zip(twins, built))


def needs_calibration(backend: str) -> bool:
    """Whether the twins need `calibrating` forwards and `finish` before they can run."""
    return _module(backend).NEEDS_CALIBRATION


@contextlib.contextmanager
def calibrating(backend: str) -> Iterator[None]:
    """Inside the block, forwards through twins of `backend` record activation ranges
    (optimum-quanto `Calibration`); a no-op for backends without static activation scales."""
    with _require(backend).calibrating():
        yield


def finish(twins: Mapping[nn.Linear, nn.Module], backend: str) -> None:
    """Make the twins ready to run after calibration (raises if one was never calibrated).
    Idempotent; a no-op for `dynamic_int8`."""
    _require(backend).finish(list(twins.values()))


def packed_bytes(module: nn.Module) -> int:
    """Bytes `module`'s twins hold outside tensors (fbgemm's prepacked weights of `dynamic_int8`),
    which counting parameters and buffers misses."""
    from cas_spec.strategies.dsia.quantization import dynamic_int8

    return sum(dynamic_int8.nbytes(m) for m in module.modules() if isinstance(m, dynamic_int8.DynamicLinear))


def twin_bytes(twins: Mapping[nn.Linear, nn.Module]) -> int:
    """Bytes held by the twins: int8 weights (native_int8: padded to its packed layout), their scales
    (and zero points / column offsets for the fbgemm packing), biases and activation scales. Storage
    shared between twins is counted once."""
    from cas_spec.strategies.dsia.quantization import dynamic_int8

    total = 0
    seen: set[tuple[int, int]] = set()
    for twin in twins.values():
        if isinstance(twin, dynamic_int8.DynamicLinear):
            total += dynamic_int8.nbytes(twin)
            continue
        for tensor in (*twin.parameters(recurse=True), *twin.buffers(recurse=True)):
            total += _tensor_bytes(tensor, seen)
    return total


class _Flattenable(Protocol):  # a traceable tensor subclass (quanto's QTensor)
    def __tensor_flatten__(self) -> tuple[list[str], object]: ...


def _tensor_bytes(tensor: torch.Tensor, seen: set[tuple[int, int]]) -> int:
    flatten = getattr(type(tensor), "__tensor_flatten__", None)
    if flatten is not None and type(tensor) not in (torch.Tensor, nn.Parameter):
        names, _ = cast(_Flattenable, tensor).__tensor_flatten__()
        return sum(_tensor_bytes(getattr(tensor, name), seen) for name in names)
    if isinstance(tensor, nn.Parameter) and type(tensor.data) is not torch.Tensor:
        return _tensor_bytes(tensor.data, seen)
    try:
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key in seen:
            return 0
        seen.add(key)
        return storage.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):
        return tensor.numel() * tensor.element_size()
