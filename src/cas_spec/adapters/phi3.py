"""Phi-3 (`Phi3ForCausalLM`, `model_type` "phi3"): Phi-3 and Phi-3.5 mini, Phi-4-mini.

Where it differs from Llama and what that takes here:

- Fused projections: one `qkv_proj` (queries, keys and values stacked on the output axis) and
  one `gate_up_proj` (gate and up halves). Nothing structural changes: a skipped attention
  replaces all of `self_attn` (fused projection included) and a skipped MLP all of `mlp`, with a
  zero output (`resid_attn_dropout` / `resid_mlp_dropout` are identities at inference), so the
  residual passes the layer's input on as for Llama. The int8 twins quantize weights per output
  channel, i.e. per row of the fused weight, and activations per token (or per tensor, static)
  on the input the three projections share, so the fused twin computes exactly what separate
  q/k/v (gate/up) twins would (bit for bit, tests/adapters/test_qwen3_phi3.py). Only per-tensor
  weight scales (`build_twins(per_channel=False)`, which no pipeline uses) would differ: one
  scale across the fused parts. The row-count linear kernels take any shape.
- Sliding window on every layer when the config sets `sliding_window` (Phi-3-mini-4k: 2047 of
  4,096 positions; the 128k and 3.5/4 models set one longer than their context). transformers
  then builds sliding cache layers for every layer and one sliding mask
  (`create_sliding_window_causal_mask`); `ModelAdapter.layer_types` derives the same, so
  `new_cache` slides every layer and `tree_attention_mask` returns one sliding-window tree mask.
- LongRoPE (the 128k-context checkpoints): the rotary frequencies switch from the short to the
  long factors once a forward's largest position reaches `original_max_position_embeddings`
  (4,096), and transformers' `generate` then recomputes the whole cache. A cache that keeps
  the keys computed before the switch would decode differently from then on, and a token tree
  straddling the switch would give its nodes other frequencies than plain decoding, so
  `context_length` stops at `original_max_position_embeddings` for these models.
"""

from __future__ import annotations

from cas_spec.core.adapter import ModelAdapter


class Phi3Adapter(ModelAdapter):
    name = "phi3"
    model_types = ("phi3",)

    @property
    def context_length(self) -> int:
        """`max_position_embeddings`, or `original_max_position_embeddings` under LongRoPE."""
        limit = super().context_length
        rope = getattr(self.config, "rope_parameters", None) or {}
        if rope.get("rope_type") == "longrope":
            original = rope.get("original_max_position_embeddings") or getattr(
                self.config, "original_max_position_embeddings", None
            )
            if original:
                limit = min(limit, int(original))
        return limit
