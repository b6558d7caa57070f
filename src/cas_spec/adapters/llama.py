"""Llama and the architectures transformers builds the same way (Qwen2, Mistral).

SmolLM2 and the stories260K test model are Llama models.
"""

from __future__ import annotations

from cas_spec.core.adapter import ModelAdapter


class LlamaAdapter(ModelAdapter):
    name = "llama"
    model_types = ("llama", "qwen2", "mistral")
