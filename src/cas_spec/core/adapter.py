"""`ModelAdapter`: per-architecture access to a transformers causal LM.

The engine and the strategies reach layers, norms, the LM head and the KV cache only through an
adapter, so they never depend on one architecture's attribute names. Module surgery lives here
too: `with_replacements` builds a layer that shares everything with the target's but some
submodules, and `swapped` runs the target with other decoder layers and LM head for the length
of a block (a draft pass), putting its own back in `finally`. Adapters register through the
`register_adapters` hook; `resolve_adapter` picks the one whose `model_types` has the model's.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from abc import ABC
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from torch import nn

from cas_spec.core.errors import UnsupportedModelError
from cas_spec.core.kvcache import KVCache
from cas_spec.core.kvlayers import layer_specs
from cas_spec.core.tree import sliding_tree_attention_mask, tree_attention_mask
from cas_spec.core.types import TokenTree

if TYPE_CHECKING:  # imported when first used: it loads transformers
    from cas_spec.core.kvcache import KVCache
    from cas_spec.core.registry import Registry


class ModelAdapter(ABC):
    """Access to one loaded model. Subclasses declare the `model_types` they support."""

    name: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module):
        self.model = model
        self.config: Any = model.config  # a transformers config: its attributes vary by architecture

    @classmethod
    def supports(cls, config: object) -> bool:
        return getattr(config, "model_type", None) in cls.model_types

    # -- structure -----------------------------------------------------------------------------
    @property
    def decoder(self) -> nn.Module:
        """The decoder stack (the module holding layers, norm, embeddings)."""
        return cast(nn.Module, getattr(self.model, cast(str, self.model.base_model_prefix)))

    @property
    def layers(self) -> nn.ModuleList:
        return cast(nn.ModuleList, self.decoder.layers)

    @property
    def final_norm(self) -> nn.Module:
        return cast(nn.Module, self.decoder.norm)

    @property
    def embed_tokens(self) -> nn.Module:
        return cast(nn.Module, self.decoder.embed_tokens)

    @property
    def lm_head(self) -> nn.Module:
        return cast(nn.Module, self.model.lm_head)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    #: Attribute names: the decoder's layer list and the model's LM head (swapped by drafters).
    layers_name: ClassVar[str] = "layers"
    lm_head_name: ClassVar[str] = "lm_head"
    #: Attribute names of a decoder layer's two sublayers, as self-speculative drafters skip them.
    attention_name: ClassVar[str] = "self_attn"
    mlp_name: ClassVar[str] = "mlp"

    @property
    def layer_types(self) -> tuple[str, ...]:
        """The attention type of each decoder layer, as transformers derives it for its caches and
        `new_cache` builds the cache layers: the config's `layer_types` (Gemma 3, Qwen2, Qwen3),
        else "sliding_attention" for every layer when the config sets `sliding_window` (Mistral,
        Phi-3), else "full_attention"."""
        return tuple(t for t, _ in self._layer_specs)

    @functools.cached_property
    def _layer_specs(self) -> tuple[tuple[str, int | None], ...]:
        """(type, sliding window) per layer, as the KV cache derives them (`kvlayers.layer_specs`)."""
        config = self.config
        if not hasattr(config, "get_text_config"):  # not a transformers config
            return tuple((t, None) for t in getattr(config, "layer_types", None) or ())
        return layer_specs(config)

    @property
    def mask_reference_layers(self) -> tuple[int, ...]:
        """Layers whose attention must run in every forward pass.

        transformers sizes the attention mask of each attention type (full, sliding) from the
        cache of the first layer of that type; a drafter that skipped that layer's attention
        would leave its cache short and the mask wrong. Drafters never skip these.
        """
        types = self.layer_types
        first: dict[str, int] = {}
        for index, kind in enumerate(types):
            first.setdefault(kind, index)
        return tuple(sorted(first.values())) or (0,)

    @property
    def context_length(self) -> int:
        """The longest sequence (prompt + generated tokens) the model accepts."""
        return int(getattr(self.config, "max_position_embeddings", 2048))

    @property
    def sliding_window_layers(self) -> tuple[int, ...]:
        """Indices of layers with sliding-window attention (`layer_types`)."""
        return tuple(i for i, t in enumerate(self.layer_types) if t == "sliding_attention")

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        ids = getattr(self.model.generation_config, "eos_token_id", None)
        if ids is None:
            ids = getattr(self.config, "eos_token_id", None)
        if ids is None:
            return ()
        return tuple(ids) if isinstance(ids, list | tuple) else (int(ids),)

    # -- KV cache ------------------------------------------------------------------------------
    def new_cache(self) -> KVCache:
        """An empty in-place KV cache for this model (`core/kvcache.py`); sliding-window layers
        keep enough history to roll back, commit and view past the window."""

        return KVCache(self.config)

    def rollback(self, cache: KVCache, length: int) -> None:
        """Cut every layer of `cache` back to `length` tokens (an absolute length, per layer)."""
        _checked(cache).rollback(length)

    def keep(self, cache: KVCache, prefix_length: int, keep: torch.Tensor) -> None:
        """Keep the prefix plus the verified tree tokens at offsets `keep` ([M] int64)."""
        _checked(cache).keep(prefix_length, keep)

    def prefix_view(self, cache: KVCache, length: int) -> KVCache:
        """A new cache holding the first `length` tokens of `cache`, read from the same buffers;
        forwarding through it never alters `cache` (to score drafters on tokens the target
        already verified)."""
        return _checked(cache).prefix_view(length)

    def cache_length(self, cache: KVCache) -> int:
        """Tokens every layer holds (the committed length, once a step is committed)."""
        lengths = _checked(cache).lengths()
        return min(lengths) if lengths else 0

    # -- tree attention ------------------------------------------------------------------------
    def tree_attention_mask(
        self, tree: TokenTree, past_length: int, dtype: torch.dtype, device: torch.device | str
    ) -> Any:
        """The `attention_mask` argument that verifies `tree` over `past_length` cached tokens.

        Sliding-window cache layers hand attention only their last `sliding_window - 1` cached
        tokens, so the mask follows `layer_types`: without sliding layers one additive 4-D mask
        over every cached token (`core.tree.tree_attention_mask`); when every layer slides (Mistral,
        Phi-3 with a window), one mask over the window (`core.tree.sliding_tree_attention_mask`);
        when both kinds are present, {"full_attention": ..., "sliding_attention": ...}, the mask
        per layer type that transformers' Gemma 3, Qwen2 and Qwen3 forwards take. Override for a
        model whose forward takes something else."""
        specs = self._layer_specs
        windows = {int(window) for t, window in specs if t == "sliding_attention" and window is not None}
        if not windows:
            return tree_attention_mask(tree, past_length, dtype, device)
        if len(windows) > 1:
            raise NotImplementedError(
                f"sliding layers with different windows {sorted(windows)}: override tree_attention_mask"
            )
        sliding = sliding_tree_attention_mask(tree, past_length, windows.pop(), dtype, device)
        if all(t == "sliding_attention" for t, _ in specs):
            return sliding
        return {"full_attention": tree_attention_mask(tree, past_length, dtype, device), "sliding_attention": sliding}

    # -- module swapping -------------------------------------------------------------------------
    @contextlib.contextmanager
    def swapped(self, layers: nn.ModuleList, lm_head: nn.Module | None = None) -> Iterator[None]:
        """Within the block the decoder runs `layers` and the model `lm_head` (None: its own); the
        target's own modules are put back in `finally`, whatever the block raises. One attribute
        assignment each way: nothing is copied."""
        decoder, model = self.decoder, self.model
        saved_layers = decoder._modules[self.layers_name]
        saved_head = model._modules[self.lm_head_name]
        try:
            decoder._modules[self.layers_name] = layers
            if lm_head is not None:
                model._modules[self.lm_head_name] = lm_head
            yield
        finally:
            decoder._modules[self.layers_name] = saved_layers
            model._modules[self.lm_head_name] = saved_head

    @staticmethod
    def with_replacements(module: nn.Module, replacements: Mapping[str, nn.Module]) -> nn.Module:
        """`module` with the submodules at the dotted paths in `replacements` swapped. Modules on
        the way to a replacement are shallow copies; everything else (every parameter included) is
        shared with `module`, which is left untouched."""
        if not replacements:
            return module
        if "" in replacements:
            return replacements[""]
        clone = copy.copy(module)
        clone._modules = dict(module._modules)
        groups: dict[str, dict[str, nn.Module]] = defaultdict(dict)
        for path, new in replacements.items():
            head, _, rest = path.partition(".")
            if head not in module._modules:
                raise KeyError(f"{type(module).__name__} has no submodule '{head}'")
            groups[head][rest] = new
        for head, sub in groups.items():
            child = module._modules[head]
            assert child is not None
            clone._modules[head] = ModelAdapter.with_replacements(child, sub)
        return clone


def resolve_adapter(model: nn.Module, registry: Registry[ModelAdapter]) -> ModelAdapter:
    """The adapter of `registry` (a `Registry` of `ModelAdapter` classes) for `model`, or
    `UnsupportedModelError` naming the supported model types."""
    config = model.config
    for name in registry.names():
        cls = registry.get(name)
        if cls.supports(config):
            return cls(model)
    supported = sorted({t for n in registry.names() for t in registry.get(n).model_types})
    raise UnsupportedModelError(
        f"unsupported model type '{getattr(config, 'model_type', '?')}'; supported: {', '.join(supported)}"
    )


def _checked(cache: object) -> KVCache:

    if not isinstance(cache, KVCache):
        raise TypeError(f"expected a KVCache from `ModelAdapter.new_cache`, got {type(cache).__name__}")
    return cache
