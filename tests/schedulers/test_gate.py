"""The never-slower gate's decision rule, with a fake inner scheduler and fake step timings."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

from cas_spec.core.cost_model import CostView
from cas_spec.core.interfaces import Scheduler
from cas_spec.core.tree import TreeBuilder
from cas_spec.core.types import StepTimings, Verdict
from cas_spec.schedulers.gate import NeverSlowerGate

FORWARD = 0.1  # seconds of a plain step


class Inner(Scheduler):
    name = "inner"

    def __init__(self):
        super().__init__(None, [])
        self.steps = 0

    def build_tree(self, state):
        self.steps += 1
        builder = TreeBuilder(state.root_token)
        builder.add(0, 7, "x", 1.0)
        return builder.build()

    def observe(self, tree, verdict, timings):
        pass


class Costs:
    def cost(self, n, context=0):
        return 1.0 + 0.2 * (n - 1)  # a two-node tree costs 1.2 plain steps


COSTS = CostView(Costs())


def run(gate: NeverSlowerGate, speculative_step, steps: int, costs=None) -> list[bool]:
    """Drive `gate` through one generation of `steps` steps; `speculative_step(i)` gives (tokens,
    seconds[, verify seconds]) of a speculative step i. Returns, per step, whether it was speculative."""
    state = SimpleNamespace(root_token=1, step=0, costs=costs or CostView(Costs()), context_length=50)
    gate.start(state)
    spoke = []
    for i in range(steps):
        state.step = i
        tree = gate.build_tree(state)
        speculative = tree.size > 1
        tokens, seconds, *verified = speculative_step(i) if speculative else (1, FORWARD)
        verdict = Verdict(tuple(range(1, tokens)), (5,) * (tokens - 1), 0)  # + the bonus token
        # the tree's forward at FORWARD a plain step, unless given; the rest of the step drafts
        verify = (
            verified[0] if verified else min(seconds, state.costs.verify(tree.size, state.context_length) * FORWARD)
        )
        state.step = i + 1  # as in the engine: a step is counted before it is observed
        gate.observe(tree, verdict, StepTimings(draft=seconds - verify, verify=verify, total=seconds))
        spoke.append(speculative)
    return spoke


def test_a_bursty_drafter_that_pays_overall_is_never_switched_off():
    # nine misses costing 1.2 plain steps each, then a run of six tokens: 15 tokens per 11.3 steps
    def step(i):
        return (6, 1.2 * FORWARD) if i % 10 == 9 else (1, 1.2 * FORWARD)

    gate = NeverSlowerGate(Inner())
    assert all(run(gate, step, 200)) and gate.triggers == 0


def test_a_drafter_with_costly_steps_that_pays_overall_is_never_switched_off():
    """DyTC's steps over a model level cost several plain steps, so one miss loses two of them and
    two misses in a row lost more than `patience` plain steps: the gate's patience is counted in
    the larger of a plain step and a speculative one. Here each step costs 3 plain steps and
    commits 4 tokens, or 1 on a miss, two misses in every eight: 26 tokens per 24 plain steps."""

    def step(i):
        return (1, 3.0 * FORWARD) if i % 8 in (3, 4) else (4, 3.0 * FORWARD)

    gate = NeverSlowerGate(Inner())
    assert all(run(gate, step, 400)) and gate.triggers == 0


def test_a_drafter_slower_than_plain_decoding_is_switched_off_and_probed_ever_less():
    gate = NeverSlowerGate(Inner())
    spoke = run(gate, lambda i: (1, 2.0 * FORWARD), 1000)
    assert sum(spoke) < 45  # under 5 % of the steps: the first ones and short probes
    starts = [i for i in range(1, 1000) if spoke[i] and not spoke[i - 1]]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == sorted(gaps) and len(gaps) >= 3


def test_a_drafter_that_stops_paying_is_caught_and_one_that_recovers_is_taken_back():
    def step(i):
        return (3, 1.1 * FORWARD) if i < 100 or i >= 300 else (1, 1.5 * FORWARD)

    gate = NeverSlowerGate(Inner(), max_hold=32)
    spoke = run(gate, step, 500)
    assert all(spoke[:100])
    assert sum(spoke[150:300]) < 30
    assert sum(spoke[400:500]) == 100


def test_a_hold_carries_over_to_the_next_generation_only_where_speculation_lost_overall():
    """What the gate measured and its hold length carry over to the pipeline's next generation.
    The rest of a hold carries over where speculation lost over the whole generation (the next
    prompt does not pay for finding that out again), not where it paid and only its end lost: a
    new prompt is new text (on Spec-Bench, a translation prompt's last steps held the next one's
    copied text away from lookup). Either way speculation comes back on probation."""
    gate = NeverSlowerGate(Inner())
    losing = run(gate, lambda i: (1, 2.0 * FORWARD), 40, costs=COSTS)
    assert losing[:3] == [True] * 3 and gate.plain_until > 40  # switched off, holding past the end
    left = gate.plain_until - 40
    again = run(gate, lambda i: (1, 2.0 * FORWARD), 40, costs=COSTS)
    assert not any(again[:left]) and again[left]  # the rest of the hold, then a probe
    assert not any(again[left + 3 : left + 20])  # which it ends within its first steps

    gate = NeverSlowerGate(Inner())
    paid = run(gate, lambda i: (3, 1.2 * FORWARD) if i < 30 else (1, 3.0 * FORWARD), 40, costs=COSTS)
    assert all(paid[:30]) and gate.plain_until > 40  # it paid, then lost at the end
    paying = run(gate, lambda i: (3, 1.2 * FORWARD), 40, costs=COSTS)
    assert all(paying)  # the new text pays: speculation runs from its first step
    fresh = run(NeverSlowerGate(Inner()), lambda i: (1, 2.0 * FORWARD), 3)
    assert all(fresh)  # a new pipeline starts by speculating


def test_the_plain_step_time_is_re_estimated_as_the_context_grows():
    """A plain step's time follows the forward's: measured on every step (speculative ones
    through the cost table), not predicted once at the first speculative step and kept. Here a
    forward slows from 0.1 s to 0.3 s over the generation while speculation keeps committing 1.5
    tokens per 1.2 forwards: it pays throughout, so the gate never switches it off."""
    gate = NeverSlowerGate(Inner())

    def step(i):
        forward = FORWARD * (1 + 2 * i / 300)
        return (2 if i % 2 else 1), 1.2 * forward * 0.99, 1.2 * forward * 0.99

    assert all(run(gate, step, 300))
    assert gate.forward_seconds > 2.5 * FORWARD
