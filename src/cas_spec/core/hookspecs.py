"""Plugin hooks (pluggy, project name `cas_spec`). Each receives a registry with `add(cls)`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from cas_spec.core.adapter import ModelAdapter
    from cas_spec.core.interfaces import DraftStrategy, Scheduler, Verifier
    from cas_spec.core.registry import Registry

hookspec = pluggy.HookspecMarker("cas_spec")
hookimpl = pluggy.HookimplMarker("cas_spec")


@hookspec
def register_strategies(registry: Registry[DraftStrategy]) -> None:
    """Add `DraftStrategy` classes: `registry.add(MyStrategy)`."""


@hookspec
def register_schedulers(registry: Registry[Scheduler]) -> None:
    """Add `Scheduler` classes: `registry.add(MyScheduler)`."""


@hookspec
def register_verifiers(registry: Registry[Verifier]) -> None:
    """Add `Verifier` classes: `registry.add(MyVerifier)`."""


@hookspec
def register_adapters(registry: Registry[ModelAdapter]) -> None:
    """Add `ModelAdapter` classes: `registry.add(MyAdapter)`."""
