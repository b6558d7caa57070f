"""DyTC: scheduler logic with fake levels and a fake clock (no model), then greedy identity and the
never-slower gate on real (tiny) models."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from cas_spec import load_pipeline
from cas_spec.core import levels as levels_module
from cas_spec.core.interfaces import DraftStrategy
from cas_spec.core.levels import Level
from cas_spec.core.state import DecodingState
from cas_spec.core.types import DraftResult, SamplingParams, StepTimings, Verdict
from cas_spec.schedulers.dytc import DytcScheduler
from tests.conftest import IdTokenizer, tiny_llama
from tests.core.test_engine_greedy import repetitive_prompt
from tests.strategies.test_self_draft import AUTOREGRESSIVE, LEVELS

FORWARD = 0.1  # seconds of a one-token target forward in the simulation


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class Scripted(DraftStrategy):
    """Drafts k copies of token 5 with a fixed confidence, costing `cost` forwards per token."""

    name = "scripted"

    def __init__(self, clock: Clock, cost: float, confidence: float = 0.5):
        super().__init__()
        self.clock, self.cost, self.confidence = clock, cost, confidence

    def draft(self, state, prefix, max_tokens):
        self.clock.now += self.cost * FORWARD * max_tokens
        return DraftResult(tokens=(5,) * max_tokens, confidence=(self.confidence,) * max_tokens)


class Steep:
    """Verification cost grows fast with the tree: 1 + 0.5 (n − 1)."""

    def cost(self, n, context=0):
        return 1.0 + 0.5 * (n - 1)


class Flat:
    def cost(self, n, context=0):
        return 1.0 + 0.02 * (n - 1)


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(levels_module.time, "perf_counter", c)
    return c


def simulate(levels, truth, steps, costs=Flat(), seed=0, **options):
    """Run DyTC for `steps` steps; each node is accepted with its level's true rate `truth[name]`
    (a callable of the step). Returns the scheduler and per-step trees."""
    scheduler = DytcScheduler(DytcScheduler.Options(**options), levels)
    target = SimpleNamespace(costs=costs, length=100)
    state = DecodingState(tokens=[1] * 101, prompt_length=101, sampling=SamplingParams(), generator=None,
                          target=target, max_depth=32)
    scheduler.start(state)
    rng, trees = random.Random(seed), []
    for step in range(steps):
        state.step = step
        drafted_before = sum(lv.seconds for lv in levels)
        tree = scheduler.build_tree(state)
        node, accepted = 0, []
        while True:
            child = next((c for c in tree.children[node] if rng.random() < truth[tree.levels[c]](step)), None)
            if child is None:
                break
            accepted.append(child)
            node = child
        verdict = Verdict(tuple(accepted), (5,) * len(accepted), 0)
        draft = sum(lv.seconds for lv in levels) - drafted_before
        verify = FORWARD * costs.cost(tree.size)
        scheduler.observe(tree, verdict, StepTimings(draft=draft, verify=verify, total=draft + verify))
        trees.append(tree)
    return scheduler, trees


def drafted_by(trees, name, since=0):
    return sum(t.levels.count(name) for t in trees[since:])


def test_dytc_prefers_the_level_with_the_better_measured_value(clock):
    good, poor = Level("good", Scripted(clock, 0.3)), Level("poor", Scripted(clock, 0.3))
    truth = {"good": lambda s: 0.85, "poor": lambda s: 0.2}
    scheduler, trees = simulate([good, poor], truth, 120)
    assert drafted_by(trees, "good", 40) > 5 * drafted_by(trees, "poor", 40)
    assert scheduler.alpha["good"].alpha > 0.7 > 0.35 > scheduler.alpha["poor"].alpha


def test_the_astar_objective_also_prefers_the_better_level(clock):
    good, poor = Level("good", Scripted(clock, 0.3)), Level("poor", Scripted(clock, 0.3))
    truth = {"good": lambda s: 0.85, "poor": lambda s: 0.2}
    scheduler, trees = simulate([good, poor], truth, 120, objective="astar")
    assert drafted_by(trees, "good", 40) > 5 * drafted_by(trees, "poor", 40)
    assert scheduler.alpha["good"].alpha > 0.7


def test_dytc_switches_a_collapsed_level_off_and_on_again(clock):
    level = Level("model", Scripted(clock, 0.4))
    truth = {"model": lambda s: 0.9 if s < 60 or s >= 140 else 0.0}
    scheduler, trees = simulate([level], truth, 260, probe_interval=8, max_probe_interval=32)
    on_before = sum(t.size > 1 for t in trees[30:60])
    off = sum(t.size > 1 for t in trees[100:140])
    on_after = sum(t.size > 1 for t in trees[220:260])
    assert on_before >= 28
    assert off <= 40 // 8 + 1  # only probes while acceptance is 0
    assert on_after >= 36


def test_a_level_that_never_pays_is_probed_ever_less_often(clock):
    level = Level("model", Scripted(clock, 0.4))
    scheduler, trees = simulate([level], {"model": lambda s: 0.0}, 400, probe_interval=8)
    probes = [i for i, t in enumerate(trees) if t.size > 1]
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert all(t.size <= 2 for t in trees[20:])  # a probe drafts one token
    assert gaps == sorted(gaps) and gaps[-1] >= 8 * gaps[0]
    assert len(probes) <= 9


def test_dytc_sizes_trees_by_the_verification_cost(clock):
    def run(costs):
        level = Level("model", Scripted(clock, 0.05, confidence=0.9))
        _, trees = simulate([level], {"model": lambda s: 0.8}, 80, costs=costs)
        return sum(t.size for t in trees[40:]) / 40

    assert run(Flat()) > run(Steep()) + 1.0


def test_a_level_that_costs_more_than_it_brings_leaves_plain_steps(clock):
    slow = Level("slow", Scripted(clock, 1.5))
    _, trees = simulate([slow], {"slow": lambda s: 0.5}, 80, probe_interval=16)
    assert sum(t.size == 1 for t in trees[20:]) >= 55


@pytest.mark.parametrize("seed", [0, 1])
def test_dytc_greedy_output_equals_plain_decoding(seed):
    model = tiny_llama(seed, layers=4)
    prompt = repetitive_prompt(seed, model.config.vocab_size)
    config = {"scheduler": {"kind": "dytc", "options": {"warmup": 2, "probe_interval": 4}},
              "levels": [{"name": n, **LEVELS[n]} for n in ("quanto_activation", "layer_sparsity", "early_exit")]
              + [{"name": "pld", "kind": "prompt_lookup"}]}
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer()).generate(prompt, max_new_tokens=48)
    pipe = load_pipeline(config, model=model, tokenizer=IdTokenizer())
    got = pipe.generate(prompt, max_new_tokens=48)
    assert got.token_ids == plain.token_ids
    assert sum(s.drafted for s in got.stats.levels.values()) > 0


def test_dytc_on_stories_with_branching_trees(stories):
    model, tokenizer = stories
    config = {"scheduler": {"kind": "dytc", "options": {"siblings": 3, "sibling_min_prob": 0.01}},
              "levels": [{"name": "exit3", "kind": "early_exit", "options": {"exit_layer": 3}},
                         {"name": "pld", "kind": "prompt_lookup"}]}
    prompt = "Once upon a time, there was a little girl named Lily. She loved to play. Once upon a time"
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=tokenizer).generate(prompt, max_new_tokens=60, chat=False)
    pipe = load_pipeline(config, model=model, tokenizer=tokenizer)
    trees = []
    real = pipe.target.forward_tree
    pipe.target.forward_tree = lambda tree: (trees.append(tree), real(tree))[1]
    got = pipe.generate(prompt, max_new_tokens=60, chat=False)
    assert got.token_ids == plain.token_ids
    assert any(not t.is_chain for t in trees), "some step verified a tree with branches"
    assert got.stats.scheduling_seconds / got.stats.target_forwards < 0.005


def test_the_gate_keeps_useless_drafting_near_one_forward_per_token(monkeypatch):
    """A tiny random model whose early-exit drafts are useless, with drafting made to look free
    to the scheduler's cost model: only the gate's time measurement stops it. The engine's clock
    is faked to advance one unit per model pass, so the test does not depend on machine load."""
    from types import SimpleNamespace

    from cas_spec.core import engine

    model = tiny_llama(11, layers=4, vocab=96, max_positions=512)
    prompt = torch.randint(3, 96, (24,), generator=torch.Generator().manual_seed(1)).tolist()
    passes = {"n": 0, "clock": 0.0}

    def count(*args):
        passes["n"] += 1
        passes["clock"] += 1.0

    monkeypatch.setattr(engine, "time", SimpleNamespace(perf_counter=lambda: passes["clock"]))
    handle = model.model.norm.register_forward_hook(count)
    try:
        results = {}
        for gate in (False, True):
            config = {"scheduler": {"kind": "chain", "options": {"k": 4, "adaptive": False}, "gate": gate},
                      "levels": [{"name": "exit1", "kind": "early_exit", "options": {"exit_layer": 1}}]}
            pipe = load_pipeline(config, model=model, tokenizer=IdTokenizer())
            passes["n"] = 0
            got = pipe.generate(prompt, max_new_tokens=400)
            results[gate] = passes["n"] / len(got.token_ids)
    finally:
        handle.remove()
    assert results[False] > 2.0  # ungated: four draft passes and a verification per step
    assert results[True] < 1.15  # gated: plain steps, plus probes whose share shrinks as holds double


@pytest.mark.slow
def test_dytc_sampling_matches_the_target_distribution():
    """Trees with a sampled chain token and point-mass siblings from a model level, and a lookup
    level beside it: the 2-token output distribution is the target's."""
    from tests.verifiers.test_sampling_verifier import chi2_critical, chi2_goodness

    from tests.helpers import PROMPT, peaked_tiny_model, two_token_distribution

    model = peaked_tiny_model()
    prompt = PROMPT
    exact = two_token_distribution(model, prompt)
    config = {"scheduler": {"kind": "dytc", "options": {"siblings": 3, "sibling_min_prob": 0.0, "warmup": 0,
                                                        "carry_over": False}},  # every run starts alike
              "levels": [{"name": "exit2", "kind": "early_exit", "options": {"exit_layer": 2}},
                         {"name": "pld", "kind": "prompt_lookup"}],
              "sampling": {"temperature": 1.0}, "calibration": "off"}
    pipe = load_pipeline(config, model=model, tokenizer=IdTokenizer())

    class FreeNodes:  # verification cost independent of tree size: every sibling is worth keeping
        def cost(self, n, context=0):
            return 1.0

    pipe.target.costs = FreeNodes()
    runs, counts, branching = 3000, {}, 0
    trees = []
    real = pipe.target.forward_tree
    pipe.target.forward_tree = lambda tree: (trees.append(tree), real(tree))[1]
    for seed in range(runs):
        trees.clear()
        result = pipe.generate(list(prompt), max_new_tokens=2, temperature=1.0, seed=seed)
        key = tuple(result.token_ids)
        counts[key] = counts.get(key, 0) + 1
        branching += any(not t.is_chain for t in trees)
    assert branching > 0.2 * runs, "trees with siblings must be verified for the test to mean anything"
    stat, df = chi2_goodness(counts, exact, runs)
    assert stat < chi2_critical(df, 1e-3), (stat, df)


def test_what_dytc_learned_carries_over_to_the_next_generation(clock):
    level = Level("model", Scripted(clock, 0.4))
    scheduler, _ = simulate([level], {"model": lambda s: 0.0}, 120, probe_interval=8)
    alpha, interval = scheduler.alpha["model"].alpha, scheduler.probe_every["model"]
    assert alpha < 0.3 and interval > 8
    same_target = scheduler.latency.costs
    state = DecodingState(tokens=[1] * 11, prompt_length=11, sampling=SamplingParams(), generator=None,
                          target=SimpleNamespace(costs=same_target, length=10), max_depth=8)
    level.reset_counters()
    scheduler.start(state)
    assert scheduler.alpha["model"].alpha == alpha and scheduler.probe_every["model"] == interval
    assert scheduler.build_tree(state).size == 1  # the next prompt starts without the level
    scheduler.options = scheduler.options.model_copy(update={"carry_over": False})
    scheduler.start(state)
    assert scheduler.alpha["model"].alpha == scheduler.options.prior_alpha  # unless told to forget
