"""DyTC: routing, learning, recovery and cost-awareness in simulation (`cas_spec.testing.simulation`:
scripted levels, a hidden true continuation, a fake clock), then greedy identity and the
never-slower gate on real (tiny) models. Exact sampling: `test_dytc_sampling.py`."""

from __future__ import annotations

import itertools

import pytest
import torch

from cas_spec import load_pipeline
from cas_spec.schedulers.dytc import DytcScheduler
from cas_spec.schedulers.estimators.acceptance import WindowedAcceptance
from cas_spec.testing.models import IdTokenizer, repetitive_prompt, tiny_llama
from cas_spec.testing.simulation import FlatCosts, Scripted, simulate
from tests.helpers import AUTOREGRESSIVE, SELF_DRAFT_LEVELS

MODEL = Scripted("model", alpha=0.85, per_token=0.3)  # a good model level that costs 0.3 forwards a token
SEEDS = range(16)  # paired simulations on the same texts: single runs differ by up to ±10%, the mean by ~1%


def relative_rate(specs, reference, steps=300, since=50) -> float:
    """Mean over `SEEDS` of the tokens per simulated second of `specs` over those of `reference`."""

    def rate(levels, seed):
        return simulate(DytcScheduler, {}, levels, steps, seed=seed).tokens_per_second(since)

    return sum(rate(specs, seed) / rate(reference, seed) for seed in SEEDS) / len(SEEDS)


def test_a_free_level_that_always_matches_does_not_lock_the_model_level_out():
    """The issue-13 case: a lookup that always proposes but is right 10% of the time, beside a
    model level of acceptance 0.85: the model still drafts, and the pair is as fast as the model
    alone."""
    lookup = Scripted("pld", alpha=0.1, lookup=True)
    both = simulate(DytcScheduler, {}, [MODEL, lookup], 300)
    assert both.nodes_by("model", 50) > 3 * 250
    assert both.tokens_per_step(50) > 3.0
    assert relative_rate([MODEL, lookup], [MODEL]) > 0.97


def test_a_good_lookup_takes_the_lead_and_the_model_stays_out_of_its_way():
    lookup = Scripted("pld", alpha=0.9, lookup=True)
    both = simulate(DytcScheduler, {}, [MODEL, lookup], 300)
    assert both.nodes_by("pld", 50) > 10 * both.nodes_by("model", 50)
    assert relative_rate([MODEL, lookup], [lookup]) > 0.97


def test_a_cheap_level_extends_a_model_draft():
    lookup = Scripted("pld", alpha=0.3, lookup=True)
    result = simulate(DytcScheduler, {}, [MODEL, lookup], 200)
    extended = [
        tree
        for tree in result.trees[50:]
        if any(tree.levels[i] == "pld" and tree.levels[tree.parents[i]] == "model" for i in range(1, tree.size))
    ]
    assert len(extended) > 50


def test_dytc_prefers_the_level_with_the_better_measured_value():
    good, poor = Scripted("good", alpha=0.85, per_token=0.3), Scripted("poor", alpha=0.2, per_token=0.3)
    result = simulate(DytcScheduler, {}, [good, poor], 150)
    assert result.nodes_by("good", 40) > 5 * result.nodes_by("poor", 40)
    assert result.scheduler.estimates.alpha["good"].alpha > 0.7 > 0.35 > result.scheduler.estimates.alpha["poor"].alpha


def test_learning_counts_pruned_tokens_so_the_rate_is_unbiased():
    """A level of true acceptance 0.7 under a steep verification cost: most of what it drafts is
    trimmed away, yet its counts (every drafted token scored against the committed text) give
    its true rate, where learning only from what survived read 0.92."""
    level = Scripted("model", alpha=0.7, per_token=0.05)
    result = simulate(DytcScheduler, {}, [level], 600, costs=FlatCosts(0.3))
    estimate = result.scheduler.estimates.alpha["model"]
    assert result.scheduler.pruned_tokens > 300
    assert abs(estimate.hits / estimate.seen - 0.7) < 0.04


def test_a_level_dead_for_600_steps_comes_back():
    level = Scripted("model", alpha=lambda step: 0.9 if step < 100 or step >= 700 else 0.0, per_token=0.3)
    result = simulate(DytcScheduler, {}, [level], 1000)
    assert result.steps_using("model", 50, 100) == 50
    assert result.steps_using("model", 200, 700) < 500 // 16 + 1  # only probes while it is dead
    assert result.steps_using("model", 850, 1000) > 140  # back in use


