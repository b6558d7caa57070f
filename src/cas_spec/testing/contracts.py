"""Contract tests: subclass one in a test module and pytest runs every check on your plugin.

    class TestMyStrategy(StrategyContract):
        plugin_name = "retrieval"
        options = {"corpus": "..."}
        invalid_options = [{"max_tokens": 0}]

Each `test_*` method states what it checks; `docs/testing.md` explains why a wrong plugin fails
it. The checks run on tiny random models (`cas_spec.testing.models`), with calibration off.
Hooks to override: `prompts()`, `options_for(architecture)`, `model(architecture)`,
`sampling_model(architecture)`; attributes: see `PluginContract`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

from cas_spec.plugin import CostView, DraftResult
from cas_spec.testing import harness
from cas_spec.testing.clocks import frozen_clock
from cas_spec.testing.contract_base import AUTOREGRESSIVE, PluginContract

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

    from cas_spec.core.types import GenerationStats


class StrategyContract(PluginContract):
    """Contract of a drafting strategy, driven by `scheduler` (default: chain, k = 4, not adaptive)
    as the pipeline's only level, named `plugin_name`."""

    kind = "strategy"
    option_location = "levels.0.options"
    scheduler: ClassVar[dict[str, Any]] = {"kind": "chain", "options": {"k": 4, "adaptive": False}}

    def pipeline_config(self, architecture: str) -> dict[str, Any]:
        level = {"name": self.plugin_name, "kind": self.plugin_name, "options": self.options_for(architecture)}
        return {
            "scheduler": {**self.scheduler, "options": dict(self.scheduler.get("options", {}))},
            "levels": [level],
            "calibration": "off",
        }

    def drafted(self, stats: GenerationStats) -> int:
        return stats.levels[self.plugin_name].drafted

    def point_mass_levels(self) -> set[str]:
        cls = self.plugins().strategies.get(self.plugin_name)
        return {self.plugin_name} if cls.deterministic else set()

    def test_draft_results_are_well_formed(self, sampling_architecture: str) -> None:
        """Called by hand after a prefill, at temperature > 0: `draft` returns a `DraftResult` of
        at most `max_tokens` tokens in the vocabulary, each row of `draft_probs` a distribution
        giving its token q > 0; `review` returns None or [len(tokens) + 1, V] distributions."""
        pipe = self.pipeline(self.sampling_model(sampling_architecture), sampling_architecture, sampling=True)
        vocab: int = cast("PreTrainedConfig", pipe.model.config).vocab_size
        state = harness.prepared_state(pipe, list(self.sampling_prompt), pipe.sampling(seed=0))
        strategy = pipe.levels[0].strategy
        for prefix, max_tokens in (((), 4), ((), 1), ((int(self.sampling_prompt[-2]),), 3)):
            result = strategy.draft(state, prefix, max_tokens)
            assert isinstance(result, DraftResult), f"draft returned {type(result).__name__}, not DraftResult"
            assert len(result) <= max_tokens, f"draft returned {len(result)} tokens; {max_tokens} were asked for"
            assert all(0 <= t < vocab for t in result.tokens), f"tokens outside the vocabulary: {result.tokens}"
            if result.draft_probs is not None:
                q = result.draft_probs
                assert tuple(q.shape) == (len(result), vocab), f"draft_probs has shape {tuple(q.shape)}"
                assert float(q.min()) >= 0 and bool(((q.sum(-1) - 1).abs() < 1e-4).all()), "rows are not distributions"
                assert all(float(q[i, t]) > 0 for i, t in enumerate(result.tokens)), "a token has q = 0"
            reviewed = strategy.review(state, prefix, result.tokens) if strategy.can_review else None
            if reviewed is not None:
                assert tuple(reviewed.shape) == (len(result) + 1, vocab), f"review has shape {tuple(reviewed.shape)}"
                assert bool(((reviewed.sum(-1) - 1).abs() < 1e-4).all()), "review rows are not distributions"


class SchedulerContract(PluginContract):
    """Contract of a scheduler, over the levels `levels` (default: one prompt_lookup level)."""

    kind = "scheduler"
    option_location = "scheduler.options"
    levels: ClassVar[Sequence[dict[str, Any]]] = ({"name": "pld", "kind": "prompt_lookup"},)

    def levels_for(self, architecture: str) -> list[dict[str, Any]]:
        """The pipeline's levels on `architecture`'s tiny model (default: `levels`)."""
        return [dict(level) for level in self.levels]

    def pipeline_config(self, architecture: str) -> dict[str, Any]:
        return {
            "scheduler": {"kind": self.plugin_name, "options": self.options_for(architecture)},
            "levels": self.levels_for(architecture),
            "calibration": "off",
        }

    def test_sampled_law_equals_target_under_steep_costs_after_warming(self, sampling_architecture: str) -> None:
        """The sampled-law check again, where a scheduler that prunes or trims by what it drew
        would fail it: every node costs `steep_slope` of a forward to verify (so what does not
        pay must be left out), model levels are priced cheap enough to draft, and the pipeline
        first generates `warm_runs` times, so that what it learns online (acceptance,
        calibration of confidences) is in play when the law is checked. The clock is frozen
        (`clocks.frozen_clock`), so the given costs decide, whatever this machine's speed."""
        pipe, law, recorder = self._sampling_setup(sampling_architecture)
        pipe.costs = CostView(
            harness.SlopedCosts(self.steep_slope),
            {level.name: harness.PriorCost(0.0, 0.0 if level.strategy.deterministic else 0.1) for level in pipe.levels},
        )
        with frozen_clock(pipe):  # the costs above, not this machine's timings, drive the decisions
            for seed in range(self.warm_runs):
                pipe.generate(list(self.sampling_prompt), max_new_tokens=self.honesty_tokens, seed=10_000 + seed)
            recorder.clear()
            self._check_sampled_law(pipe, law, recorder)


__all__ = ["AUTOREGRESSIVE", "PluginContract", "SchedulerContract", "StrategyContract"]
