"""Built-in schedulers, registered through the same hook as third-party plugins."""

from cas_spec.core.hookspecs import hookimpl
from cas_spec.schedulers.autoregressive import AutoregressiveScheduler
from cas_spec.schedulers.chain import ChainScheduler

__all__ = ["AutoregressiveScheduler", "ChainScheduler"]


@hookimpl
def register_schedulers(registry):
    registry.add(AutoregressiveScheduler)
    registry.add(ChainScheduler)