def test_a_level_that_never_pays_is_probed_ever_less_often():
    level = Scripted("model", alpha=0.0, per_token=0.4)
    result = simulate(DytcScheduler, {"probe_interval": 8, "max_probe_interval": 64}, [level], 400)
    probes = [i for i, t in enumerate(result.trees) if t.size > 1]
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert all(t.size <= 2 for t in result.trees[20:])  # a probe drafts one token
    assert gaps == sorted(gaps) and gaps[-1] == 64 and gaps[0] <= 16


def test_dytc_sizes_trees_by_the_verification_cost():
    level = Scripted("model", alpha=0.8, per_token=0.05)

    def nodes(costs):
        result = simulate(DytcScheduler, {}, [level], 120, costs=costs)
        return sum(t.size for t in result.trees[40:]) / 80

    assert nodes(FlatCosts(0.02)) > nodes(FlatCosts(0.5)) + 1.0


def test_a_level_that_costs_more_than_it_brings_leaves_plain_steps():
    slow = Scripted("slow", alpha=0.5, per_token=1.5)
    result = simulate(DytcScheduler, {"probe_interval": 16}, [slow], 120)
    assert sum(t.size == 1 for t in result.trees[20:]) >= 90


def test_max_nodes_is_a_hard_bound():
    level = Scripted("model", alpha=0.95, per_token=0.01)
    lookup = Scripted("pld", alpha=0.9, lookup=True)
    result = simulate(DytcScheduler, {"max_nodes": 9, "max_draft": 8, "probe_interval": 1}, [level, lookup], 100)
    assert max(t.size for t in result.trees) == 9


def test_free_levels_proposing_the_same_tokens_share_nodes():
    a, b = Scripted("pld", alpha=1.0, lookup=True), Scripted("mag", alpha=1.0, lookup=True)
    result = simulate(DytcScheduler, {}, [a, b], 60)
    for tree in result.trees:
        for children in tree.children:
            tokens = [int(tree.tokens[c]) for c in children]
            assert len(tokens) == len(set(tokens)), "two siblings hold the same token"


def test_an_unmeasured_level_is_probed_first_and_never_priced_at_zero():
    unknown = Scripted("model", alpha=0.9, per_token=0.2, calibrated=False)
    result = simulate(DytcScheduler, {"objective": "astar"}, [unknown], 40)
    assert result.trees[0].size == 2  # probed at once, one token
    assert result.scheduler.estimates.latency.draft("model", 1, 1, 100) > 0.1


def test_the_astar_objective_drafts_more_than_one_token_per_call():
    """The paper's T_s as written always picks k = 1 when the bottom level is nearly free; ours
    weighs the node's value and the verification cost, so longer drafts can win."""
    model = Scripted("model", alpha=0.85, per_token=0.2, per_call=0.2)
    lookup = Scripted("pld", alpha=0.1, lookup=True)
    result = simulate(DytcScheduler, {"objective": "astar"}, [model, lookup], 150)
    level = next(lv for lv in result.scheduler.levels if lv.name == "model")
    assert level.proposed / level.calls > 2.0
    assert result.tokens_per_step(50) > 3.0


def test_what_dytc_learned_carries_over_to_the_next_generation():
    level = Scripted("model", alpha=0.0, per_token=0.4)
    first = simulate(DytcScheduler, {"probe_interval": 8}, [level], 120)
    scheduler = first.scheduler
    alpha, interval = scheduler.estimates.alpha["model"].alpha, scheduler.estimates.probe_every["model"]
    assert alpha < 0.3 and interval > 8
    second = simulate(DytcScheduler, {}, [level], 1, result=first)
    assert scheduler.estimates.alpha["model"].alpha == pytest.approx(alpha)
    assert second.trees[-1].size == 1  # the next prompt starts without the level
    scheduler.options = scheduler.options.model_copy(update={"carry_over": False})
    simulate(DytcScheduler, {}, [level], 0, result=first)
    assert scheduler.estimates.alpha["model"].alpha == scheduler.options.prior_alpha  # unless told to forget


def test_a_new_prompt_is_judged_on_its_own_acceptance_within_a_few_steps():
    """Carried over, α̂ is where a new generation starts, but the acceptance window is the new
    text's (with α̂ in it as a few tokens of evidence): a level that agreed at 0.95 on one prompt
    and agrees at 0.4 on the next is re-estimated within a few steps (a window still full of the
    last prompt's steps held it above 0.9 for a prompt's first 20 steps, and short answers are
    over by then)."""
    text = {"alpha": 0.95}
    level = Scripted("model", alpha=lambda step: text["alpha"], per_token=0.3)
    first = simulate(DytcScheduler, {}, [level], 200)
    assert first.scheduler.estimates.alpha["model"].alpha > 0.85
    text["alpha"] = 0.4
    simulate(DytcScheduler, {}, [level], 6, result=first)
    assert first.scheduler.estimates.alpha["model"].alpha < 0.75  # 0.92 with the last prompt's window


