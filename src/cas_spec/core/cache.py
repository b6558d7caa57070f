"""KV-cache surgery that works per layer (transformers 5.x `DynamicCache`).

`DynamicCache.crop(-n)` removes n tokens from *every* layer, including layers that a partial
draft never wrote, and positive arguments raise; these helpers cut each layer to an absolute
length instead, and gather the accepted path of a verified tree.

Sliding-window layers (`DynamicSlidingWindowLayer`: Gemma 3, Mistral) count every token they
have seen in `cumulative_length` but store only the newest ones. transformers trims them to
`sliding_window - 1` tokens after each forward unless the cache *records the past*
(`activate_past_recording()`, which `new_cache` turns on); then they keep everything until the
next cut, and these helpers do the cut: a sliding layer that has seen L tokens keeps the KV of the
last `sliding_window - 1 + SLIDING_HISTORY` of them. The `sliding_window - 1` are what the next
forward attends to; the `SLIDING_HISTORY` more let `prefix_view` (and a rollback) go back that
many tokens. A layer that has lost tokens it would need raises `CacheHistoryError` rather than
answer wrongly.
"""

from __future__ import annotations

import copy

import torch

SLIDING_HISTORY = 128  # tokens a sliding layer keeps beyond its window, for prefix views


class CacheHistoryError(RuntimeError):
    """A sliding-window layer no longer holds the states an operation needs."""


def new_cache(config):
    """A `DynamicCache` for `config` whose sliding-window layers record the past, so that
    `truncate` and `keep_positions` stay exact past the window."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    cache.activate_past_recording()
    return cache


def is_sliding(layer) -> bool:
    return bool(getattr(layer, "is_sliding", False)) and hasattr(layer, "cumulative_length")


def layer_length(layer) -> int:
    """Tokens the layer has seen (for a sliding layer, more than it stores)."""
    if is_sliding(layer):
        return int(layer.cumulative_length)
    return layer.get_seq_length() if getattr(layer, "is_initialized", True) else 0


def _stored(layer) -> int:
    if not getattr(layer, "is_initialized", False) or layer.keys is None:
        return 0
    return layer.keys.shape[-2]


def _retained(layer) -> int:
    return int(layer.sliding_window) - 1 + SLIDING_HISTORY


def _check_sliding(layer, first: int, length: int) -> None:
    """`layer` stores positions from `first` on; a layer at `length` needs its last window - 1."""
    needed = max(0, length - (int(layer.sliding_window) - 1))
    if needed < first:
        raise CacheHistoryError(
            f"a sliding-window layer holds positions from {first} on but needs {needed} to stand at "
            f"{length} tokens; build the cache with `new_cache` (it records the past), and go back at "
            f"most {SLIDING_HISTORY} tokens behind what a layer has seen")


def _cut_sliding(layer, length: int) -> None:
    """Make sliding `layer` hold what a recording layer that saw exactly `length` tokens holds."""
    total = int(layer.cumulative_length)
    length = min(length, total)
    stored = _stored(layer)
    if stored == 0 and total == 0:
        return
    first = total - stored  # absolute position of the first stored token
    _check_sliding(layer, first, length)
    start = max(first, length - _retained(layer)) - first
    end = length - first
    if start != 0 or end != stored:
        layer.keys = layer.keys[..., start:end, :]
        layer.values = layer.values[..., start:end, :]
    layer.cumulative_length = length


def truncate(cache, length: int) -> None:
    """Cut every layer of `cache` that holds more than `length` tokens back to `length`.

    Sliding layers are cut to `length` too and their storage bounded to the window plus
    `SLIDING_HISTORY` (which is also done for a sliding layer already at `length`).
    """
    for layer in cache.layers:
        if is_sliding(layer):
            if getattr(layer, "is_initialized", False):
                _cut_sliding(layer, length)
            continue
        extra = layer_length(layer) - length
        if extra > 0:
            layer.crop(-extra)


def keep_positions(cache, prefix_length: int, keep: torch.Tensor) -> None:
    """Keep the first `prefix_length` tokens of every layer plus the tokens at offsets `keep`
    after it (offsets into the verified tree, in path order); drop the rest."""
    for layer in cache.layers:
        total = layer_length(layer)
        if total <= prefix_length:
            continue
        device = layer.keys.device
        if is_sliding(layer):
            stored = _stored(layer)
            prefix_stored = stored - (total - prefix_length)
            if prefix_stored < 0:
                raise CacheHistoryError("a sliding-window layer lost tree tokens; build the cache with `new_cache`")
            _check_sliding(layer, prefix_length - prefix_stored, prefix_length)
            index = torch.cat([torch.arange(prefix_stored, device=device), keep.to(device) + prefix_stored])
            index = index[-_retained(layer):]
            layer.keys = layer.keys.index_select(-2, index)
            layer.values = layer.values.index_select(-2, index)
            layer.cumulative_length = prefix_length + len(keep)
            continue
        index = torch.cat([
            torch.arange(prefix_length, device=device),
            keep.to(device) + prefix_length,
        ])
        layer.keys = layer.keys.index_select(-2, index)
        layer.values = layer.values.index_select(-2, index)


def prefix_view(cache, length: int):
    """A new cache whose layers hold the first `length` tokens of `cache` as views (no copy).

    Forwarding tokens through the view, or cutting it, never alters `cache`: layers replace their
    tensors rather than write into them. A layer holding fewer than `length` tokens is viewed
    whole. A sliding-window layer of the view behaves like one that has seen exactly `length`
    tokens (and records the past); it needs the states of the `sliding_window - 1` tokens before
    `length`, so `length` may lie at most `SLIDING_HISTORY` tokens behind what it has seen
    (`CacheHistoryError` otherwise).
    """
    view = copy.copy(cache)
    view.layers = []
    for layer in cache.layers:
        twin = copy.copy(layer)
        if getattr(layer, "is_initialized", False) and layer.keys is not None:
            if is_sliding(layer):
                _cut_sliding(twin, length)
            elif layer_length(layer) > length:
                twin.keys = layer.keys[..., :length, :]
                twin.values = layer.values[..., :length, :]
        view.layers.append(twin)
    return view


def lengths(cache) -> list[int]:
    """Tokens held by each layer."""
    return [layer_length(layer) for layer in cache.layers]
