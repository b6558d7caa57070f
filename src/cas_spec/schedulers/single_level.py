"""`SingleLevelScheduler`: the base of schedulers that draft with one level, chosen by name."""

from __future__ import annotations

from cas_spec.core.interfaces import Scheduler


class SingleLevelScheduler(Scheduler):
    """Drafts with the level named by the `level` option (default: the pipeline's first level)."""

    @classmethod
    def check_levels(cls, options, level_names: list[str]) -> list[str]:
        if not level_names:
            return [f"levels: the {cls.name} scheduler needs one level to draft with"]
        if options.level is not None and options.level not in level_names:
            return [f"scheduler.options.level: no level named '{options.level}'; levels: {', '.join(level_names)}"]
        return []

    def __init__(self, options, levels):
        super().__init__(options, levels)
        wanted = self.options.level
        self.level = next(lv for lv in levels if wanted is None or lv.name == wanted)