def test_windowed_acceptance_restart_starts_the_window_from_the_estimate():
    estimate = WindowedAcceptance(prior=0.5, decay=0.5, window=4, warmup=0, carried=4.0)
    for _ in range(4):
        estimate.update(4, 4)  # α̂: 0.75, 0.875, 0.9375, 0.96875
    estimate.restart()
    assert estimate.alpha == pytest.approx(0.96875) and estimate.history == [(4.0, 3.875)]
    estimate.update(4, 0)  # window: α̂ as 4 tokens, then 0 of 4: rate 3.875 / 8 (not the old steps' 3/4)
    assert estimate.alpha == pytest.approx(0.5 * 0.96875 + 0.5 * 3.875 / 8)
    for _ in range(4):
        estimate.update(4, 0)  # the pseudo-step ages out of the window like any step
    assert estimate.history == [(4, 0)] * 4


def test_windowed_acceptance_worked_example():
    """Warm-up: the running rate with the prior worth two observations; then the EMA
    α̂ ← λ·α̂ + (1 − λ)·(rate over the last `window` steps), steps without evidence ageing out."""
    estimate = WindowedAcceptance(prior=0.5, decay=0.5, window=2, warmup=1)
    estimate.update(4, 3)  # warm-up: (3 + 2·0.5) / (4 + 2) = 2/3
    assert estimate.alpha == pytest.approx(2 / 3)
    estimate.update(2, 0)  # window (4, 3), (2, 0): rate 3/6; α̂ = 0.5·2/3 + 0.5·0.5
    assert estimate.alpha == pytest.approx(0.5 * 2 / 3 + 0.25)
    estimate.update(0, 0)  # no evidence: α̂ unchanged, but the step ages the window
    assert estimate.alpha == pytest.approx(0.5 * 2 / 3 + 0.25)
    estimate.update(1, 1)  # window (0, 0), (1, 1): rate 1
    assert estimate.alpha == pytest.approx(0.5 * (0.5 * 2 / 3 + 0.25) + 0.5)
    assert (estimate.seen, estimate.hits) == (7, 4)


@pytest.mark.parametrize("seed", [0, 1])
def test_dytc_greedy_output_equals_plain_decoding(seed):
    model = tiny_llama(seed, layers=4)
    prompt = repetitive_prompt(seed, model.config.vocab_size)
    config = {
        "scheduler": {"kind": "dytc", "options": {"warmup": 2, "probe_interval": 4}},
        "levels": [{"name": n, **SELF_DRAFT_LEVELS[n]} for n in ("quanto_activation", "layer_sparsity", "early_exit")]
        + [{"name": "pld", "kind": "prompt_lookup"}],
    }
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer()).generate(prompt, max_new_tokens=48)
    pipe = load_pipeline(config, model=model, tokenizer=IdTokenizer())
    got = pipe.generate(prompt, max_new_tokens=48)
    assert got.token_ids == plain.token_ids
    assert sum(s.drafted for s in got.stats.levels.values()) > 0


def test_dytc_on_stories_with_branching_trees(stories):
    """Probes of the early-exit level every other step open branches beside the lookup's chain."""
    model, tokenizer = stories
    config = {
        "scheduler": {
            "kind": "dytc",
            "options": {"siblings": 3, "sibling_min_prob": 0.01, "probe_interval": 2, "max_probe_interval": 2},
        },
        "levels": [
            {"name": "exit3", "kind": "early_exit", "options": {"exit_layer": 3}},
            {"name": "pld", "kind": "prompt_lookup"},
        ],
    }
    prompt = "Once upon a time, there was a little girl named Lily. She loved to play. Once upon a time"
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=tokenizer).generate(
        prompt, max_new_tokens=60, chat=False
    )
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
            config = {
                "scheduler": {"kind": "chain", "options": {"k": 4, "adaptive": False}, "gate": gate},
                "levels": [{"name": "exit1", "kind": "early_exit", "options": {"exit_layer": 1}}],
            }
            pipe = load_pipeline(config, model=model, tokenizer=IdTokenizer())
            passes["n"] = 0
            got = pipe.generate(prompt, max_new_tokens=400)
            results[gate] = passes["n"] / len(got.token_ids)
    finally:
        handle.remove()
    assert results[False] > 2.0  # ungated: four draft passes and a verification per step
    assert results[True] < 1.15  # gated: plain steps, plus probes whose share shrinks as holds double
