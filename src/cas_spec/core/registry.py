"""Registries of plugin classes, keyed by each class's `name` attribute."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar, cast

from cas_spec.core.errors import UnknownPluginError

P_co = TypeVar("P_co", covariant=True)  # the registered classes' common base (their instances' type)
T = TypeVar("T", bound=type)


class Registry(Generic[P_co]):
    """Name → class for one kind of plugin (strategy, scheduler, verifier, adapter)."""

    def __init__(self, kind: str, base: type) -> None:
        self.kind = kind
        self.base = base
        self._classes: dict[str, type[P_co]] = {}
        self._owners: dict[str, str] = {}
        self.current_owner = "?"  # set by the plugin manager while a plugin registers

    def add(self, cls: T) -> T:
        """Register `cls` under `cls.name`. Usable as a decorator."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{cls!r} is not a subclass of {self.base.__name__}")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__name__} must declare a non-empty string attribute 'name'")
        if name in self._classes and self._classes[name] is not cls:
            raise ValueError(
                f"{self.kind} '{name}' registered twice: by {self._owners[name]} and by {self.current_owner}"
            )
        self._classes[name] = cast("type[P_co]", cls)  # checked above: a subclass of `base`
        self._owners[name] = self.current_owner
        return cls

    def remove_owner(self, owner: str) -> None:
        """Forget every class registered by plugin `owner` (a plugin found broken midway)."""
        for name in [n for n, o in self._owners.items() if o == owner]:
            del self._classes[name], self._owners[name]

    def get(self, name: str) -> type[P_co]:
        try:
            return self._classes[name]
        except KeyError:
            raise UnknownPluginError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        available = ", ".join(sorted(self._classes)) or "none"
        return f"unknown {self.kind} '{name}'; available: {available}"

    def owner(self, name: str) -> str:
        return self._owners[name]

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._classes)
