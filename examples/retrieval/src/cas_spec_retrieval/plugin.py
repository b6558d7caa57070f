"""The plugin module named by the `cas_spec` entry point: registers the `retrieval` strategy."""

from cas_spec.plugin import hookimpl
from cas_spec_retrieval.strategy import Retrieval


@hookimpl
def register_strategies(registry):
    registry.add(Retrieval)
