"""Built-in draft strategies, registered through the same hook as third-party plugins."""

from cas_spec.core.hookspecs import hookimpl
from cas_spec.core.interfaces import DraftStrategy
from cas_spec.core.registry import Registry
from cas_spec.strategies.early_exit import EarlyExit
from cas_spec.strategies.layer_sparsity import LayerSparsity
from cas_spec.strategies.max_gram import MaxGram
from cas_spec.strategies.prompt_lookup import PromptLookup
from cas_spec.strategies.quanto_activation import QuantoActivation

__all__ = ["EarlyExit", "LayerSparsity", "MaxGram", "PromptLookup", "QuantoActivation"]


@hookimpl
def register_strategies(registry: Registry[DraftStrategy]) -> None:
    registry.add(PromptLookup)
    registry.add(MaxGram)
    registry.add(LayerSparsity)
    registry.add(EarlyExit)
    registry.add(QuantoActivation)
