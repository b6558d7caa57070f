"""int8 twins of the target's Linear layers, shared by every level that drafts in int8.

The twins of a model (each Linear of its decoder layers and its LM head, for one quantization
backend) are built once, when the first pipeline that needs them is built (`build_shared_twins`),
held beside the float weights (their memory is reported by `quantization.twin_bytes` and logged),
shared by every level that asks for the same backend, and swapped in for a draft pass only; the
float model is never changed. A backend with static activation scales (`quanto`) is calibrated
once per model, on the first text a level drafts for (`shared_twins`).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from typing import Literal, cast

from torch import nn

from cas_spec.core.errors import ConfigError
from cas_spec.core.target import Target
from cas_spec.strategies.dsia import quantization
from cas_spec.strategies.dsia.variants import build_variant

log = logging.getLogger(__name__)

# the `quantize:` option of layer_sparsity / early_exit; auto = the first usable backend
QuantizeChoice = Literal["none", "auto", "native_int8", "dynamic_int8", "quanto"]

# model -> backend -> twins (each Linear of the decoder layers and the LM head -> its int8 twin)
_TWINS: weakref.WeakKeyDictionary[nn.Module, dict[str, dict[nn.Linear, nn.Module]]] = weakref.WeakKeyDictionary()
_CALIBRATED: weakref.WeakKeyDictionary[nn.Module, set[str]] = weakref.WeakKeyDictionary()  # model -> backends


def target_linears(target: Target) -> list[nn.Linear]:
    """Every Linear of the decoder layers, then the LM head."""
    adapter = target.adapter
    found = [m for layer in adapter.layers for m in layer.modules() if isinstance(m, nn.Linear)]
    return [*found, cast(nn.Linear, adapter.lm_head)]  # `build_twins` raises if it is not a Linear


def resolve_backend(name: str) -> str:
    """`auto` → the first usable backend in preference order (`quantization.BACKENDS`: native_int8,
    dynamic_int8, quanto); an unusable one → `ConfigError` saying why."""
    status = quantization.available_backends()
    if name == "auto":
        usable = [b for b in quantization.BACKENDS if status.get(b) is None]
        if not usable:
            raise ConfigError([f"quanto_activation: no int8 backend works here ({status})"])
        return usable[0]
    if status.get(name) is not None:
        usable = [b for b, why in status.items() if why is None]
        raise ConfigError(
            [
                f"quanto_activation.backend: '{name}' is unavailable here: {status[name]}; "
                f"available: {', '.join(usable) or 'none'}"
            ]
        )
    return name


def quantize_backend(choice: str) -> str | None:
    """The backend a `quantize:` option drafts in: None for "none", else `resolve_backend(choice)`."""
    return None if choice == "none" else resolve_backend(choice)


def build_shared_twins(target: Target, backend: str) -> dict[nn.Linear, nn.Module]:
    """The int8 twins of `target`'s Linear layers for `backend`, built once per model."""
    per_model = _TWINS.setdefault(target.model, {})
    if backend not in per_model:
        twins = quantization.build_twins(target_linears(target), backend)
        per_model[backend] = twins
        log.info(
            "int8 twins (%s) of %d Linear layers: %.1f MiB", backend, len(twins), quantization.twin_bytes(twins) / 2**20
        )
    return per_model[backend]


def shared_twins(target: Target, choice: str, text: Sequence[int]) -> dict[nn.Linear, nn.Module] | None:
    """Twins for `choice` ("none" → None), calibrated on `text` when the backend needs it."""
    if choice == "none":
        return None
    backend = resolve_backend(choice)
    twins = build_shared_twins(target, backend)
    calibrated = _CALIBRATED.setdefault(target.model, set())
    if quantization.needs_calibration(backend) and backend not in calibrated:
        calibrate(target, twins, backend, text)
        calibrated.add(backend)
    return twins


def calibrate(target: Target, twins: dict[nn.Linear, nn.Module], backend: str, text: Sequence[int]) -> None:
    """Record activation ranges of the twins on `text` (one forward, no cache), then freeze them."""
    variant = build_variant(target.adapter, linear_twins=twins, description="calibration")
    with quantization.calibrating(backend):
        target.forward_uncached(text, variant)
    quantization.finish(twins, backend)


__all__ = [
    "QuantizeChoice",
    "build_shared_twins",
    "calibrate",
    "quantize_backend",
    "resolve_backend",
    "shared_twins",
    "target_linears",
]
