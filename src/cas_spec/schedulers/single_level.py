"""`SingleLevelScheduler`: the base of schedulers that draft with one level, chosen by name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, cast

from pydantic import BaseModel

from cas_spec.core.interfaces import Scheduler

if TYPE_CHECKING:
    from cas_spec.core.levels import Level


class LevelOption(Protocol):
    """What the `Options` of a single-level scheduler have in common."""

    level: str | None


class SingleLevelScheduler(Scheduler):
    """Drafts with the level named by the `level` option (default: the pipeline's first level)."""

    @classmethod
    def check_levels(cls, options: BaseModel, level_names: list[str]) -> list[str]:
        if not level_names:
            return [f"levels: the {cls.name} scheduler needs one level to draft with"]
        wanted = cast(LevelOption, options).level
        if wanted is not None and wanted not in level_names:
            return [f"scheduler.options.level: no level named '{wanted}'; levels: {', '.join(level_names)}"]
        return []

    def __init__(self, options: BaseModel | None, levels: list[Level]):
        super().__init__(options, levels)
        wanted = cast(LevelOption, self.options).level
        self.level = next(lv for lv in levels if wanted is None or lv.name == wanted)
