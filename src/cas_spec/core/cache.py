"""KV-cache surgery that works per layer (transformers 5.x `DynamicCache`).

`DynamicCache.crop(-n)` removes n tokens from *every* layer, including layers that a partial
draft never wrote, and positive arguments raise; these helpers cut each layer to an absolute
length instead, and gather the accepted path of a verified tree.
"""

from __future__ import annotations

import torch


def layer_length(layer) -> int:
    return layer.get_seq_length() if getattr(layer, "is_initialized", True) else 0


def truncate(cache, length: int) -> None:
    """Cut every layer of `cache` that holds more than `length` tokens back to `length`."""
    for layer in cache.layers:
        extra = layer_length(layer) - length
        if extra > 0:
            layer.crop(-extra)


def keep_positions(cache, prefix_length: int, keep: torch.Tensor) -> None:
    """Keep the first `prefix_length` tokens of every layer plus the tokens at offsets `keep`
    after it (offsets into the verified tree, in path order); drop the rest."""
    for layer in cache.layers:
        if layer_length(layer) <= prefix_length:
            continue
        index = torch.cat([
            torch.arange(prefix_length, device=layer.keys.device),
            keep.to(layer.keys.device) + prefix_length,
        ])
        layer.keys = layer.keys.index_select(-2, index)
        layer.values = layer.values.index_select(-2, index)


def lengths(cache) -> list[int]:
    """Tokens held by each layer."""
    return [layer_length(layer) for layer in cache.layers]
