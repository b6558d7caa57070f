"""`KVCache`: a transformers cache whose layers write keys and values in place
(`cas_spec.core.kvlayers` says what each operation does to a layer, and what it costs)."""

from __future__ import annotations

import copy

import torch
from transformers.cache_utils import Cache

from cas_spec.core.kvlayers import (
    BLOCK,
    SLIDING_HISTORY,
    CacheHistoryError,
    KVLayer,
    SlidingWindowKVLayer,
    grown_capacity,
    layers_for,
)


class KVCache(Cache):
    """A transformers `Cache` of in-place `KVLayer`s; models take it unchanged as their `cache` (`past_key_values` before transformers 5.25)."""

    layers: list[KVLayer]  # type: ignore[assignment]  # all ours; transformers types it as a list of its bases

    def __init__(self, config: object | None = None, *, layers: list[KVLayer] | None = None) -> None:
        if layers is None and config is not None:
            layers = layers_for(config)
        if layers:
            super().__init__(layers=layers)  # type: ignore[arg-type]  # transformers wants a list of its base class
        else:
            super().__init__(layer_class_to_replicate=KVLayer)

    def lengths(self) -> list[int]:
        """Tokens each layer has seen."""
        return [layer.get_seq_length() for layer in self.layers]

    def rollback(self, length: int) -> None:
        """Cut every layer longer than `length` back to it (an absolute length, per layer); a
        `CacheHistoryError` leaves every layer as it was."""
        for layer in self.layers:
            layer.check_rollback(length)
        for layer in self.layers:
            layer.rollback(length)

    def keep(self, prefix_length: int, offsets: torch.Tensor) -> None:
        """Commit a verified tree: keep the first `prefix_length` tokens of every layer plus the
        tree tokens at `offsets` after them ([M] int64, in path order); drop the rest. A
        `CacheHistoryError` leaves every layer as it was."""
        offsets = offsets.to(torch.long)
        order = torch.arange(len(offsets))
        mismatch = (offsets.cpu() != order).nonzero()
        in_place = int(mismatch[0]) if len(mismatch) else len(offsets)
        last = int(offsets.max()) if len(offsets) else -1
        for layer in self.layers:
            layer.check_keep(prefix_length, prefix_length + len(offsets), last)
        for layer in self.layers:
            layer.keep(prefix_length, offsets, in_place, last)

    @property
    def nbytes(self) -> int:
        """Bytes of the key and value buffers the layers hold (capacity, not only what is filled)."""
        return sum(
            layer.buffers.keys.nbytes + layer.buffers.values.nbytes
            for layer in self.layers
            if layer.buffers is not None
        )

    def prefix_view(self, length: int) -> KVCache:
        """A cache that has seen the first `length` tokens of this one and reads them from the
        same buffers; forwards through it never alter this cache (copy on write)."""
        view = copy.copy(self)
        view.layers = [layer.view(length) for layer in self.layers]
        return view


__all__ = [
    "BLOCK",
    "SLIDING_HISTORY",
    "CacheHistoryError",
    "KVCache",
    "KVLayer",
    "SlidingWindowKVLayer",
    "grown_capacity",
    "layers_for",
]
