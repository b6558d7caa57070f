"""`quanto_activation`: draft with the target's Linear layers in int8 weights and int8 activations.

Notation: target = p (float32, verifies), draft = q (the same model, every Linear of the decoder
layers and the LM head swapped for an int8 twin). The twins are built once per model when the
first pipeline that needs them is built (`shared_twins`), held beside the float weights (their
memory is reported by `twin_bytes` and logged), shared by every level that asks for the same
backend (`dsia/twins.py`), and swapped in for a draft pass only (`Target.draft_pass`); the float
model is never changed, so verification is exactly the target.

Backends (`strategies/dsia/quantization/`), `auto` taking the first usable one in this order:
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

from typing import Literal

from pydantic import Field

from cas_spec.core.state import DecodingState
from cas_spec.core.types import SetupContext
from cas_spec.strategies.dsia.self_draft import SelfDraftOptions, SelfDraftStrategy
from cas_spec.strategies.dsia.twins import build_shared_twins, resolve_backend, shared_twins
from cas_spec.strategies.dsia.variants import ModelVariant, build_variant


class QuantoActivationOptions(SelfDraftOptions):
    int8_head = True
    backend: Literal["auto", "native_int8", "dynamic_int8", "quanto"] = Field(
        "auto",
        description="int8 backend: auto (the first usable of native_int8, dynamic_int8, quanto), "
        "native_int8, dynamic_int8 or quanto.",
    )


class QuantoActivation(SelfDraftStrategy):
    name = "quanto_activation"
    Options = QuantoActivationOptions
    options: QuantoActivationOptions

    def setup(self, context: SetupContext) -> None:
        super().setup(context)
        self.backend = resolve_backend(self.options.backend)
        self.twins = build_shared_twins(self.target, self.backend)  # before kernels swap Linear classes

    def head_backend(self) -> str | None:
        return self.backend

    def build_variant(self, state: DecodingState) -> ModelVariant:
        twins = shared_twins(self.target, self.backend, state.tokens)
        return build_variant(
            self.target.adapter, linear_twins=twins, description=f"int8 weights and activations ({self.backend})"
        )
