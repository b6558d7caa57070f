"""Errors. `UserError` and its subclasses are mistakes of the caller (bad input, bad config,
unknown plugin); the CLI turns them into a one-line message and exit status 2."""

from __future__ import annotations


class CasSpecError(Exception):
    """Base class of every error raised on purpose by cas-spec."""


class UserError(CasSpecError):
    """A mistake of the caller: bad input, bad configuration, unknown name."""


class ConfigError(UserError):
    """A pipeline that does not validate. `problems` lists every problem as `location: message`."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        head = f"invalid pipeline{f' {source}' if source else ''}"
        if len(self.problems) == 1:
            super().__init__(f"{head}: {self.problems[0]}")
        else:
            super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in self.problems))


class UnknownPluginError(UserError):
    """A strategy, scheduler, verifier or adapter name that no plugin registered."""


class ModelNotFoundError(UserError):
    """An unknown model alias or a path that does not exist."""


class UnsupportedModelError(UserError):
    """A model architecture that no adapter supports."""


class InputError(UserError):
    """A bad generation request: empty prompt, max_new_tokens < 1, prompt too long."""
