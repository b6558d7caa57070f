"""The latency model: draft costs fitted online, verification from the cost table."""

from __future__ import annotations

import pytest

from cas_spec.core.cost_model import UNCALIBRATED, CostView
from cas_spec.core.types import StepTimings
from cas_spec.schedulers.estimators.latency import UNMEASURED_TOKEN_COST, LatencyModel, LevelCost


def test_per_call_and_per_token_costs_are_recovered_from_mixed_steps():
    cost = LevelCost()
    for calls, tokens in [(1, 3), (2, 2), (1, 5), (3, 4), (1, 1), (2, 7)] * 3:
        cost.update(calls, tokens, 0.004 * calls + 0.03 * tokens, decay=0.95)
    assert cost.per_call == pytest.approx(0.004, rel=1e-3)
    assert cost.per_token == pytest.approx(0.03, rel=1e-3)


def test_collinear_steps_put_the_time_on_tokens_and_empty_calls_on_calls():
    cost = LevelCost()
    for _ in range(5):
        cost.update(1, 4, 0.12, decay=0.9)  # always one call of four tokens
    assert cost.per_call == 0.0 and cost.seconds(1, 4) == pytest.approx(0.12)
    lookup = LevelCost()
    lookup.update(3, 0, 0.0003, decay=0.9)  # calls that found nothing
    assert lookup.seconds(1, 0) == pytest.approx(0.0001)


class Table:
    def cost(self, n, context=0):
        return 1.0 + 0.25 * (n - 1)


class FakeLevel:
    def __init__(self, name):
        self.name, self.calls, self.proposed, self.seconds = name, 0, 0, 0.0


def test_draft_costs_are_in_units_of_a_one_token_target_forward():
    level = FakeLevel("int8")
    model = LatencyModel(CostView(Table()), [level], decay=0.5)
    assert model.draft("int8", 1, 3) == 3 * UNMEASURED_TOKEN_COST  # unmeasured: priced conservatively, never free
    for _ in range(4):
        level.calls, level.proposed, level.seconds = level.calls + 1, level.proposed + 3, level.seconds + 0.15
        model.observe(tree_size=5, context=100, timings=StepTimings(draft=0.15, verify=0.2 * 2.0, total=0.55))
    assert model.forward_seconds == pytest.approx(0.2)  # 0.4 s for 5 tokens, which cost 2 forwards
    assert model.draft("int8", 1, 3) == pytest.approx(0.75)  # 0.15 s / 0.2 s
    assert model.verify(9, 100) == 3.0
    assert LatencyModel(UNCALIBRATED).verify(11, 0) == pytest.approx(2.0)


def test_calibrated_draft_costs_price_a_level_until_it_is_measured_online():
    from cas_spec.costs.draft_costs import LevelDraftCost

    level = FakeLevel("skip")
    prior = LevelDraftCost(context_lengths=(64, 1000), per_call=(0.1, 0.3), per_token=(0.5, 0.7))
    model = LatencyModel(CostView(Table(), {"skip": prior}), [level], decay=0.5)
    assert model.draft("skip", 1, 2, context=64) == pytest.approx(1.1)
    assert model.draft("skip", 1, 2, context=532) == pytest.approx(0.2 + 2 * 0.6)  # interpolated
    assert model.draft("skip", 1, 2, context=5000) == pytest.approx(1.7)  # the last context holds beyond
    level.calls, level.proposed, level.seconds = 1, 2, 0.08
    model.observe(tree_size=5, context=100, timings=StepTimings(draft=0.08, verify=0.2 * 2.0, total=0.48))
    assert model.draft("skip", 1, 2, context=64) == pytest.approx(0.4)  # measured: 0.08 s / 0.2 s
