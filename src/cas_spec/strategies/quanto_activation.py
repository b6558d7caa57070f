"""`quanto_activation`: draft with the target's Linear layers in int8 weights and int8 activations.

Notation: target = p (float32, verifies), draft = q (the same model, every Linear of the decoder
layers and the LM head swapped for an int8 twin). The twins are built once per model when the
first pipeline that needs them is built (`shared_twins`), held beside the float weights (their
memory is reported by `twin_bytes` and logged), shared by every level that asks for the same
backend, and swapped in for a draft pass only (`variants.use_variant`); the float model is never
changed, so verification is exactly the target.

Backends (`strategies/quantization/`), `auto` taking the first usable one in this order:
- `native_int8`: the project's W8A8 AVX2 kernel (`cas_spec.kernels.int8`), per-channel int8
  weights, activations quantized per token inside the kernel. Measured on SmolLM2-135M, 1 thread,
  300 cached tokens (`benchmarks/int8_kernel_cost.py`): a draft token costs 0.40-0.43 of a
  float32 target step under the calibrated kernels (dynamic_int8: 0.55-0.58 in the same runs; the
  rest of the forward alone, every Linear free, 0.23), and its argmax agrees with the target's
  greedy token at 0.917 of 300 positions (dynamic_int8 0.900).
- `dynamic_int8` (where the native kernel is unavailable: no AVX2 or no compiler): torch's
  dynamically quantized Linear, per-channel int8 weights, one activation scale per call.
- `quanto`: optimum-quanto W8A8 (the design card's library) with static activation scales,
  calibrated on the first prompt the level drafts for. About 100 µs of Python per layer makes it
  slower than float32 on CPU; it is there for devices with fast quanto kernels.
"""

from __future__ import annotations

import logging
import weakref
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from cas_spec.core.errors import ConfigError
from cas_spec.core.state import DecodingState
from cas_spec.core.target import Target
from cas_spec.strategies import quantization
from cas_spec.strategies.self_draft import SelfDraftOptions, SelfDraftStrategy
from cas_spec.strategies.variants import ModelVariant, build_variant, use_variant

log = logging.getLogger(__name__)

# the `quantize:` option of layer_sparsity / early_exit; auto = the first usable backend
QuantizeChoice = Literal["none", "auto", "native_int8", "dynamic_int8", "quanto"]

# model -> backend -> twins (each Linear of the decoder layers and the LM head -> its int8 twin)
_TWINS: weakref.WeakKeyDictionary[nn.Module, dict[str, dict[nn.Module, nn.Module]]] = weakref.WeakKeyDictionary()
_CALIBRATED: weakref.WeakKeyDictionary[nn.Module, set[str]] = weakref.WeakKeyDictionary()  # model -> backends


def target_linears(target: Target) -> list[nn.Linear]:
    """Every Linear of the decoder layers, then the LM head."""
    adapter = target.adapter
    found = [m for layer in adapter.layers for m in layer.modules() if isinstance(m, nn.Linear)]
    return [*found, adapter.lm_head]


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
        raise ConfigError([f"quanto_activation.backend: '{name}' is unavailable here: {status[name]}; "
                           f"available: {', '.join(usable) or 'none'}"])
    return name


def quantize_backend(choice: str) -> str | None:
    """The backend a `quantize:` option drafts in: None for "none", else `resolve_backend(choice)`."""
    return None if choice == "none" else resolve_backend(choice)


def build_shared_twins(target: Target, backend: str) -> dict[nn.Module, nn.Module]:
    """The int8 twins of `target`'s Linear layers for `backend`, built once per model."""
    per_model = _TWINS.setdefault(target.model, {})
    if backend not in per_model:
        twins = quantization.build_twins(target_linears(target), backend)
        per_model[backend] = twins
        log.info("int8 twins (%s) of %d Linear layers: %.1f MiB", backend, len(twins),
                 quantization.twin_bytes(twins) / 2**20)
    return per_model[backend]


def shared_twins(state: DecodingState, choice: str) -> dict[nn.Module, nn.Module] | None:
    """Twins for `choice` ("none" → None), calibrated on `state.tokens` when the backend needs it."""
    if choice == "none":
        return None
    target = state.target
    backend = resolve_backend(choice)
    twins = build_shared_twins(target, backend)
    calibrated = _CALIBRATED.setdefault(target.model, set())
    if quantization.needs_calibration(backend) and backend not in calibrated:
        calibrate(target, twins, backend, state.tokens)
        calibrated.add(backend)
    return twins


@torch.inference_mode()
def calibrate(target: Target, twins: dict, backend: str, tokens: list[int]) -> None:
    """Record activation ranges of the twins on `tokens` (no cache), then freeze them."""
    variant = build_variant(target.adapter, linear_twins=twins, description="calibration")
    ids = torch.tensor([tokens], dtype=torch.long, device=target.device)
    with use_variant(target.adapter, variant), quantization.calibrating(backend):
        target.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    quantization.finish(twins, backend)


class QuantoActivationOptions(SelfDraftOptions):
    int8_head = True
    backend: Literal["auto", "native_int8", "dynamic_int8", "quanto"] = Field(
        "auto", description="int8 backend: auto (the first usable of native_int8, dynamic_int8, quanto), "
                            "native_int8, dynamic_int8 or quanto.")


class QuantoActivation(SelfDraftStrategy):
    name = "quanto_activation"
    Options = QuantoActivationOptions

    def setup(self, target: Target) -> None:
        super().setup(target)
        self.backend = resolve_backend(self.options.backend)
        self.twins = build_shared_twins(target, self.backend)  # before kernels swap Linear classes

    @property
    def memory_bytes(self) -> int:
        """Memory held by the int8 twins (shared with other levels on the same model and backend)."""
        return quantization.twin_bytes(self.twins)

    def head_backend(self) -> str | None:
        return self.backend

    def build_variant(self, state: DecodingState) -> ModelVariant:
        twins = shared_twins(state, self.backend)
        return build_variant(state.target.adapter, linear_twins=twins,
                             description=f"int8 weights and activations ({self.backend})")
