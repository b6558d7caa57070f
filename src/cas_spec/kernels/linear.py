"""Linear layers that pick their matmul kernel by row count, for cheap small-n verification.

`linear_kernels(model, plan)` swaps the class of every plain `nn.Linear` of `model` (q/k/v/o,
gate/up/down, LM head) to a subclass whose `forward` looks at the number of rows of its input
(the product of its leading dimensions) and runs the kernel that `plan` names for it:

| kernel   | computation                                         | extra memory        |
| -------- | --------------------------------------------------- | ------------------- |
| `stock`  | `F.linear(x, W, b)`                                 | none                |
| `xwt`    | `x @ Wt`, `Wt` a pre-transposed contiguous copy     | one copy of `W`     |
| `wxt`    | `(W @ xᵀ)ᵀ`, on the weight itself                   | none                |
| `onednn` | oneDNN's prepacked linear (private `torch.ops.mkldnn` ops) | one packed copy of `W` |
| `native` | a small AVX2/FMA kernel compiled on first use (`cas_spec.kernels.native`) | none |

Parameters, `state_dict()` (keys and values) and weight tying are untouched: the copies are plain
attributes of each module (`_cas_copies`), not buffers or parameters. They are built once, kept
when the context exits (so the next activation is free; `release_copies(model)` frees them) and
rebuilt when the weight changes (its `data_ptr` or `_version` differs from the one they were built
from: in-place updates under `no_grad`, `load_state_dict`, a new parameter). Writes through
`weight.data` bypass the version counter: call `release_copies(model)` after them. The copies are
**not** moved by `.to()`: after a move the kernels see a new weight and either rebuild (CPU float32)
or are bypassed; `copy.deepcopy` of a model copies them too. Only CPU float32 inputs and weights use the kernels, and only
when no gradient is needed; anything else runs stock `F.linear`. Only modules whose class is exactly
`nn.Linear` are swapped (quantized subclasses such as optimum-quanto's `QLinear` keep their own
forward).

The oneDNN ops are private and the native kernel needs a C++ compiler and an AVX2/FMA CPU:
`available_kernels()` / `kernel_status()` report whether they work here; if they are missing or
fail (when probed, or on a real call) the kernel falls back to `stock`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from cas_spec.kernels import native

KERNELS: tuple[str, ...] = ("stock", "xwt", "wxt", "onednn", "native")
_COPY_KERNELS = ("xwt", "onednn")  # kernels that need a copy of the weight

# -- plans ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearPlan:
    """Which kernel a linear layer runs for an input of `rows` rows.

    `table` holds `(rows, kernel)` breakpoints: an input of r rows uses the entry with the largest
    rows ≤ r; inputs with more rows than the largest entry use `default`. An empty table means
    `default` everywhere.
    """

    table: tuple[tuple[int, str], ...] = ()
    default: str = "stock"
    _lookup: tuple[str, ...] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        table = tuple(sorted((int(r), str(k)) for r, k in dict(self.table).items()))
        for rows, kernel in (*table, (1, self.default)):
            if kernel not in KERNELS:
                raise ValueError(f"unknown linear kernel {kernel!r}; available: {', '.join(KERNELS)}")
            if rows < 1:
                raise ValueError(f"rows must be at least 1, got {rows}")
        object.__setattr__(self, "table", table)
        lookup = ["stock"] * (table[-1][0] + 1 if table else 0)
        for i, (rows, kernel) in enumerate(table):
            end = table[i + 1][0] if i + 1 < len(table) else len(lookup)
            lookup[rows:end] = [kernel] * (end - rows)
        object.__setattr__(self, "_lookup", tuple(lookup))

    @classmethod
    def uniform(cls, kernel: str) -> LinearPlan:
        """The same kernel for every row count."""
        return cls((), kernel)

    @classmethod
    def from_mapping(cls, mapping: Mapping[int, str], default: str | None = None) -> LinearPlan:
        """A plan from `{rows: kernel}`; `default` (rows above the table) is the largest entry's kernel."""
        if default is None:
            default = mapping[max(mapping)] if mapping else "stock"
        return cls(tuple(mapping.items()), default)

    def kernel_for(self, rows: int) -> str:
        if rows <= 0:
            return "stock"
        lookup = self._lookup
        return lookup[rows] if rows < len(lookup) else self.default

    @property
    def kernels(self) -> frozenset[str]:
        """Every kernel the plan can pick."""
        return frozenset({k for _, k in self.table} | {self.default})

    def describe(self) -> str:
        parts = [f"{r}:{k}" for r, k in self.table]
        return " ".join(parts + [f">{self.table[-1][0] if self.table else 0}:{self.default}"])


STOCK_PLAN = LinearPlan.uniform("stock")

# -- availability of the oneDNN and native kernels ----------------------------------------------------------------------------

_status_lock = threading.Lock()
_status: dict[str, str | None] = {}  # kernel -> None when usable, else why not


