"""DyTC samples exactly: the law of the first emitted token equals the target's for every tree the
scheduler can build, computed exactly by enumerating every draw its drafters can make.

A scripted model level draws from a fixed q, a scripted lookup proposes fixed tokens, the
verification cost table is steep (so trimming and pruning are active: asserted), and the
scheduler's confidence calibration and acceptance estimates are first warmed so that they rank
tokens drawn with a high q far above tokens drawn with a low one (the situation in which a node's
survival would depend on what it drew, if the scheduler let it). Then each tree the scheduler
builds from that state is enumerated over all draw sequences (each with its probability) and
the sampling verifier's exact law (`cas_spec.testing.exact.step_law`) is averaged over them.
"""

from __future__ import annotations

import copy
import random

import pytest
import torch

from cas_spec.core.cost_model import CostView
from cas_spec.core.interfaces import DraftStrategy
from cas_spec.core.levels import Level
from cas_spec.core.state import DecodingState
from cas_spec.core.types import DraftResult, SamplingParams, StepTimings, Verdict
from cas_spec.schedulers.dytc import DytcScheduler
from cas_spec.testing.exact import step_law

TARGET = torch.tensor([0.90, 0.05, 0.05], dtype=torch.float64)  # p at every node
DRAFT = torch.tensor([0.6, 0.2, 0.2], dtype=torch.float64)  # q at every position


class Steep:
    """Verification cost that grows fast with the tree: every node has to pay for itself."""

    def cost(self, n, context=0):
        return 1.0 + 0.35 * (n - 1)


class Draws:
    """Where the scripted model level's sampled tokens come from: a seeded RNG, or a script
    replayed by the enumeration (`Exhausted` when the script runs out)."""

    def __init__(self, rng: random.Random | None = None):
        self.rng, self.script, self.used = rng, [], 0

    def draw(self, q: torch.Tensor) -> int:
        if self.rng is not None:
            return self.rng.choices(range(len(q)), weights=q.tolist())[0]
        if self.used == len(self.script):
            raise Exhausted(q)
        self.used += 1
        return self.script[self.used - 1]


class Exhausted(Exception):
    def __init__(self, q):
        super().__init__()
        self.q = q


class SampledModel(DraftStrategy):
    """A model level under sampling: each token drawn from DRAFT, reported with its q."""

    name = "sampled_model"
    deterministic = False

    def __init__(self, draws: Draws):
        super().__init__()
        self.draws = draws

    def draft(self, state, prefix, max_tokens):
        tokens = tuple(self.draws.draw(DRAFT) for _ in range(max_tokens))
        alternatives = tuple(tuple((t, float(DRAFT[t])) for t in range(3) if t != x) for x in tokens)
        return DraftResult(
            tokens=tokens,
            confidence=tuple(float(DRAFT[t]) for t in tokens),
            draft_probs=DRAFT.float().repeat(max_tokens, 1),
            alternatives=alternatives,
        )


class Lookup(DraftStrategy):
    """A lookup that always matches, proposing token 1 (a point mass the target rarely takes)."""

    name = "lookup"

    def draft(self, state, prefix, max_tokens):
        return DraftResult(tokens=(1,) * max_tokens, confidence=(2.0,) * max_tokens)


class Calibrated:
    """Calibrated draft costs: the model level 0.05 per token, the lookup free."""

    agreement = None  # not measured: the scheduler starts from its prior

    def __init__(self, per_token):
        self.per_token = per_token

    def cost(self, calls, tokens, context):
        return self.per_token * tokens


def make_scheduler(draws: Draws, lookup: bool, **options):
    levels = [Level("model", SampledModel(draws))] + ([Level("pld", Lookup())] if lookup else [])
    costs = {"model": Calibrated(0.05)} | ({"pld": Calibrated(0.0)} if lookup else {})
    options = {
        "max_draft": 3,
        "max_nodes": 7,
        "siblings": 2,
        "sibling_min_prob": 0.0,
        "warmup": 0,
        "probe_interval": 1000,
        **options,
    }
    scheduler = DytcScheduler(DytcScheduler.Options(**options), levels)
    state = DecodingState(
        tokens=[0] * 11,
        prompt_length=11,
        sampling=SamplingParams(temperature=1.0),
        generator=None,
        costs=CostView(Steep(), costs),
        context_length=10,
        max_depth=3,
    )
    scheduler.start(state)
    return scheduler, state


def target_verdict(tree, rng: random.Random) -> Verdict:
    """A verdict drawn with the sampling verifier's law for `tree` under TARGET."""
    law = step_law(tree, TARGET[None].repeat(tree.size, 1))
    outcomes, weights = zip(*law.items())
    emitted = rng.choices(outcomes, weights=weights)[0]
    path, node = [], 0
    for token in emitted[:-1]:
        node = next(c for c in tree.children[node] if int(tree.tokens[c]) == token)
        path.append(node)
    return Verdict(tuple(path), tuple(emitted[:-1]), emitted[-1])


def warm(scheduler, state, draws: Draws, steps: int, seed: int) -> None:
    """Run the scheduler on simulated verdicts so that its estimates learn, then teach its
    confidence calibration what a long run teaches: a token drawn with q = 0.6 (token 0) is the
    target's 0.9 of the time, one drawn with q = 0.2 (tokens 1, 2) 0.05 of the time."""
    rng = random.Random(seed)
    for step in range(steps):
        state.step = step
        tree = scheduler.build_tree(state)
        scheduler.observe(tree, target_verdict(tree, rng), StepTimings(draft=0.0, verify=0.1, total=0.1))
    calibration = scheduler.estimates.calibration["model"]
    for _ in range(200):
        calibration.update(calibration.bucket(0.6), rng.random() < 0.9)
        calibration.update(calibration.bucket(0.2), rng.random() < 0.05)


