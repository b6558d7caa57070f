"""Gemma 3 text models (`Gemma3ForCausalLM`, `model_type` "gemma3_text"), e.g. Gemma 3 270M.

Where it differs from Llama and what that takes here:

- 5 of every 6 layers attend through a sliding window (512 tokens on 270M). Their cache layers
  hand attention only the newest `sliding_window - 1` cached tokens and keep some history
  beyond, so `core/kvcache.py` keeps them exact under rollback, tree commit and prefix views
  (`ModelAdapter.new_cache`).
- A token tree past the window needs two masks: full layers see every cached token, sliding
  layers see the last `sliding_window - 1` cached tokens and only keys within the window of each
  query. `Gemma3TextModel.forward` takes a dict {"full_attention": ..., "sliding_attention": ...},
  which `tree_attention_mask` returns.
- Extra norms around attention and MLP, scaled embeddings, `query_pre_attn_scalar` attention
  scaling, one KV head, head_dim 256: all inside transformers' modules, so the generic structure
  accessors serve. transformers' Gemma 3 attention passes no softcap (the config has none), so the
  `cas_sdpa` kernel applies (tested against stock attention in tests/adapters/test_gemma3.py).
"""

from __future__ import annotations

import torch

from cas_spec.core.adapter import ModelAdapter
from cas_spec.core.tree import ancestor_matrix, tree_attention_mask
from cas_spec.core.types import TokenTree


def sliding_tree_attention_mask(
    tree: TokenTree, past_length: int, window: int, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Additive 4-D mask [1, 1, N, K + N] for a sliding-window layer holding `past_length` tokens.

    A sliding cache layer hands attention its last K = min(past_length, window - 1) cached tokens
    (positions past_length - K ... past_length - 1) followed by the N tree nodes. A node at position
    p = past_length + depth may see a key at position j when j is a cached token or one of its
    ancestors (or itself), and p - j < window.
    """
    n = tree.size
    cached = min(past_length, window - 1)
    query_pos = tree.depths + past_length  # [N]
    cached_pos = torch.arange(past_length - cached, past_length)
    allowed = torch.zeros(n, cached + n, dtype=torch.bool)
    allowed[:, :cached] = (query_pos[:, None] - cached_pos[None, :]) < window
    allowed[:, cached:] = ancestor_matrix(tree) & ((tree.depths[:, None] - tree.depths[None, :]) < window)
    mask = torch.zeros(n, cached + n, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.to(device)[None, None]


class Gemma3Adapter(ModelAdapter):
    name = "gemma3"
    model_types = ("gemma3_text",)

    def tree_attention_mask(
        self, tree: TokenTree, past_length: int, dtype: torch.dtype, device: torch.device | str
    ) -> dict[str, torch.Tensor]:
        masks = {"full_attention": tree_attention_mask(tree, past_length, dtype, device)}
        window = getattr(self.config, "sliding_window", None)
        if window is not None and "sliding_attention" in (self.config.layer_types or ()):
            masks["sliding_attention"] = sliding_tree_attention_mask(tree, past_length, int(window), dtype, device)
        return masks
