"""Plugin hooks (pluggy, project name `cas_spec`). Each receives a registry with `add(cls)`."""

import pluggy

hookspec = pluggy.HookspecMarker("cas_spec")
hookimpl = pluggy.HookimplMarker("cas_spec")


@hookspec
def register_strategies(registry):
    """Add `DraftStrategy` classes: `registry.add(MyStrategy)`."""


@hookspec
def register_schedulers(registry):
    """Add `Scheduler` classes: `registry.add(MyScheduler)`."""


@hookspec
def register_verifiers(registry):
    """Add `Verifier` classes: `registry.add(MyVerifier)`."""


@hookspec
def register_adapters(registry):
    """Add `ModelAdapter` classes: `registry.add(MyAdapter)`."""
