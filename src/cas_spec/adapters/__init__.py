"""The built-in model adapters (the Llama family with Qwen3, Phi-3, Gemma 3), registered through
the same hook as third-party ones. The `ModelAdapter` base class is `cas_spec.core.adapter.ModelAdapter`."""

from __future__ import annotations

from torch import nn

from cas_spec.adapters.gemma3 import Gemma3Adapter
from cas_spec.adapters.llama import LlamaAdapter
from cas_spec.adapters.phi3 import Phi3Adapter
from cas_spec.core import adapter
from cas_spec.core.adapter import ModelAdapter
from cas_spec.core.hookspecs import hookimpl
from cas_spec.core.plugins import get_plugins
from cas_spec.core.registry import Registry

__all__ = ["Gemma3Adapter", "LlamaAdapter", "ModelAdapter", "Phi3Adapter", "resolve_adapter"]


@hookimpl
def register_adapters(registry: Registry[ModelAdapter]) -> None:
    registry.add(LlamaAdapter)
    registry.add(Phi3Adapter)
    registry.add(Gemma3Adapter)


def resolve_adapter(model: nn.Module, registry: Registry[ModelAdapter] | None = None) -> ModelAdapter:
    """The adapter for `model` among `registry`'s (default: every registered plugin's), or
    `UnsupportedModelError` naming the supported model types."""
    return adapter.resolve_adapter(model, registry if registry is not None else get_plugins().adapters)
