"""`Int8Linear`: the int8 twin of an `nn.Linear`, running the W8A8 kernel of `int8.py`.

Notation: for drafting only (q); the float module it was made from (the target p's) is only read.
The twin holds a packed per-channel int8 weight, its scales and the bias as buffers; inputs of at
most `max_kernel_rows` rows run the compiled kernel, everything else `int8.linear_reference` (the
same quantization in torch float32).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from cas_spec.kernels import int8
from cas_spec.kernels.int8 import GROUP, linear, linear_reference, padded, quantize_weight, unpack

# Rows up to which `Int8Linear` runs the kernel. Measured in full-model forwards of SmolLM2-135M with
# every Linear a twin (1 thread, 300 cached tokens, medians of 7 / 3 interleaved repeats), kernel vs
# the float fallback: 16.6 vs 102 ms (n = 1), 35 vs 137 (8), 61 vs 161 (16), 113 vs 231 (32),
# 215 vs 376 (64), 411 vs 608 (128), 836 vs 1102 (256), 1804 vs 2225 (512): the kernel wins at every
# row count measured, so there is no threshold; set a lower one per module or class if needed.
MAX_KERNEL_ROWS = 1 << 62


class Int8Linear(nn.Module):
    """An int8 twin of an `nn.Linear`: int8 weight per output channel, int8 activations per token,
    float32 in and out (`[..., in] -> [..., out]`). The packed weight, the scales and the bias are
    buffers (copies: the float module is only read). Inputs of at most `max_kernel_rows` rows run the
    compiled kernel; more rows, other dtypes or devices, or an unavailable kernel run
    `linear_reference` (the same quantization in torch). For drafting: no gradient flows through it."""

    max_kernel_rows: int = MAX_KERNEL_ROWS
    # buffers, and the kernel's constant arguments (`_refresh`), as nn.Module's __getattr__ returns them
    qweight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None
    _kernel_args: tuple[int, int, ctypes.Array[ctypes.c_int64]] | None

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        rows = -(-out_features // GROUP) * GROUP
        self.register_buffer("qweight", torch.zeros(rows, padded(in_features), dtype=torch.int8))
        self.register_buffer("scale", torch.zeros(out_features, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32) if bias else None)
        self._refresh()

    @classmethod
    def from_float(cls, linear: nn.Linear, per_channel: bool = True) -> Int8Linear:
        """The twin of `linear` (whose parameters are only read); weight scales per output channel,
        or one for the whole weight (`per_channel=False`)."""
        twin = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            qweight, scale = quantize_weight(linear.weight, per_channel)
            twin.qweight.copy_(qweight)
            twin.scale.copy_(scale)
            if linear.bias is not None:
                assert twin.bias is not None  # built with a bias above
                twin.bias.copy_(linear.bias.detach().to(torch.float32))
        return twin.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the fast path costs ~4.5 µs of Python per call (211 calls per draft token of SmolLM2-135M)
        fn, args = int8.packed_function(), self._kernel_args
        if fn is not None and args is not None and x.dtype is torch.float32 and x.is_cpu and x.is_contiguous():
            shape = x.shape
            k = self.in_features
            rows = x.numel() // k if shape[-1] == k else 0
            if 0 < rows <= self.max_kernel_rows:
                out = torch.empty(*shape[:-1], args[1])
                try:
                    fn(x.data_ptr(), rows, args[0], out.data_ptr())
                except Exception as exc:
                    int8.disable(f"int8 kernel failed on use: {type(exc).__name__}: {exc}")
                else:
                    return out
        return self._forward_slow(x)

    def _forward_slow(self, x: torch.Tensor) -> torch.Tensor:
        last = x.shape[-1]
        rows = x.numel() // last if last else 0
        if (
            0 < rows <= self.max_kernel_rows
            and last == self.in_features
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float16, torch.bfloat16)
            and self._kernel_args is not None
            and int8.ready()
        ):
            try:
                return linear(x, self.qweight, self.scale, self.bias, self.in_features).to(x.dtype)
            except Exception as exc:
                int8.disable(f"int8 kernel failed on use: {type(exc).__name__}: {exc}")
        with torch.no_grad():
            return linear_reference(x, self.qweight, self.scale, self.bias, self.in_features)

    def _refresh(self) -> None:
        """Cache the kernel's constant arguments (pointers into the buffers), or None where the
        buffers are not what the kernel reads (moved off the CPU, converted to another dtype)."""
        q, s, b = self._buffers.get("qweight"), self._buffers.get("scale"), self._buffers.get("bias")
        n = self.out_features
        ok = (
            q is not None
            and s is not None
            and q.dtype is torch.int8
            and q.device.type == "cpu"
            and q.is_contiguous()
            and q.shape == (-(-n // GROUP) * GROUP, padded(self.in_features))
            and s.dtype is torch.float32
            and s.device.type == "cpu"
            and s.is_contiguous()
            and s.shape == (n,)
            and (
                b is None
                or (b.dtype is torch.float32 and b.device.type == "cpu" and b.is_contiguous() and b.shape == (n,))
            )
        )
        if ok:
            assert q is not None and s is not None  # checked in `ok`
            packed = (ctypes.c_int64 * 6)(
                q.data_ptr(), n, q.shape[1], s.data_ptr(), 0 if b is None else b.data_ptr(), self.in_features
            )
            # (address of the packed arguments, out_features, the array that keeps them alive)
            self.__dict__["_kernel_args"] = (ctypes.addressof(packed), n, packed)
        else:
            self.__dict__["_kernel_args"] = None

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in ("qweight", "scale", "bias") and "_kernel_args" in self.__dict__:
            self._refresh()

    # .to(), .half(), ...: buffers may be replaced
    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True):
        out = super()._apply(fn, recurse)
        self._refresh()
        return out

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh()

    def __getstate__(self) -> dict:  # copy.deepcopy, pickle: never carry pointers into another module's buffers
        state = self.__dict__.copy()
        state["_kernel_args"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._refresh()

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight this twin stands for, `[out, in]` (a new tensor)."""
        q = unpack(self.qweight)[: self.out_features, : self.in_features]
        return q.to(torch.float32) * self.scale[:, None]

    @property
    def memory_bytes(self) -> int:
        """Bytes held: the packed int8 weight (K padded to 32, rows to 8), scales and bias."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def _get_name(self) -> str:
        return "NativeInt8Twin"


__all__ = ["MAX_KERNEL_ROWS", "Int8Linear"]
