"""Built-in draft strategies, registered through the same hook as third-party plugins."""

from cas_spec.core.hookspecs import hookimpl
from cas_spec.strategies.prompt_lookup import PromptLookup

__all__ = ["PromptLookup"]


@hookimpl
def register_strategies(registry):
    registry.add(PromptLookup)
