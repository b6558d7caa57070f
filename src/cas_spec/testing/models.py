"""Tiny random models of every architecture the adapters support, and a tokenizer for them.

Nothing here needs pytest or hypothesis: `from cas_spec.testing.models import tiny_llama` works
with the core install. Every builder seeds torch before initialising, so a seed names one model.
The models are float32 and small enough to build in milliseconds and to decode tens of tokens in
a few milliseconds on one CPU thread, which is what makes token-for-token checks cheap.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

#: The architectures a contract checks by default: the Llama family, Qwen3, Phi-3 and Gemma 3.
ARCHITECTURES = ("llama", "qwen2", "mistral", "qwen3", "phi3", "gemma3")
GEMMA3_LAYER_TYPES = ("sliding_attention", "sliding_attention", "full_attention", "sliding_attention")


SPECIAL_TOKENS: dict[str, Any] = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}  # every tiny model's


def _shape(vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int) -> dict[str, Any]:
    """The config fields of a tiny decoder's size, spelled as every transformers config spells them."""
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
    }


def _randomize_norms(model: torch.nn.Module, suffixes: tuple[str, ...], mean: float) -> None:
    """Draw the weights of the norms named `*suffix` from N(mean, 0.3), in parameter order."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(suffixes):
                param.normal_(mean, 0.3)


def tiny_llama(
    seed: int = 0,
    *,
    vocab: int = 96,
    hidden: int = 32,
    layers: int = 3,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 48,
    max_positions: int = 256,
    family: str = "llama",
    attn: str = "sdpa",
):
    """A random Llama-family model (`family`: llama, qwen2 or mistral); eos 2, bos 1, pad 0."""
    import transformers

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[family]
    config = config_cls(
        **_shape(vocab, hidden, intermediate, layers, heads, kv_heads),
        max_position_embeddings=max_positions,
        **SPECIAL_TOKENS,
        attn_implementation=attn,
    )
    torch.manual_seed(seed)
    return model_cls(config).eval()


def tiny_gemma3(
    seed: int = 0,
    *,
    vocab: int = 96,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 1,
    head_dim: int = 16,
    intermediate: int = 48,
    window: int = 8,
    layer_types: tuple[str, ...] = GEMMA3_LAYER_TYPES,
    max_positions: int = 512,
    attn: str = "sdpa",
):
    """A random Gemma 3 text model with a small sliding window (8), so short sequences cross it;
    eos 1, bos 2, pad 0. Layers 0 and 2 size the sliding and full masks (their attention always runs)."""
    import transformers

    config = transformers.Gemma3TextConfig(  # type: ignore[call-arg]  # attn_implementation: a PreTrainedConfig kwarg
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=len(layer_types),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        sliding_window=window,
        layer_types=list(layer_types),
        max_position_embeddings=max_positions,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
        attn_implementation=attn,
    )
    torch.manual_seed(seed)
    model = transformers.Gemma3ForCausalLM(config).eval()
    _randomize_norms(model, ("norm.weight",), mean=0.0)  # stock init is 0 = identity: layers differ more
    return model


def tiny_qwen3(
    seed: int = 0,
    *,
    vocab: int = 96,
    hidden: int = 32,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 8,
    intermediate: int = 48,
    window: int | None = None,
    full_layers: int = 2,
    max_positions: int = 256,
    attn: str = "sdpa",
):
    """A random Qwen3 (RMS norms on each query and key head); eos 2, bos 1, pad 0. Released Qwen3
    models attend over everything (no `window`, the default); with `window`, the layers from
    `full_layers` on slide (Qwen3's `use_sliding_window` and `max_window_layers`), so layer 0 sizes
    the full mask and layer `full_layers` the sliding one. The q/k norm weights are random (stock
    init is 1), so a forward that bypassed them would differ."""
    import transformers

    config = transformers.Qwen3Config(  # type: ignore[call-arg]  # attn_implementation: a PreTrainedConfig kwarg
        **_shape(vocab, hidden, intermediate, layers, heads, kv_heads),
        head_dim=head_dim,
        max_position_embeddings=max_positions,
        use_sliding_window=window is not None,
        sliding_window=window,
        max_window_layers=full_layers,
        **SPECIAL_TOKENS,
        attn_implementation=attn,
    )
    torch.manual_seed(seed)
    model = transformers.Qwen3ForCausalLM(config).eval()
    _randomize_norms(model, ("q_norm.weight", "k_norm.weight"), mean=1.0)
    return model


def tiny_phi3(
    seed: int = 0,
    *,
    vocab: int = 96,
    hidden: int = 32,
    layers: int = 4,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 48,
    window: int | None = 10,
    max_positions: int = 256,
    attn: str = "sdpa",
):
    """A random Phi-3 (fused `qkv_proj` and `gate_up_proj`); eos 2, bos 1, pad 0. Like
    Phi-3-mini-4k (`sliding_window` 2047 of 4,096 positions) every layer attends through a
    sliding window, here of 10 tokens, so short prompts cross it (`window=None`: none)."""
    import transformers

    config = transformers.Phi3Config(  # type: ignore[call-arg]  # attn_implementation: a PreTrainedConfig kwarg
        **_shape(vocab, hidden, intermediate, layers, heads, kv_heads),
        max_position_embeddings=max_positions,
        original_max_position_embeddings=max_positions,
        sliding_window=window,
        **SPECIAL_TOKENS,
        attn_implementation=attn,
    )
    torch.manual_seed(seed)
    return transformers.Phi3ForCausalLM(config).eval()


def tiny_model(architecture: str, seed: int = 0):
    """The contracts' model of `architecture` (one of `ARCHITECTURES`): 4 decoder layers and a
    96-token vocabulary each, so one set of level options (say `exit_layer: 1` or
    `skip: ["1.attention", "2.mlp"]`) fits all of them."""
    if architecture == "gemma3":
        return tiny_gemma3(seed)
    if architecture == "qwen3":
        return tiny_qwen3(seed)
    if architecture == "phi3":
        return tiny_phi3(seed)
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{architecture}'; choose from {', '.join(ARCHITECTURES)}")
    return tiny_llama(seed, family=architecture, layers=4)


def peaked_llama(seed: int = 0, scale: float = 6.0, vocab: int = 12):
    """A 4-layer tiny Llama with a 12-token vocabulary and its LM head scaled up: a peaky target,
    so drafts are both accepted and rejected often and an exact law over two or three tokens has
    few cells (eos 2)."""
    model = tiny_llama(seed, vocab=vocab, hidden=16, layers=4, heads=2, kv_heads=1, intermediate=16)
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model


def sampling_llama(seed: int = 3, scale: float = 32.0, vocab: int = 10):
    """The contracts' sampling target: `peaked_llama` with a 10-token vocabulary and a steeper
    head. After (5, 7, 5, 7, 5) its most likely token has about 0.4, a first-layer exit drafts
    from a q (top 0.6) about 0.2 away in total variation, end-of-sequence (2) is rare, and three
    quarters of the 3-token law lies in 15 cells, so seeded tests over a few hundred runs detect a
    wrong draft law. (10, not fewer: self-speculative drafters report 8 runners-up per token.)"""
    return peaked_llama(seed, scale=scale, vocab=vocab)


def sampling_model(architecture: str = "llama", seed: int = 3, scale: float = 32.0, vocab: int = 10):
    """The sampling target of `architecture` (one of `ARCHITECTURES`): 4 layers, hidden 16, two
    heads over one KV head, a 10-token vocabulary and the LM head scaled by 32. "llama" is
    `sampling_llama`; Phi-3 and Gemma 3 slide over a window of 4, so the sampling prompt
    (5, 7, 5, 7, 5) crosses it. After that prompt the Qwen3 model's top token has about 0.47 and
    Phi-3's about 0.32, a first-layer exit drafts from a q about 0.2 away in total variation, and
    end-of-sequence is rare, as for the Llama."""
    if architecture == "llama":
        return sampling_llama(seed, scale, vocab)
    if architecture in ("qwen2", "mistral"):
        model = tiny_llama(
            seed, vocab=vocab, hidden=16, layers=4, heads=2, kv_heads=1, intermediate=16, family=architecture
        )
    elif architecture == "qwen3":
        model = tiny_qwen3(seed, vocab=vocab, hidden=16, heads=2, kv_heads=1, head_dim=8, intermediate=16)
    elif architecture == "phi3":
        model = tiny_phi3(seed, vocab=vocab, hidden=16, heads=2, kv_heads=1, intermediate=16, window=4)
    elif architecture == "gemma3":
        model = tiny_gemma3(seed, vocab=vocab, hidden=16, heads=2, kv_heads=1, head_dim=8, intermediate=16, window=4)
    else:
        raise ValueError(f"unknown architecture '{architecture}'; choose from {', '.join(ARCHITECTURES)}")
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model


def repetitive_prompt(seed: int, vocab: int, length: int = 40) -> list[int]:
    """`length` random ids in [3, vocab) with a 7-token motif inserted in the middle and its first
    four tokens repeated at the end (`length` + 11 ids): lookup drafters find a match."""
    g = torch.Generator().manual_seed(seed)
    motif = torch.randint(3, vocab, (7,), generator=g).tolist()
    noise = torch.randint(3, vocab, (length,), generator=g).tolist()
    return noise[: length // 2] + motif + noise[length // 2 :] + motif[:4]


class IdTokenizer:
    """A minimal tokenizer for tiny random models: text is a space-separated list of ids."""

    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [int(t) for t in text.split()]}

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return " ".join(str(i) for i in ids)


__all__ = [
    "ARCHITECTURES",
    "IdTokenizer",
    "peaked_llama",
    "repetitive_prompt",
    "sampling_llama",
    "sampling_model",
    "tiny_gemma3",
    "tiny_llama",
    "tiny_model",
    "tiny_phi3",
    "tiny_qwen3",
]
