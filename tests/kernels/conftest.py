"""Fixtures for the kernel tests: tiny random Llama models, a stock reference, oneDNN state."""

from __future__ import annotations

import pytest
import torch

from cas_spec.kernels import linear as linear_mod
from tests.conftest import tiny_llama


def tiny(seed: int = 0, **kwargs):
    """hidden 64, vocab 256, GQA (4 heads over 2 KV heads)."""
    options = dict(vocab=256, hidden=64, intermediate=128, layers=3, heads=4, kv_heads=2)
    options.update(kwargs)
    return tiny_llama(seed, **options)


def tied_tiny(seed: int = 0):
    """A tiny Llama whose LM head is tied to the embeddings, like SmolLM2's."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


@pytest.fixture
def model():
    return tiny()


@pytest.fixture(autouse=True)
def _keep_onednn_status():
    """Tests may mark oneDNN as failed; give the next test the real status back."""
    saved = dict(linear_mod._status)
    yield
    linear_mod._status.clear()
    linear_mod._status.update(saved)


def cached_logits(model, ids: torch.Tensor, chunks: list[int]) -> list[torch.Tensor]:
    """Logits of each chunk of `ids`, fed one chunk after the other through a `DynamicCache`."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    out, start = [], 0
    with torch.inference_mode():
        for size in chunks:
            out.append(model(input_ids=ids[:, start : start + size], past_key_values=cache, use_cache=True).logits)
            start += size
    return out
