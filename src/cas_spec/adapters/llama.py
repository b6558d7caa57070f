"""Llama and the architectures transformers builds the same way (Qwen2, Mistral, Qwen3).

SmolLM2 and the stories260K test model are Llama models. Every decoder layer holds `self_attn`,
`mlp`, `input_layernorm` and `post_attention_layernorm` with pre-norm residuals, so a skipped
sublayer is its attention or MLP module returning zeros.

- Mistral: with `sliding_window` set (Mistral 7B v0.1: 4,096) every layer slides, and the model
  takes one sliding mask; `ModelAdapter.layer_types` and `tree_attention_mask` follow.
- Qwen2, Qwen3: `layer_types` in the config; with `use_sliding_window` the layers from
  `max_window_layers` on slide and the forward takes a mask per layer type (released Qwen3
  models have no sliding layers).
- Qwen3 normalizes each query and key head (`q_norm`, `k_norm`) inside `self_attn`, after the
  projections and before the rotary embedding: a skipped attention skips them with it, and
  the int8 twins replace the four projections while the norms stay float.
"""

from __future__ import annotations

from cas_spec.core.adapter import ModelAdapter


class LlamaAdapter(ModelAdapter):
    name = "llama"
    model_types = ("llama", "qwen2", "mistral", "qwen3")
