"""Attention through transformers' supported extension point, without K/V copies for GQA.

`register_attention()` registers `cas_sdpa` with both registries transformers consults:

- `AttentionInterface.register("cas_sdpa", sdpa_gqa_attention)`: the attention itself, torch SDPA
  with `enable_gqa=True`, so grouped K/V heads are never expanded with `repeat_kv`; for up to
  `FOLD_MAX_QUERIES` new tokens the query heads sharing a K/V head are instead folded into the
  query axis (`[B, H, q, D]` → `[B, Hkv, g·q, D]`, the mask tiled g times, once per forward),
  which measured 15-30% faster for few queries;
- `AttentionMaskInterface.register("cas_sdpa", sdpa_mask)`: the mask builder. Without it
  transformers builds **no** mask for an unknown implementation name: a forward over n > 1 new
  tokens on a cache then attends to the future (SmolLM2, 4 new tokens on 300 cached: logits off by
  19, no argmax right) and padding masks vanish, all silently. `sdpa_gqa_attention` refuses that case (a causal module, 1 < n < key length,
  no mask) with an error instead of answering wrongly.

4-D masks (additive float, as the engine passes for token trees, or bool with True = attend) with
explicit `position_ids` pass through unchanged. SDPA's `is_causal` is aligned to the upper left,
so it is used only when the key length equals the query length.

`attention_kernel(model, "cas_sdpa")` switches a model's implementation for a block and restores
the previous one in `finally`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from transformers import PreTrainedModel

NAME = "cas_sdpa"
FOLD_MAX_QUERIES = 8  # fold a group's query heads up to this many new tokens (slower at 16)


class MissingMaskError(RuntimeError):
    """A causal forward over several new tokens on a cache reached attention without a mask."""


def sdpa_gqa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """`query` [B, H, q, D], `key`/`value` [B, Hkv, k, D] → ([B, q, H, D], None)."""
    if kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None:
        raise ValueError(f"{NAME} supports neither softcap nor position_bias; use 'sdpa' or 'eager'")
    q_len, kv_len = query.shape[2], key.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    use_is_causal = False
    if attention_mask is None and causal and q_len > 1:
        if q_len != kv_len:
            raise MissingMaskError(
                f"{NAME}: {q_len} queries over {kv_len} keys without a mask; register the mask "
                f"function too (AttentionMaskInterface.register({NAME!r}, sdpa_mask))"
            )
        use_is_causal = True  # upper-left aligned: right only when q_len == kv_len
    batch, heads = query.shape[:2]
    kv_heads = key.shape[1]
    dropout_p = dropout if module.training else 0.0
    groups = heads // kv_heads
    if (
        groups > 1
        and q_len <= FOLD_MAX_QUERIES
        and not use_is_causal
        and (attention_mask is None or attention_mask.shape[1] == 1)
    ):
        # the query heads sharing a K/V head become one head over groups × q_len query rows
        folded = query.reshape(batch, kv_heads, groups * q_len, query.shape[-1])
        mask = None if attention_mask is None else _folded_mask(module, attention_mask, groups)
        out = F.scaled_dot_product_attention(folded, key, value, attn_mask=mask, dropout_p=dropout_p, scale=scaling)
        return out.reshape(batch, heads, q_len, value.shape[-1]).transpose(1, 2), None
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attention_mask,
        dropout_p=dropout_p,
        scale=scaling,
        is_causal=use_is_causal,
        enable_gqa=groups > 1,
    )
    return out.transpose(1, 2), None


_memo: tuple = (None, None, None, None)  # (layer index, key, mask, folded mask), replaced whole


def _folded_mask(module: torch.nn.Module, mask: torch.Tensor, groups: int) -> torch.Tensor:
    """`mask` tiled `groups` times along the query axis, built once per forward.

    Every layer of one forward receives the same mask object; the tiled copy is reused while the
    layer index grows and the mask is the same object (same storage, shape, dtype). A layer index
    that does not grow starts a new forward, which rebuilds it, so a mask changed in place between
    forwards is never served stale. The memo is one tuple, read and replaced whole, so concurrent
    forwards can only cause extra rebuilds.
    """
    global _memo
    layer = getattr(module, "layer_idx", None)
    key = (mask.data_ptr(), tuple(mask.shape), mask.dtype, groups)
    last, last_key, last_mask, folded = _memo
    if layer is None or last is None or layer <= last or last_mask is not mask or last_key != key:
        folded = mask.repeat(1, 1, groups, 1)
    _memo = (layer, key, mask, folded)
    return folded


_registered: set[str] = set()


def register_attention(name: str = NAME) -> str:
    """Register `sdpa_gqa_attention` and transformers' `sdpa_mask` under `name` (idempotent)."""
    if name not in _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(name, sdpa_gqa_attention)
        AttentionMaskInterface.register(name, sdpa_mask)
        _registered.add(name)
    return name


@contextlib.contextmanager
def attention_kernel(model: torch.nn.Module, name: str | None = NAME) -> Iterator[object]:
    """Within the block `model` uses attention implementation `name` (`None`: unchanged).

    `cas_sdpa` is registered on first use; other names must already be known to transformers.
    The previous implementation is restored in `finally`. Yields `model`.
    """
    if name is None:
        yield model
        return
    if name == NAME:
        register_attention()
    hf = cast("PreTrainedModel", model)
    previous = hf.config._attn_implementation
    try:
        if name != previous:
            hf.set_attn_implementation(name)
        yield model
    finally:
        if hf.config._attn_implementation != previous:
            hf.set_attn_implementation(previous)
