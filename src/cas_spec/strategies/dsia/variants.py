"""Model variants: the target model switched into a cheaper mode for one draft pass (DSIA).

DSIA (dynamically switchable inference acceleration) drafts with the target model itself, with
no training and no second set of float weights. A `ModelVariant` is built once per drafter and
swapped in for a draft pass by `Target.draft_pass` (through `ModelAdapter.swapped`), which
restores the target in `finally`, whatever the pass raises. Nothing of the target is modified in
place: a variant holds a new `nn.ModuleList` of decoder layers in which a layer that changes is a
*shallow copy* sharing every unchanged submodule (and so every parameter) with the original
(`ModelAdapter.with_replacements`). Swapping is one attribute assignment per swapped attribute
(about a microsecond); nothing is copied or re-quantized per pass.

- **Layer sparsity**: a skipped attention or MLP sublayer is replaced by a module that returns
  zeros. The layer's residual connection then passes its input through unchanged; this holds for
  Llama's pre-norm layers and for Gemma 3's extra post-norms alike, since an RMS norm maps zero
  to zero. A skipped attention writes no KV, so its cache layer falls behind the others; the
  engine rolls every layer back to an absolute length (`ModelAdapter.rollback`). A layer with both
  sublayers skipped is replaced by a pass-through.
- **Early exit**: the layer list is cut after `exit_layer` layers; the target's final norm and
  LM head follow. The first layers are the target's own, so the KV they write for draft tokens
  is the KV the target computes for them.
- **Quantized activations**: Linear modules (LM head included) replaced by int8 twins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from cas_spec.core.adapter import ModelAdapter

ATTENTION, MLP = "attention", "mlp"


@dataclass(frozen=True, order=True)
class Sublayer:
    """One skippable unit: the attention or the MLP of decoder layer `layer`."""

    layer: int
    kind: str  # ATTENTION or MLP

    def __str__(self) -> str:
        return f"{self.layer}.{self.kind}"

    @classmethod
    def parse(cls, text: str) -> Sublayer:
        """`"12.attention"` or `"12.mlp"`."""
        index, _, kind = text.partition(".")
        if not index.isdigit() or kind not in (ATTENTION, MLP):
            raise ValueError(f"'{text}' is not a sublayer; write LAYER.attention or LAYER.mlp, e.g. 3.mlp")
        return cls(int(index), kind)


class ZeroAttention(nn.Module):
    """A skipped attention sublayer: zero output, no KV written."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(hidden_states), None


class ZeroMLP(nn.Module):
    """A skipped MLP sublayer: zero output."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


class PassThroughLayer(nn.Module):
    """A decoder layer with both sublayers skipped."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


@dataclass(frozen=True)
class ModelVariant:
    """A prebuilt draft mode of the target: decoder layers and, optionally, another LM head."""

    description: str
    layers: nn.ModuleList
    lm_head: nn.Module | None = None  # None: the target's own


def skippable_sublayers(adapter: ModelAdapter) -> tuple[Sublayer, ...]:
    """Sublayers a drafter may skip: never in the first or last layer, never the attention of a
    layer the attention masks are sized from (`ModelAdapter.mask_reference_layers`)."""
    protected = set(adapter.mask_reference_layers)
    out = []
    for index in range(1, adapter.num_layers - 1):
        if index not in protected:
            out.append(Sublayer(index, ATTENTION))
        out.append(Sublayer(index, MLP))
    return tuple(out)


def build_variant(
    adapter: ModelAdapter,
    *,
    skip: Iterable[Sublayer] = (),
    exit_layer: int | None = None,
    linear_twins: Mapping[nn.Linear, nn.Module] | None = None,
    description: str = "",
) -> ModelVariant:
    """Build a variant that skips `skip`, exits after `exit_layer` layers and runs the Linear
    modules found in `linear_twins` through their twins (int8 modules, say)."""
    skip = set(skip)
    allowed = set(skippable_sublayers(adapter))
    if bad := sorted(skip - allowed):
        raise ValueError(
            f"cannot skip {', '.join(map(str, bad))}: the first and last layers and the attention of "
            f"layers {list(adapter.mask_reference_layers)} always run"
        )
    count = adapter.num_layers if exit_layer is None else exit_layer
    if not 1 <= count <= adapter.num_layers:
        raise ValueError(f"exit_layer must be between 1 and {adapter.num_layers}, got {exit_layer}")
    twins = cast(Mapping[nn.Module, nn.Module], linear_twins or {})  # looked up by any module
    layers: list[nn.Module] = []
    for index, layer in enumerate(list(adapter.layers)[:count]):
        skip_attention, skip_mlp = Sublayer(index, ATTENTION) in skip, Sublayer(index, MLP) in skip
        if skip_attention and skip_mlp:
            layers.append(PassThroughLayer())
            continue
        replacements: dict[str, nn.Module] = {
            path: twins[sub] for path, sub in layer.named_modules() if path and sub in twins
        }
        if skip_attention:
            replacements = {p: m for p, m in replacements.items() if not _under(p, adapter.attention_name)}
            replacements[adapter.attention_name] = ZeroAttention()
        if skip_mlp:
            replacements = {p: m for p, m in replacements.items() if not _under(p, adapter.mlp_name)}
            replacements[adapter.mlp_name] = ZeroMLP()
        layers.append(adapter.with_replacements(layer, replacements))
    return ModelVariant(description=description, layers=nn.ModuleList(layers), lm_head=twins.get(adapter.lm_head))


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


__all__ = [
    "ATTENTION",
    "MLP",
    "ModelVariant",
    "PassThroughLayer",
    "Sublayer",
    "ZeroAttention",
    "ZeroMLP",
    "build_variant",
    "skippable_sublayers",
]
