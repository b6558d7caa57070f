"""Model adapters, resolved from `config.model_type`; built-ins register through the plugin hook."""

from cas_spec.adapters.base import ModelAdapter
from cas_spec.adapters.gemma3 import Gemma3Adapter
from cas_spec.adapters.llama import LlamaAdapter
from cas_spec.core.hookspecs import hookimpl

__all__ = ["ModelAdapter", "LlamaAdapter", "Gemma3Adapter", "resolve_adapter"]


@hookimpl
def register_adapters(registry):
    registry.add(LlamaAdapter)
    registry.add(Gemma3Adapter)


def resolve_adapter(model, registry=None) -> ModelAdapter:
    """The adapter for `model`, or `UnsupportedModelError` naming the supported model types."""
    from cas_spec.core.errors import UnsupportedModelError
    from cas_spec.core.plugins import get_plugins

    registry = registry or get_plugins().adapters
    config = model.config
    for name in registry.names():
        cls = registry.get(name)
        if cls.supports(config):
            return cls(model)
    supported = sorted({t for n in registry.names() for t in registry.get(n).model_types})
    raise UnsupportedModelError(
        f"unsupported model type '{getattr(config, 'model_type', '?')}'; supported: {', '.join(supported)}"
    )
