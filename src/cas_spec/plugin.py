"""The stable plugin API: everything a third-party strategy, scheduler, verifier or adapter needs,
and nothing else. Plugins, the plugin tutorial, the example plugin and the testing kit import from
here; `cas_spec.core` is the implementation and may move.

    from cas_spec.plugin import DraftResult, DraftStrategy, hookimpl

    class MyStrategy(DraftStrategy):
        name = "my_strategy"
        def draft(self, state, prefix, max_tokens) -> DraftResult: ...

    @hookimpl
    def register_strategies(registry):
        registry.add(MyStrategy)

Register the module as an entry point of group `cas_spec` (see `docs/plugins/tutorial.md`; every
hook and method is in `docs/reference/hooks.md`). What a plugin receives:

- `DecodingState` in `draft`, `build_tree`, `start`, `observe`: the committed tokens, sampling
  settings and generator, the step's depth budget, the context length the KV cache holds, and the
  read-only `CostModel` (verification cost by n and context, each level's calibrated draft cost).
- `SetupContext` in `DraftStrategy.setup`: the tokenizer, the vocabulary size, and the `Target` for
  a strategy that declares `runs_target` (it drafts only inside `Target.draft_pass`).
- its validated `Options` (a pydantic model the class declares, `extra="forbid"`), as `self.options`.
"""

from cas_spec.core.adapter import ModelAdapter
from cas_spec.core.cost_model import CostModel, CostView, DraftCost
from cas_spec.core.errors import CasSpecError, ConfigError, InputError, UserError
from cas_spec.core.hookspecs import hookimpl
from cas_spec.core.interfaces import DraftStrategy, NoOptions, Scheduler, Verifier
from cas_spec.core.levels import Level
from cas_spec.core.plugins import Plugins, get_plugins
from cas_spec.core.registry import Registry
from cas_spec.core.state import DecodingState
from cas_spec.core.target import Target
from cas_spec.core.tree import TreeBuilder, chain_tree
from cas_spec.core.types import (
    EMPTY_DRAFT,
    Candidate,
    DraftResult,
    SamplingParams,
    SetupContext,
    StepTimings,
    TokenTree,
    Verdict,
)
from cas_spec.paths import cache_dir, write_text_atomically

__all__ = [
    "EMPTY_DRAFT",
    "Candidate",
    "CasSpecError",
    "ConfigError",
    "CostModel",
    "CostView",
    "DecodingState",
    "DraftCost",
    "DraftResult",
    "DraftStrategy",
    "InputError",
    "Level",
    "ModelAdapter",
    "NoOptions",
    "Plugins",
    "Registry",
    "SamplingParams",
    "Scheduler",
    "SetupContext",
    "StepTimings",
    "Target",
    "TokenTree",
    "TreeBuilder",
    "UserError",
    "Verdict",
    "Verifier",
    "cache_dir",
    "chain_tree",
    "get_plugins",
    "hookimpl",
    "write_text_atomically",
]
