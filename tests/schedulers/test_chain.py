"""The chain scheduler's cost model, with fake levels, a fake cost table and fake timings (no model)."""

from __future__ import annotations

import pytest

from cas_spec.core.cost_model import CostView
from cas_spec.core.interfaces import DraftStrategy
from cas_spec.core.levels import Level
from cas_spec.core.state import DecodingState
from cas_spec.core.types import DraftResult, SamplingParams, StepTimings, Verdict
from cas_spec.schedulers.chain import ChainScheduler
from cas_spec.schedulers.estimators.acceptance import AcceptanceEstimate, best_draft_length


class Flat:
    """A cost table where a forward over n ≤ 16 tokens costs as much as one."""

    def cost(self, n: int, context: int) -> float:
        return 1.0


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


CLOCK = Clock()


class Echo(DraftStrategy):
    """Drafts counting tokens, each costing `seconds_per_token` on the fake clock."""

    name = "echo"
    seconds_per_token = 0.0

    def draft(self, state, prefix, max_tokens):
        CLOCK.now += self.seconds_per_token * max_tokens
        return DraftResult(tokens=tuple(range(10, 10 + max_tokens)))


@pytest.fixture(autouse=True)
def fake_clock(monkeypatch):
    from cas_spec.core import levels

    monkeypatch.setattr(levels.time, "perf_counter", CLOCK)


def make(k: int = 6):
    level = Level("echo", Echo())
    scheduler = ChainScheduler(ChainScheduler.Options(k=k, probe_interval=4), [level])
    state = DecodingState(
        tokens=[1] * 51,
        prompt_length=51,
        sampling=SamplingParams(),
        generator=None,
        costs=CostView(Flat()),
        context_length=50,
        max_depth=k,
    )
    scheduler.start(state)
    return scheduler, level, state


def step(scheduler, state, *, accepted: int, draft_seconds_per_token: float, forward_seconds: float = 0.1):
    scheduler.level.strategy.seconds_per_token = draft_seconds_per_token
    before = scheduler.level.seconds
    tree = scheduler.build_tree(state)
    drafted = tree.size - 1
    accepted = min(accepted, drafted)
    verdict = Verdict(accepted_nodes=tuple(range(1, accepted + 1)), accepted_tokens=(0,) * accepted, bonus_token=0)
    timings = StepTimings(draft=scheduler.level.seconds - before, verify=forward_seconds, total=0.0)
    scheduler.observe(tree, verdict, timings)
    return drafted


def test_a_free_level_drafts_up_to_k():
    scheduler, _, state = make()
    assert [step(scheduler, state, accepted=6, draft_seconds_per_token=0.0) for _ in range(5)] == [6] * 5


def test_a_costly_level_is_asked_only_for_what_pays_before_it_drafts():
    scheduler, level, state = make()
    # First step: draft cost unknown (free), full draft; half the draft accepted.
    assert step(scheduler, state, accepted=3, draft_seconds_per_token=0.05) == 6
    assert scheduler.latency.draft("echo", 1, 1, 50) == pytest.approx(0.5)  # per token, in forwards
    asked = []
    for _ in range(3):
        before = level.proposed
        step(scheduler, state, accepted=2, draft_seconds_per_token=0.05)
        asked.append(level.proposed - before)
    best = best_draft_length(scheduler.estimate.alpha, 6, Flat().cost, 50, 0.5)
    assert 0 < asked[-1] < 6 and asked[-1] <= best + 1


def test_a_level_that_costs_more_than_it_brings_is_switched_off_and_probed():
    scheduler, _level, state = make()
    step(scheduler, state, accepted=0, draft_seconds_per_token=0.3)  # c = 3 forwards per token
    drafted = [step(scheduler, state, accepted=0, draft_seconds_per_token=0.3) for _ in range(8)]
    assert drafted.count(0) >= 6  # plain steps ...
    assert 6 in drafted  # ... with a full probe every probe_interval steps


def test_the_acceptance_estimate_moves_by_the_decay_weights():
    """α ← λ·α + (1 − λ)·α_step with α_step = accepted / (accepted + 1 failure): from 0.6 with
    λ = 0.7, a chain of 4 with 3 accepted gives α_step = 3/4 and α = 0.7·0.6 + 0.3·0.75 = 0.645;
    a chain accepted in full has no failure, α_step = 1."""
    estimate = AcceptanceEstimate(alpha=0.6, decay=0.7)
    estimate.update(drafted=4, accepted=3)
    assert estimate.alpha == pytest.approx(0.645)
    estimate.update(drafted=2, accepted=2)
    assert estimate.alpha == pytest.approx(0.7 * 0.645 + 0.3)
    estimate.update(drafted=0, accepted=0)  # nothing drafted: nothing learned
    assert estimate.alpha == pytest.approx(0.7 * 0.645 + 0.3) and estimate.steps == 2
