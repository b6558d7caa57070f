"""The layers of `KVCache` (`cas_spec.core.kvcache`): keys and values written in place.

transformers' `DynamicCache.update` concatenates each layer with the new tokens on every forward
(`torch.cat`: a copy of everything cached, per layer, per forward; 11.6% of a one-token
SmolLM2-135M step at 300 cached tokens, growing with the context; drafts pay it too). Here each
layer keeps preallocated buffers [B, H, capacity, D], writes the n new tokens at its length and
hands attention a view of the filled part: an update copies n tokens, whatever the context
(8 µs per layer for update + rollback against 11 / 19 / 46 µs for `DynamicCache` at 64 / 300 /
1,000 tokens). SDPA, `cas_sdpa` and eager attention read the strided views as fast as contiguous
tensors, without hidden copies (SmolLM2 shapes, 1 thread, 64-1,000 keys; with K/V cold in memory:
5.4 vs 5.3 ms for 30 layers at 1,000 keys).

Measured (`benchmarks/kv_cache_cost.py`, SmolLM2-135M, 1 thread, calibrated kernels, medians of
41-101 interleaved repeats, four runs): a one-token step costs 0.98-1.00 of `DynamicCache`'s at
64 cached tokens, 0.95-0.99 at 300 and 0.94-0.97 at 1,000; an 8-token verification at 1,000,
0.97-1.00. What still grows with the context is attention itself: it now reads every layer's K/V
from memory (46 MB per step at 1,000 tokens, against 538 MB of weights), which the concatenation
used to have just written into the CPU caches; a step at 1,000 tokens costs 1.12-1.17 of one at
64 (`DynamicCache`: 1.16-1.21), an 8-token verification 1.58-1.75.

What each operation does to a layer (positions are absolute token positions):

- length: tokens the layer has seen (`get_seq_length`). Layers skipped by a draft fall behind.
- capacity: grows by half again, in whole `BLOCK`s, when an update does not fit, and never
  exceeds 2 × held + `BLOCK` (held: tokens stored); a rollback that leaves more spare shrinks it.
- `rollback(length)` (and transformers' `crop(-n)`): a layer longer than `length` is cut back to
  it; only its length moves.
- `keep(prefix, offsets)`, the commit of a verified tree: the first `prefix` tokens stay and the
  tree tokens at `offsets` after them (in path order) are gathered in place to follow them.
- `prefix_view(length)`: a cache reading the first `length` tokens of each layer (a shorter layer
  whole) from the same buffers. Copy on write: the view's first write copies what it reads into
  buffers of its own, so forwards through it never alter the original; and the original copies
  its buffers before writing where a view reads (after a rollback below the view's length).
- Sliding-window layers (Gemma 3, Mistral; `SlidingWindowKVLayer`) attend to their last
  K = min(length, window - 1) cached tokens followed by the new ones: `update` returns exactly
  those and `get_mask_sizes` says so (as transformers' sliding layers do; the Gemma 3 tree masks
  rely on it). They hold more, so that a rollback, a commit or a view can go back: after a
  rollback or commit at most the newest `window - 1 + SLIDING_HISTORY` tokens; an update keeps
  every token less than `window - 1 + 2 · SLIDING_HISTORY` before its first new one, and moves
  the held tokens to the front of fresh buffers when it does not fit. So while at most
  `SLIDING_HISTORY` tokens were written since the last rollback or commit, a rollback or view
  can go back `SLIDING_HISTORY` tokens behind it; an operation needing states a layer no longer
  holds raises `CacheHistoryError` (and changes nothing) rather than answer wrongly.

Built for inference (`torch.inference_mode` or `no_grad`): writes go in place.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.cache_utils import CacheLayerMixin

BLOCK = 64  # tokens: the unit of buffer capacity
SLIDING_HISTORY = 128  # tokens a sliding layer keeps beyond its window after a rollback or commit


class CacheHistoryError(RuntimeError):
    """A sliding-window layer no longer holds the states an operation needs."""


@dataclass(eq=False)
class _Buffers:
    """Preallocated keys and values [B, H, capacity, D] of a layer, shared with its prefix views."""

    keys: torch.Tensor
    values: torch.Tensor
    shared: int = 0  # buffer index below which prefix views read: nobody writes there in place

    @property
    def capacity(self) -> int:
        return self.keys.shape[-2]


def grown_capacity(tokens: int) -> int:
    """Room for `tokens` and half as many again, in whole blocks."""
    return -(-(tokens + tokens // 2) // BLOCK) * BLOCK


def _empty_like(states: torch.Tensor, capacity: int) -> torch.Tensor:
    return states.new_empty((*states.shape[:-2], capacity, states.shape[-1]))


class KVLayer(CacheLayerMixin):  # type: ignore[no-untyped-call]  # transformers' __init_subclass__ is untyped
    """A full-attention layer: every token it has seen, at buffer index position - origin."""

    is_sliding = False
    is_croppable = True

    def __init__(self, **kwargs: object) -> None:  # not the mixin's: `keys`/`values` are views
        self.is_initialized = False
        self.buffers: _Buffers | None = None
        self.length = 0  # tokens seen
        self.first = 0  # position of the oldest token held
        self.origin = 0  # position at buffer index 0
        self.owns_buffers = True  # False for a prefix view until its first write

    # -- what the layer holds -------------------------------------------------------------------
    @property
    def keys(self) -> torch.Tensor | None:
        """Keys of the tokens held, [B, H, held, D]: a view of the buffer."""
        return None if self.buffers is None else self._held(self.buffers.keys)

    @keys.setter
    def keys(self, value: object) -> None:
        _refuse_assignment(value)

    @property
    def values(self) -> torch.Tensor | None:
        return None if self.buffers is None else self._held(self.buffers.values)

    @values.setter
    def values(self, value: object) -> None:
        _refuse_assignment(value)

    @property
    def held(self) -> int:
        return self.length - self.first

    @property
    def capacity(self) -> int:
        return 0 if self.buffers is None else self.buffers.capacity

    def _held(self, states: torch.Tensor) -> torch.Tensor:
        return states.narrow(-2, self.first - self.origin, self.held)

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    # -- a forward writes ----------------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.buffers = _Buffers(_empty_like(key_states, 0), _empty_like(value_states, 0))
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new states at the layer's length; return the states attention reads."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        past = self.length
        self._append(key_states, value_states)
        return self._attended(past)

    def _attended(self, past: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys, self.values  # type: ignore[return-value]

    def _append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        n = key_states.shape[-2]
        buffers = self.buffers
        assert buffers is not None
        start = self.length - self.origin
        if (
            not self.owns_buffers
            or start < buffers.shared
            or start + n > buffers.capacity
            or (buffers.keys.is_inference() and not torch.is_inference_mode_enabled())
        ):
            self._relocate(n, floor=self._update_floor())
            buffers, start = self.buffers, self.length - self.origin
            assert buffers is not None
        buffers.keys.narrow(-2, start, n).copy_(key_states)
        buffers.values.narrow(-2, start, n).copy_(value_states)
        self.length += n

    def _update_floor(self) -> int:
        """Positions below this may be dropped when an update moves the held states."""
        return 0

    def _relocate(self, extra: int, floor: int = 0) -> None:
        """Copy the held states from position max(first, floor) on to the front of fresh buffers
        with room for `extra` more tokens (grown capacity); the layer then owns its buffers."""
        old = self.buffers
        assert old is not None
        first = min(max(self.first, floor), self.length)
        held = self.length - first
        capacity = grown_capacity(held + extra)
        fresh = _Buffers(_empty_like(old.keys, capacity), _empty_like(old.values, capacity))
        for source, target in ((old.keys, fresh.keys), (old.values, fresh.values)):
            target.narrow(-2, 0, held).copy_(source.narrow(-2, first - self.origin, held))
        self.buffers, self.origin, self.first, self.owns_buffers = fresh, first, first, True

    # -- rollback, commit, views -------------------------------------------------------------
    def check_rollback(self, length: int) -> None:
        """Raise `CacheHistoryError` if `rollback(length)` needs states the layer lost."""
        if self.is_initialized:
            self._check_history(min(length, self.length))

    def rollback(self, length: int) -> None:
        """Forget the tokens after position `length` (a layer no longer than that keeps them)."""
        self.check_rollback(length)
        if self.is_initialized and length < self.length:
            self.length = max(length, 0)
        self._after_cut()

    def crop(self, tokens_to_remove: int) -> None:
        """transformers' semantics: remove -`tokens_to_remove` tokens (a positive count raises)."""
        if tokens_to_remove > 0:
            raise ValueError(
                f"crop takes a negative count of tokens to remove, got {tokens_to_remove}; "
                "to cut back to a length use `rollback`"
            )
        if self.is_initialized:
            self.rollback(self.length + tokens_to_remove)

    def check_keep(self, prefix: int, kept: int, last: int) -> None:
        """Raise `CacheHistoryError` if the layer lacks what keeping `kept` tokens, the tree
        tokens at offsets up to `last` after `prefix` among them, needs."""
        if self.length <= prefix:
            return
        if last >= self.length - prefix or self.first > prefix:
            raise CacheHistoryError(
                f"a layer holding positions {self.first}..{self.length - 1} lacks tree tokens "
                f"after {prefix} at offsets up to {last}"
            )
        self._check_history(kept)

    def keep(self, prefix: int, offsets: torch.Tensor, in_place: int, last: int) -> None:
        """Keep the first `prefix` tokens and the tree tokens at `offsets` after them, in path
        order; the first `in_place` offsets equal their index, `last` is the largest offset."""
        kept = prefix + len(offsets)
        self.check_keep(prefix, kept, last)
        if self.length <= prefix:
            return
        start = prefix + in_place
        if in_place < len(offsets):
            assert self.buffers is not None
            if not self.owns_buffers or start - self.origin < self.buffers.shared:
                self._relocate(0)
            buffers = self.buffers
            assert buffers is not None
            index = offsets[in_place:].to(buffers.keys.device) + (prefix - self.origin)
            with torch.inference_mode(buffers.keys.is_inference()):  # buffers written under it
                for states in (buffers.keys, buffers.values):
                    states.narrow(-2, start - self.origin, len(index)).copy_(states.index_select(-2, index))
        self.length = kept
        self._after_cut()

    def view(self, length: int) -> KVLayer:
        """This layer as one that has seen min(length, self.length) tokens, reading the same
        buffers until its first write (copy on write)."""
        twin = copy.copy(self)
        twin.owns_buffers = False
        twin.rollback(length)
        if twin.buffers is not None:
            twin.buffers.shared = max(twin.buffers.shared, twin.length - twin.origin)
        return twin

    def _check_history(self, length: int) -> None:
        """Raise unless the layer holds what a layer at `length` tokens attends to."""

    def _after_cut(self) -> None:
        """Bound the memory of a layer after a rollback or commit."""
        if self.owns_buffers and self.buffers is not None and self.capacity > 2 * self.held + BLOCK:
            self._relocate(0)

    # -- transformers' other layer operations ------------------------------------------------
    def reset(self) -> None:
        KVLayer.__init__(self)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_batch(lambda states: states.index_select(0, beam_idx.to(states.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda states: states.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda states: states[indices, ...])

    def _map_batch(self, change: Callable[[torch.Tensor], torch.Tensor]) -> None:
        if self.buffers is None:
            return
        old = self.buffers
        self.buffers = _Buffers(change(old.keys), change(old.values))
        self.owns_buffers = True


def _refuse_assignment(value: object) -> None:
    if value is not None:
        raise AttributeError("KV layers hold their states in preallocated buffers; write them with `update`")


class SlidingWindowKVLayer(KVLayer):  # type: ignore[no-untyped-call]  # transformers' __init_subclass__ is untyped
    """A sliding-window layer: attention sees the last `sliding_window - 1` cached tokens."""

    is_sliding = True
    record_past = True  # transformers' name for "can roll back past the window"

    def __init__(self, sliding_window: int, **kwargs: object) -> None:
        super().__init__()
        self.sliding_window = int(sliding_window)
        self.history = SLIDING_HISTORY  # read when built, so tests can change it

    def reset(self) -> None:
        window, history = self.sliding_window, self.history
        super().reset()
        self.sliding_window, self.history = window, history

    @property  # transformers' layers keep it as an attribute; here it is derived from `length`
    def cumulative_length(self) -> int:  # type: ignore[override]
        return self.length

    def get_max_length(self) -> int:
        return self.sliding_window

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        cached = min(self.length, self.sliding_window - 1)
        return cached + query_length, max(self.length - self.sliding_window + 1, 0)

    def _attended(self, past: int) -> tuple[torch.Tensor, torch.Tensor]:
        buffers = self.buffers
        assert buffers is not None
        start = past - min(past, self.sliding_window - 1)
        count = self.length - start
        return (
            buffers.keys.narrow(-2, start - self.origin, count),
            buffers.values.narrow(-2, start - self.origin, count),
        )

    def _update_floor(self) -> int:
        return self.length - (self.sliding_window - 1) - 2 * self.history

    def _check_history(self, length: int) -> None:
        needed = max(0, length - (self.sliding_window - 1))
        if needed < self.first:
            raise CacheHistoryError(
                f"a sliding-window layer holds positions from {self.first} on but needs {needed} to stand at "
                f"{length} tokens; go back at most {self.history} tokens behind a rollback or commit"
            )

    def _after_cut(self) -> None:
        self.first = max(self.first, self.length - (self.sliding_window - 1) - self.history)
        super()._after_cut()


def layer_specs(config: object) -> tuple[tuple[str, int | None], ...]:
    """(attention type, sliding window or None) of each decoder layer of a transformers `config`,
    as transformers types its cache layers: the config's `layer_types`, else every layer
    "sliding_attention" when it sets `sliding_window` (Mistral, Phi-3), "chunked_attention" when
    it sets `attention_chunk_size`, else "full_attention". Derived here rather than by
    transformers' own helper, whose form changes between releases."""
    decoder = config.get_text_config(decoder=True)  # type: ignore[attr-defined]
    windows: dict[str, int | None] = {
        "sliding_attention": getattr(decoder, "sliding_window", None),
        "chunked_attention": getattr(decoder, "attention_chunk_size", None),
    }
    types = getattr(decoder, "layer_types", None)
    if types is None:
        kind = next((k for k, window in windows.items() if window is not None), "full_attention")
        types = [kind] * decoder.num_hidden_layers
    return tuple((t, windows.get(t)) for t in types)


def layers_for(config: object) -> list[KVLayer]:
    """One cache layer per decoder layer of `config` (`layer_specs`): sliding (and chunked)
    attention layers slide, full attention layers hold everything."""
    layers: list[KVLayer] = []
    for layer_type, window in layer_specs(config):
        if layer_type == "full_attention":
            layers.append(KVLayer())
        elif window is not None:
            layers.append(SlidingWindowKVLayer(sliding_window=window))
        else:
            raise NotImplementedError(f"KVCache has no layer for '{layer_type}' layers")
    return layers


__all__ = [
    "BLOCK",
    "SLIDING_HISTORY",
    "CacheHistoryError",
    "KVLayer",
    "SlidingWindowKVLayer",
    "grown_capacity",
    "layer_specs",
    "layers_for",
]
