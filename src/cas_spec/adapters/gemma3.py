"""Gemma 3 text models (`Gemma3ForCausalLM`, `model_type` "gemma3_text"), e.g. Gemma 3 270M.

Where it differs from Llama and what that takes here:

- 5 of every 6 layers attend through a sliding window (512 tokens on 270M). Their cache layers
  hand attention only the newest `sliding_window - 1` cached tokens and keep some history
  beyond, so `core/kvcache.py` keeps them exact under rollback, tree commit and prefix views
  (`ModelAdapter.new_cache`).
- A token tree past the window needs two masks: full layers see every cached token, sliding
  layers see the last `sliding_window - 1` cached tokens and only keys within the window of each
  query. `Gemma3TextModel.forward` takes a dict {"full_attention": ..., "sliding_attention": ...},
  which `ModelAdapter.tree_attention_mask` returns for models with both kinds of layer
  (`core.tree.sliding_tree_attention_mask` builds the sliding one).
- Extra norms around attention and MLP, scaled embeddings, `query_pre_attn_scalar` attention
  scaling, one KV head, head_dim 256: all inside transformers' modules, so the generic structure
  accessors serve. A skipped sublayer's zero output stays zero through its post-norm (an RMS
  norm maps zero to zero). transformers' Gemma 3 attention passes no softcap (the config has
  none), so the `cas_sdpa` kernel applies (tested against stock attention in
  tests/adapters/test_gemma3.py).
"""

from __future__ import annotations

from cas_spec.core.adapter import ModelAdapter
from cas_spec.core.tree import sliding_tree_attention_mask

__all__ = ["Gemma3Adapter", "sliding_tree_attention_mask"]


class Gemma3Adapter(ModelAdapter):
    name = "gemma3"
    model_types = ("gemma3_text",)
