"""Shared fixtures: tiny random models, the stories260K fixture, SmolLM2, hypothesis profiles."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Calibration tables measured by the tests go to a throw-away cache; models stay in the real one.
_REAL_CACHE = Path(os.environ.get("CAS_SPEC_CACHE") or Path.home() / ".cache" / "cas-spec")
_TEST_CACHE = Path(tempfile.mkdtemp(prefix="cas-spec-test-cache-"))
(_REAL_CACHE / "models").mkdir(parents=True, exist_ok=True)
(_TEST_CACHE / "models").symlink_to(_REAL_CACHE / "models", target_is_directory=True)
os.environ["CAS_SPEC_CACHE"] = str(_TEST_CACHE)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(1)

settings.register_profile("dev", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

FIXTURES = Path(__file__).parent / "fixtures"
STORIES = FIXTURES / "stories260K"


def tiny_llama(seed: int = 0, *, vocab: int = 96, hidden: int = 32, layers: int = 3, heads: int = 4,
               kv_heads: int = 2, intermediate: int = 48, max_positions: int = 256, family: str = "llama",
               attn: str = "sdpa"):
    """A random Llama-family model (llama, qwen2, mistral) small enough to build in milliseconds."""
    import transformers

    config_cls, model_cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[family]
    config = config_cls(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                        max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2,
                        pad_token_id=0, attn_implementation=attn)
    torch.manual_seed(seed)
    return model_cls(config).eval()


def tiny_gemma3(seed: int = 0, *, vocab: int = 96, hidden: int = 32, heads: int = 4, kv_heads: int = 1,
                head_dim: int = 16, intermediate: int = 48, window: int = 8,
                layer_types: tuple[str, ...] = ("sliding_attention", "sliding_attention", "full_attention",
                                                "sliding_attention"),
                max_positions: int = 512, attn: str = "sdpa"):
    """A random Gemma 3 text model with a small sliding window, so short sequences cross it."""
    import transformers

    config = transformers.Gemma3TextConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=len(layer_types), num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=window, layer_types=list(layer_types),
        max_position_embeddings=max_positions, bos_token_id=2, eos_token_id=1, pad_token_id=0,
        attn_implementation=attn)
    torch.manual_seed(seed)
    model = transformers.Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # random RMSNorm weights (stock init is 0 = identity) make layers differ more
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, 0.3)
    return model


class IdTokenizer:
    """A minimal tokenizer for tiny random models: text is a space-separated list of ids."""

    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [int(t) for t in text.split()]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids)


@pytest.fixture(scope="session")
def stories():
    """(model, tokenizer) of the stories260K fixture (MIT, llama2.c)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(STORIES), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(STORIES))


@pytest.fixture(scope="session")
def gemma3():
    """(model, tokenizer) of Gemma 3 270M (Gemma Terms of Use), fetched and converted on first use."""
    from cas_spec.core.models import load_model

    return load_model("gemma3-270m", "cpu", "float32")


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of SmolLM2-135M-Instruct, fetched and converted on first use."""
    from cas_spec.core.models import load_model

    return load_model("smollm2-135m", "cpu", "float32")
