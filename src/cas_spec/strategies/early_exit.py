"""`early_exit`: draft with the first E decoder layers, then the target's final norm and LM head.

No training (unlike LayerSkip or Kangaroo, whose models learn to exit early): the hidden state
after layer E is read by the target's own head. The first E layers are the target's, so the KV
they write for the root and the draft tokens is what the target computes for those tokens; with
`reuse_kv: true` (default) each draft token reads it from the shared cache instead of
recomputing the tokens drafted before it. With `reuse_kv: false` every draft pass re-feeds the
root and all tokens drafted so far (a baseline that measures what the reuse saves).

Not reused: LayerSkip also skips layers < E for the draft tokens during *verification*. Here
verification runs the whole model over the tree in one pass whose cost barely grows with its size
on CPU (see `docs/benchmarks.md`), so that saving would be small, and it would compute the early
layers of draft tokens in a different batch shape than plain decoding.

Measured on SmolLM2-135M, 1 thread: exiting at layer 8 / 15 / 22 of 30 costs about 0.4 / 0.6 /
0.8 of a target forward and agrees with the target on about 0.05 / 0.10 / 0.25 of tokens: below
break-even on this CPU; lossless all the same.
"""

from __future__ import annotations

import torch
from pydantic import Field

from cas_spec.core.errors import ConfigError
from cas_spec.core.state import DecodingState
from cas_spec.core.types import EMPTY_DRAFT, DraftResult, SetupContext
from cas_spec.strategies.dsia.self_draft import SelfDraftOptions, SelfDraftStrategy, draft_chain
from cas_spec.strategies.dsia.twins import QuantizeChoice, quantize_backend, shared_twins
from cas_spec.strategies.dsia.variants import ModelVariant, build_variant


class EarlyExitOptions(SelfDraftOptions):
    exit_layer: int = Field(8, ge=1, description="Number of decoder layers the draft runs before the LM head.")
    reuse_kv: bool = Field(True, description="Draft tokens read the early layers' KV from the shared cache.")
    quantize: QuantizeChoice = Field(
        "none",
        description="Also run the kept layers' Linear modules in int8: "
        "none, auto, native_int8, dynamic_int8 or quanto (a mixing-DSIA level).",
    )


class EarlyExit(SelfDraftStrategy):
    name = "early_exit"
    Options = EarlyExitOptions
    options: EarlyExitOptions

    def setup(self, context: SetupContext) -> None:
        super().setup(context)
        layers = self.target.adapter.num_layers
        if self.options.exit_layer >= layers:
            raise ConfigError(
                [f"early_exit.exit_layer: {self.options.exit_layer} is not below the model's {layers} layers"]
            )

    def head_backend(self) -> str | None:
        return quantize_backend(self.options.quantize)

    def build_variant(self, state: DecodingState) -> ModelVariant:
        target = self.target
        layers = target.adapter.num_layers
        twins = shared_twins(target, self.options.quantize, state.tokens)
        return build_variant(
            target.adapter,
            exit_layer=self.options.exit_layer,
            linear_twins=twins,
            description=f"first {self.options.exit_layer} of {layers} layers",
        )

    def draft(self, state: DecodingState, prefix: tuple[int, ...], max_tokens: int) -> DraftResult:
        if self.options.reuse_kv:
            return super().draft(state, prefix, max_tokens)
        variant = self.variant(state)
        drafted = EMPTY_DRAFT
        for _ in range(max_tokens):  # each pass re-feeds root, prefix and every token drafted so far
            step = draft_chain(self.target, variant, state, (*prefix, *drafted.tokens), 1, self.stop_threshold(state))
            if not len(step):
                break
            drafted = _concat(drafted, step)
        return drafted


def _concat(a: DraftResult, b: DraftResult) -> DraftResult:
    probs = [p for p in (a.draft_probs, b.draft_probs) if p is not None]
    return DraftResult(
        tokens=a.tokens + b.tokens,
        confidence=a.confidence + b.confidence,
        draft_probs=torch.cat(probs) if probs else None,
    )