def _probe_onednn() -> str | None:
    try:
        ops = torch.ops.mkldnn
        reorder, pointwise = ops._reorder_linear_weight, ops._linear_pointwise
    except (AttributeError, RuntimeError) as exc:
        return f"torch.ops.mkldnn linear ops missing ({exc})"
    if not torch.backends.mkldnn.is_available():
        return "torch was built without oneDNN (mkldnn)"
    try:
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(24, 16, generator=gen)
        b = torch.randn(24, generator=gen)
        x = torch.randn(2, 3, 16, generator=gen)
        with torch.no_grad():
            packed = reorder(w, 3)
            out = pointwise(x, packed, b, "none", [], "")
            ref = F.linear(x, w, b)
        if out.shape != ref.shape or not torch.allclose(out, ref, atol=1e-4, rtol=1e-4):
            return "oneDNN linear gave wrong results in the probe"
    except Exception as exc:
        return f"oneDNN linear failed in the probe: {type(exc).__name__}: {exc}"
    return None


def kernel_status() -> dict[str, str | None]:
    """`{kernel: None}` when usable here, else `{kernel: reason}` (probes oneDNN and native once)."""
    with _status_lock:
        if "onednn" not in _status:
            _status.update(stock=None, xwt=None, wxt=None, onednn=_probe_onednn())
        if "native" not in _status:
            _status["native"] = native.status()
        return dict(_status)


def available_kernels() -> tuple[str, ...]:
    """The kernels that work here: `stock`, `xwt` and `wxt` always; `onednn` and `native` when their
    probes passed and they have not failed since (the first call compiles the native kernel)."""
    return tuple(k for k, why in kernel_status().items() if why is None)


def _disable(kernel: str, reason: str) -> None:
    with _status_lock:
        _status[kernel] = reason


def _disable_onednn(reason: str) -> None:
    _disable("onednn", reason)


def _ok(kernel: str) -> bool:
    why = _status.get(kernel, "unprobed")
    if why == "unprobed":
        why = kernel_status()[kernel]
    return why is None


def _onednn_ok() -> bool:
    return _ok("onednn")


# -- weight copies ----------------------------------------------------------------------------------


def _weight_key(weight: torch.Tensor) -> tuple:
    try:
        version = weight._version
    except RuntimeError:  # an inference tensor has no version counter; it cannot change in place either
        version = -1
    return (weight.data_ptr(), version, weight.device, weight.dtype, tuple(weight.shape))


def _build_copy(kernel: str, weight: torch.Tensor, batch_hint: int) -> torch.Tensor:
    with torch.no_grad():
        w = weight.detach()
        if kernel == "xwt":
            return w.t().contiguous()
        if kernel == "onednn":
            return torch.ops.mkldnn._reorder_linear_weight(w, batch_hint)
    raise ValueError(kernel)


ONEDNN_BATCH_HINT = 4  # the row count oneDNN packs the weight for; the packed weight serves any count


def _copy(module: nn.Linear, kernel: str) -> torch.Tensor:
    """The cached copy of `module.weight` for `kernel`, rebuilt when the weight changed."""
    weight = module.weight
    copies = module.__dict__.get("_cas_copies")
    if copies is None:
        copies = module.__dict__["_cas_copies"] = {}
    key = _weight_key(weight)
    entry = copies.get(kernel)
    if entry is None or entry[0] != key:
        copies.pop(kernel, None)  # free the stale copy before building the new one
        copies[kernel] = entry = (key, _build_copy(kernel, weight, ONEDNN_BATCH_HINT))
    return entry[1]


def _eligible(module: nn.Linear) -> bool:
    w = module.weight
    return w.device.type == "cpu" and w.dtype == torch.float32


# -- the dispatching forward ------------------------------------------------------------------------


def _onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


_native_linear = native.linear


def _run(module: nn.Linear, kernel: str, x: torch.Tensor) -> torch.Tensor:
    weight, bias = module.weight, module.bias
    if kernel == "xwt":
        wt = _copy(module, "xwt")
        x2 = x.reshape(-1, x.shape[-1])
        out = torch.mm(x2, wt) if bias is None else torch.addmm(bias, x2, wt)
        return out.view(*x.shape[:-1], wt.shape[1])
    if kernel == "wxt":
        x2 = x.reshape(-1, x.shape[-1])
        out = torch.mm(weight, x2.t()).t().contiguous()
        if bias is not None:
            out += bias
        return out.view(*x.shape[:-1], weight.shape[0])
    if kernel == "native":
        if _ok("native"):
            try:
                return _native_linear(x, weight, bias)
            except Exception as exc:
                _disable("native", f"native kernel failed on use: {type(exc).__name__}: {exc}")
        return F.linear(x, weight, bias)
    if kernel == "onednn":
        if _onednn_ok():
            try:
                return _onednn_linear(x, _copy(module, "onednn"), bias)
            except Exception as exc:
                _disable_onednn(f"oneDNN linear failed on use: {type(exc).__name__}: {exc}")
                module.__dict__.get("_cas_copies", {}).pop("onednn", None)
    return F.linear(x, weight, bias)


