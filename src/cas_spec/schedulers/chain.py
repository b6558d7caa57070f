"""`chain`: one level drafts up to `k` tokens below the root, verified in one target forward.

A level that proposes nothing makes the step a plain single-token step.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cas_spec.core.interfaces import Scheduler
from cas_spec.core.state import DecodingState
from cas_spec.core.tree import chain_tree
from cas_spec.core.types import TokenTree


class ChainOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    level: str | None = Field(None, description="Name of the level that drafts; default: the first level.")
    k: int = Field(8, ge=1, le=256, description="Most tokens drafted per step.")


class ChainScheduler(Scheduler):
    name = "chain"
    Options = ChainOptions

    @classmethod
    def check_levels(cls, options: ChainOptions, level_names: list[str]) -> list[str]:
        if not level_names:
            return ["levels: the chain scheduler needs one level to draft with"]
        if options.level is not None and options.level not in level_names:
            return [f"scheduler.options.level: no level named '{options.level}'; "
                    f"levels: {', '.join(level_names)}"]
        return []

    def __init__(self, options, levels):
        super().__init__(options, levels)
        wanted = self.options.level
        self.level = next(lv for lv in levels if wanted is None or lv.name == wanted)

    def build_tree(self, state: DecodingState) -> TokenTree:
        draft = self.level.draft(state, (), min(self.options.k, state.max_depth))
        return chain_tree(state.root_token, draft, self.level.name)
