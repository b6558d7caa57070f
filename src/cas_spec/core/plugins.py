"""The plugin manager facade.

Built-in plugins are modules registered through the same hooks as third-party ones. Third-party
plugins are entry points of group `cas_spec`. `CAS_SPEC_PLUGINS=name,name` limits which entry
points load (empty = none). Under pytest, entry points load only when `CAS_SPEC_LOAD_ENTRYPOINTS=1`,
so an installed plugin cannot change the test suite's behaviour. A plugin that fails to import or
whose hook raises is recorded as broken (name and error); every other plugin keeps working.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pluggy

from cas_spec.core import hookspecs
from cas_spec.core.adapter import ModelAdapter
from cas_spec.core.interfaces import DraftStrategy, Scheduler, Verifier
from cas_spec.core.registry import Registry

ENTRY_POINT_GROUP = "cas_spec"
ALLOW_LIST_ENV = "CAS_SPEC_PLUGINS"
BUILTIN_MODULES = (
    "cas_spec.strategies",
    "cas_spec.schedulers",
    "cas_spec.verifiers",
    "cas_spec.adapters",
)
HOOKS = {
    "strategy": "register_strategies",
    "scheduler": "register_schedulers",
    "verifier": "register_verifiers",
    "adapter": "register_adapters",
}


@dataclass
class Plugins:
    """Everything the plugins registered, plus the plugins that failed."""

    strategies: Registry[DraftStrategy]
    schedulers: Registry[Scheduler]
    verifiers: Registry[Verifier]
    adapters: Registry[ModelAdapter]
    loaded: list[str] = field(default_factory=list)  # plugin names, built-ins first
    broken: dict[str, str] = field(default_factory=dict)  # plugin name -> error

    def registry(self, kind: str) -> Registry[Any]:
        return {
            "strategy": self.strategies,
            "scheduler": self.schedulers,
            "verifier": self.verifiers,
            "adapter": self.adapters,
        }[kind]


def _registries() -> dict[str, Registry[Any]]:

    return {
        "strategy": Registry("strategy", DraftStrategy),
        "scheduler": Registry("scheduler", Scheduler),
        "verifier": Registry("verifier", Verifier),
        "adapter": Registry("adapter", ModelAdapter),
    }


def _allowed(name: str) -> bool:
    allow = os.environ.get(ALLOW_LIST_ENV)
    if allow is None:
        return True
    return name in {n.strip() for n in allow.split(",") if n.strip()}


def _entry_points_enabled() -> bool:
    if "pytest" in sys.modules:
        return os.environ.get("CAS_SPEC_LOAD_ENTRYPOINTS") == "1"
    return True


def build_plugins(
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None, extra: Iterable[object] = ()
) -> Plugins:
    """Build a fresh plugin set: built-ins, then entry points (or the given ones), then `extra`."""
    pm = pluggy.PluginManager("cas_spec")
    pm.add_hookspecs(hookspecs)
    broken: dict[str, str] = {}
    for module_name in BUILTIN_MODULES:
        pm.register(importlib.import_module(module_name), name=module_name)
    if entry_points is None:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if _entry_points_enabled() else ()
    for ep in entry_points:
        if not _allowed(ep.name) or pm.get_plugin(ep.name) is not None:
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not break the others
            broken[ep.name] = f"{type(exc).__name__}: {exc}"
    for i, obj in enumerate(extra):
        pm.register(obj, name=getattr(obj, "__name__", f"extra-{i}"))
    for hook_name, caller in list(vars(pm.hook).items()):  # an unknown (misspelt) hook breaks its plugin only
        if hook_name.startswith("_") or not isinstance(caller, pluggy.HookCaller) or caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if not impl.optionalhook:
                broken.setdefault(impl.plugin_name, f"PluginValidationError: unknown hook '{hook_name}'")
    for name in broken:
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)
    pm.check_pending()

    registries = _registries()
    for kind, hook_name in HOOKS.items():
        registry = registries[kind]
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin_name in broken:
                continue
            registry.current_owner = impl.plugin_name
            try:
                impl.function(registry=registry)
            except Exception as exc:
                broken[impl.plugin_name] = f"{type(exc).__name__}: {exc}"
                for each in registries.values():  # a broken plugin registers nothing at all
                    each.remove_owner(impl.plugin_name)
        registry.current_owner = "?"
    loaded = [name for name, _ in pm.list_name_plugin() if name not in broken]
    return Plugins(
        registries["strategy"],
        registries["scheduler"],
        registries["verifier"],
        registries["adapter"],
        loaded=loaded,
        broken=broken,
    )


@cache
def get_plugins() -> Plugins:
    """The process-wide plugin set (built once)."""
    return build_plugins()
