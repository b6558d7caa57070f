"""Adapter resolution: every Llama-family type the llama adapter claims, and a clear error for
an architecture no adapter supports."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from cas_spec.adapters import Gemma3Adapter, LlamaAdapter, resolve_adapter
from cas_spec.core.errors import UnsupportedModelError
from tests.helpers import tiny_gemma3, tiny_llama


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_llama_family_resolves_to_the_llama_adapter(family):
    model = tiny_llama(family=family)
    adapter = resolve_adapter(model)
    assert isinstance(adapter, LlamaAdapter)
    assert adapter.num_layers == 3 and adapter.lm_head is model.lm_head


def test_gemma3_resolves_to_the_gemma3_adapter():
    assert isinstance(resolve_adapter(tiny_gemma3()), Gemma3Adapter)


def test_unsupported_model_names_the_supported_types():
    model = SimpleNamespace(config=SimpleNamespace(model_type="gpt2"))
    with pytest.raises(UnsupportedModelError) as info:
        resolve_adapter(model)
    message = str(info.value)
    assert "gpt2" in message
    for model_type in ("gemma3_text", "llama", "mistral", "qwen2"):
        assert model_type in message
