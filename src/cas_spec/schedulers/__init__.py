"""Built-in schedulers, registered through the same hook as third-party plugins."""

from cas_spec.core.hookspecs import hookimpl
from cas_spec.core.interfaces import Scheduler
from cas_spec.core.registry import Registry
from cas_spec.schedulers.autoregressive import AutoregressiveScheduler
from cas_spec.schedulers.chain import ChainScheduler
from cas_spec.schedulers.cs_drafting import CSDraftingScheduler
from cas_spec.schedulers.dytc import DytcScheduler
from cas_spec.schedulers.lookup_tree import LookupTreeScheduler
from cas_spec.schedulers.static_tree import StaticTreeScheduler

__all__ = [
    "AutoregressiveScheduler",
    "CSDraftingScheduler",
    "ChainScheduler",
    "DytcScheduler",
    "LookupTreeScheduler",
    "StaticTreeScheduler",
]


@hookimpl
def register_schedulers(registry: Registry[Scheduler]) -> None:
    registry.add(AutoregressiveScheduler)
    registry.add(ChainScheduler)
    registry.add(CSDraftingScheduler)
    registry.add(DytcScheduler)
    registry.add(StaticTreeScheduler)
    registry.add(LookupTreeScheduler)