class _DispatchMixin:
    """Mixed into a dynamic subclass of the module's class; reads the plan from `_cas_plan`."""

    # what the nn.Linear it is mixed into has (`_cas_plan`: set in its __dict__ by `linear_kernels`)
    weight: torch.Tensor
    bias: torch.Tensor | None
    _cas_plan: LinearPlan

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if (
            input.dtype is torch.float32
            and input.device.type == "cpu"
            and weight.dtype is torch.float32
            and weight.device.type == "cpu"
            and not (torch.is_grad_enabled() and (weight.requires_grad or input.requires_grad))
        ):
            last = input.shape[-1]
            rows = input.numel() // last if last else 0
            kernel = self._cas_plan.kernel_for(rows)
            if kernel != "stock":
                return _run(cast(nn.Linear, self), kernel, input)
        return F.linear(input, weight, self.bias)


_dispatch_classes: dict[type, type] = {}


def _dispatch_class(cls: type) -> type:
    sub = _dispatch_classes.get(cls)
    if sub is None:
        sub = type(f"Kernel{cls.__name__}", (_DispatchMixin, cls), {"_cas_original_class": cls})
        _dispatch_classes[cls] = sub
    return sub


def _linears(model: nn.Module) -> Iterator[nn.Linear]:
    seen: set[int] = set()
    for module in model.modules():
        cls = type(module)
        original = getattr(cls, "_cas_original_class", cls)
        if original is nn.Linear and id(module) not in seen:
            seen.add(id(module))
            yield cast(nn.Linear, module)  # its class is nn.Linear or our dispatch subclass of it


def _needed_copies(plan: LinearPlan) -> tuple[str, ...]:
    kernels = plan.kernels
    if "onednn" in kernels and not _onednn_ok():
        kernels = kernels - {"onednn"}
    return tuple(k for k in _COPY_KERNELS if k in kernels)


@contextlib.contextmanager
def linear_kernels(model: nn.Module, plan: LinearPlan, *, prebuild: bool = True) -> Iterator[nn.Module]:
    """Within the block, every `nn.Linear` of `model` picks its kernel by row count following `plan`.

    Copies of the weights that `plan` needs are built on entry (`prebuild=True`) or on first use,
    and cached on the modules across activations. The modules' classes (and, when nested, their
    previous plans) are restored in `finally`. Yields `model`.
    """
    if not isinstance(plan, LinearPlan):
        raise TypeError(f"plan must be a LinearPlan, got {type(plan).__name__}")
    saved: list[tuple[nn.Linear, type, object]] = []
    try:
        for module in _linears(model):
            cls = type(module)
            saved.append((module, cls, module.__dict__.get("_cas_plan")))
            module.__dict__["_cas_plan"] = plan
            module.__class__ = _dispatch_class(getattr(cls, "_cas_original_class", cls))
            if prebuild and _eligible(module):
                for kernel in _needed_copies(plan):
                    try:
                        _copy(module, kernel)
                    except Exception as exc:
                        if kernel != "onednn":
                            raise
                        _disable_onednn(f"oneDNN weight packing failed: {type(exc).__name__}: {exc}")
        yield model
    finally:
        for module, cls, previous in reversed(saved):
            module.__class__ = cls
            if previous is None:
                module.__dict__.pop("_cas_plan", None)
            else:
                module.__dict__["_cas_plan"] = previous


def release_copies(model: nn.Module, keep: LinearPlan | None = None) -> int:
    """Free cached weight copies (all, or those `keep` does not need); returns the bytes freed."""
    needed = set(_needed_copies(keep)) if keep is not None else set()
    freed = 0
    for module in _linears(model):
        copies = module.__dict__.get("_cas_copies")
        if not copies:
            continue
        for kernel in [k for k in copies if k not in needed]:
            freed += _nbytes(copies.pop(kernel)[1])
    return freed


def _nbytes(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):
        return t.numel() * t.element_size()


def extra_memory_bytes(model: nn.Module, plan: LinearPlan) -> int:
    """Bytes of weight copies `plan` needs for `model` (the packed oneDNN copy is taken as the size of
    the weight, or the size of an already built copy). Weights shared by several modules are counted
    once per module, as each module keeps its own copies."""
    total = 0
    for module in _linears(model):
        if not _eligible(module):
            continue
        copies = module.__dict__.get("_cas_copies", {})
        for kernel in _needed_copies(plan):
            entry = copies.get(kernel)
            if entry is not None and entry[0] == _weight_key(module.weight):
                total += _nbytes(entry[1])
            else:
                total += module.weight.numel() * module.weight.element_size()
    return total


def cached_copy_bytes(model: nn.Module) -> int:
    """Bytes currently held by cached weight copies on `model`'s linear layers."""
    return sum(_nbytes(t) for m in _linears(model) for _, t in m.__dict__.get("_cas_copies", {}).values())