def enumerate_first_token_law(scheduler, state) -> tuple[torch.Tensor, list]:
    """Exact law of the first emitted token over every draw sequence of one step, and the trees."""
    law = torch.zeros(3, dtype=torch.float64)
    trees = []
    pending = [([], 1.0)]
    while pending:
        script, weight = pending.pop()
        trial = copy.deepcopy(scheduler)
        draws = trial.levels[0].strategy.draws
        draws.script, draws.used, draws.rng = list(script), 0, None
        try:
            tree = trial.build_tree(state)
        except Exhausted as need:
            pending += [(script + [t], weight * float(need.q[t])) for t in range(3) if need.q[t] > 0]
            continue
        trees.append((tree, trial))
        for emitted, probability in step_law(tree, TARGET[None].repeat(tree.size, 1)).items():
            law[emitted[0]] += weight * probability
    return law, trees


@pytest.mark.parametrize("lookup", [False, True], ids=["model", "model+lookup"])
@pytest.mark.parametrize("objective", ["step_value", "astar"])
def test_dytc_emits_the_target_law_exactly_after_warming(lookup, objective):
    draws = Draws(random.Random(0))
    scheduler, state = make_scheduler(draws, lookup, objective=objective)
    warm(scheduler, state, draws, 400, seed=1)
    calibration = scheduler.estimates.calibration["model"]
    alpha = scheduler.estimates.alpha["model"].alpha
    high = calibration.probability(calibration.bucket(0.6), alpha)
    low = calibration.probability(calibration.bucket(0.2), alpha)
    assert high > 4 * low, "the warmed calibration must rank q = 0.6 tokens far above q = 0.2 ones"
    state.step = 400
    law, trees = enumerate_first_token_law(scheduler, state)
    assert any(tree.size > 1 for tree, _ in trees), "the scheduler must draft for the check to mean anything"
    assert sum(trial.pruned_tokens for _, trial in trees) > 0, "trimming must be active"
    torch.testing.assert_close(law, TARGET, rtol=0, atol=1e-6)


def test_dytc_keeps_the_target_law_with_a_probe_beside_a_lookup():
    draws = Draws(random.Random(0))
    scheduler, state = make_scheduler(draws, True, probe_interval=1, probe_tokens=2)
    warm(scheduler, state, draws, 200, seed=2)
    state.step = 200 + scheduler.estimates.probe_every["model"]
    law, trees = enumerate_first_token_law(scheduler, state)
    assert any(any(level == "model" for level in tree.levels) for tree, _ in trees)
    torch.testing.assert_close(law, TARGET, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_seeded_sampling_on_a_tiny_model_with_a_model_level_and_prompt_lookup():
    """End to end on a real (tiny, peaked) model: DyTC over an early-exit level and prompt lookup,
    steep verification costs, the model level priced cheap and the scheduler warmed by earlier
    generations; 3,000 seeded runs of two tokens pass a χ² test against the target's exact law,
    with the model level drafting and the lookup weighed at every step. (Two tokens leave trees one
    level deep: trimming is exercised by the enumerations above.)"""
    from cas_spec import load_pipeline
    from cas_spec.testing.clocks import frozen_clock
    from cas_spec.testing.harness import PriorCost, SlopedCosts
    from cas_spec.testing.models import IdTokenizer
    from cas_spec.testing.stats import chi2_critical, chi2_goodness
    from tests.helpers import PROMPT, peaked_tiny_model, record_trees, two_token_distribution

    model = peaked_tiny_model()
    config = {
        "scheduler": {"kind": "dytc", "options": {"siblings": 2, "sibling_min_prob": 0.0}},
        "levels": [
            {"name": "exit2", "kind": "early_exit", "options": {"exit_layer": 2}},
            {"name": "pld", "kind": "prompt_lookup"},
        ],
        "sampling": {"temperature": 1.0},
        "calibration": "off",
    }
    pipe = load_pipeline(config, model=model, tokenizer=IdTokenizer())
    pipe.costs = CostView(SlopedCosts(0.1), {"exit2": PriorCost(0.0, 0.05), "pld": PriorCost(0.0, 0.0)})
    runs, counts = 3000, {}
    with frozen_clock(pipe):  # the costs above decide, not this machine's timings
        for seed in range(30):  # warm: what DyTC learns carries over between generations
            pipe.generate(list(PROMPT), max_new_tokens=16, seed=100_000 + seed)
        steps = record_trees(pipe)
        lookups = 0
        for seed in range(runs):
            result = pipe.generate(list(PROMPT), max_new_tokens=2, seed=seed)
            counts[tuple(result.token_ids)] = counts.get(tuple(result.token_ids), 0) + 1
            lookups += result.stats.levels["pld"].calls
    stat, df = chi2_goodness(counts, two_token_distribution(model), runs)
    assert sum(tree.size > 1 for tree, _ in steps) > runs // 2, "most runs must draft"
    assert sum(tree.levels.count("exit2") for tree, _ in steps) > 1000, "the model level must draft"
    assert lookups >= runs, "the lookup's proposals must be weighed at every step"
    assert stat < chi2_critical(df, 1e-3), (stat, df)
