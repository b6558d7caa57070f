"""Simulated decoding for scheduler tests: scripted levels, a hidden true continuation, a fake clock.

No model runs. Each step the `World` draws the target's continuation (the tokens greedy decoding
will commit); a `ScriptedStrategy` drafting below a node whose path follows that continuation
proposes the true next token with its level's acceptance rate α (per token, given the tokens
before it were right, the i.i.d. chain model) and a wrong one otherwise; below a node off the
continuation every proposal is wrong. Each draft call advances the fake clock by the level's cost
(per call and per token, in one-token target forwards of `FORWARD` seconds); the verification
of a tree of n nodes costs `costs.cost(n)` forwards. The verdict is the greedy one: the longest
path that follows the continuation, then the bonus token.

    result = simulate(DytcScheduler, {"max_nodes": 16},
                      [Scripted("model", alpha=0.85, per_token=0.3), Scripted("pld", alpha=0.1, lookup=True)],
                      steps=200)
    result.tokens_per_step(since=50), result.nodes_by("model")

`alpha` may be a callable of the step (a level that collapses and recovers). Lookup levels
(`lookup=True`) always propose `lookup_tokens` tokens with a match length as confidence, cost
nothing and are calibrated as free; model levels report a draft probability as confidence
(higher for right tokens than wrong ones, so calibration has something to learn) and their
runners-up.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from cas_spec.plugin import (
    CostView,
    DecodingState,
    DraftResult,
    DraftStrategy,
    Level,
    SamplingParams,
    Scheduler,
    StepTimings,
    TokenTree,
    Verdict,
)
from cas_spec.testing.harness import PriorCost

FORWARD = 0.1  # seconds of a one-token target forward in the simulation
VOCAB = 1000  # tokens 10..VOCAB-1 are drawn for the continuation; wrong proposals use 1..9


class Clock:
    """A fake `time.perf_counter`: advanced by the scripted levels' costs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FlatCosts:
    """Verification cost 1 + slope · (n − 1), in one-token forwards (a `CostTable` stand-in)."""

    def __init__(self, slope: float = 0.02):
        self.slope = slope

    def cost(self, n: int, context: int = 0) -> float:
        return 1.0 + self.slope * (n - 1)


@dataclass
class World:
    """The hidden continuation of the current step. It depends only on the seed and the step,
    so runs with different levels or options meet the same text."""

    seed: int
    truth: tuple[int, ...] = ()
    step: int = 0

    def new_step(self, step: int, length: int = 64) -> None:
        self.step = step
        rng = random.Random(f"{self.seed}/{step}")
        self.truth = tuple(rng.randrange(10, VOCAB) for _ in range(length))


class ScriptedStrategy(DraftStrategy):
    """Drafts as the module docstring describes; see `Scripted` for the parameters."""

    name = "scripted"

    def __init__(self, spec: Scripted, world: World, clock: Clock):
        super().__init__()
        self.spec, self.world, self.clock = spec, world, clock
        self.rng = random.Random(f"{world.seed}/{spec.name}")  # each level's own draws

    def alpha(self) -> float:
        a = self.spec.alpha
        return float(a(self.world.step)) if callable(a) else float(a)

    def draft(self, state: DecodingState, prefix: tuple[int, ...], max_tokens: int) -> DraftResult:
        spec, world, rng = self.spec, self.world, self.rng
        count = min(max_tokens, spec.lookup_tokens) if spec.lookup else max_tokens
        self.clock.now += FORWARD * (spec.per_call + spec.per_token * count)
        on_truth = tuple(prefix) == world.truth[: len(prefix)]
        tokens, confidence, alternatives = [], [], []
        for i in range(count):
            right = on_truth and rng.random() < self.alpha()
            token = world.truth[len(prefix) + i] if right else rng.randrange(1, 10)
            on_truth = right
            tokens.append(token)
            if spec.lookup:
                confidence.append(2.0)
            else:
                confidence.append(rng.uniform(0.6, 1.0) if right else rng.uniform(0.1, 0.7))
                alternatives.append(((rng.randrange(1, 10), 0.15),))
        return DraftResult(tokens=tuple(tokens), confidence=tuple(confidence), alternatives=tuple(alternatives))


@dataclass(frozen=True)
class Scripted:
    """A scripted level: acceptance `alpha` (a number or a callable of the step), cost per call
    and per drafted token in one-token target forwards; `lookup` levels are free deterministic
    proposers of `lookup_tokens` tokens. `calibrated`: the pipeline knows its cost ahead."""

    name: str
    alpha: float | Callable[[int], float]
    per_token: float = 0.0
    per_call: float = 0.0
    lookup: bool = False
    lookup_tokens: int = 7
    calibrated: bool = True


@dataclass
class SimulationResult:
    scheduler: Scheduler
    costs: Any = None  # the verification cost table the scheduler saw
    view: CostView | None = None  # the cost view built from it and the levels' calibrated costs
    trees: list[TokenTree] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # simulated seconds of each step

    def tokens_per_step(self, since: int = 0, until: int | None = None) -> float:
        verdicts = self.verdicts[since:until]
        return sum(len(v.new_tokens) for v in verdicts) / max(len(verdicts), 1)

    def tokens_per_second(self, since: int = 0, until: int | None = None) -> float:
        tokens = sum(len(v.new_tokens) for v in self.verdicts[since:until])
        return tokens / max(sum(self.seconds[since:until]), 1e-12)

    def nodes_by(self, level: str, since: int = 0, until: int | None = None) -> int:
        return sum(tree.levels.count(level) for tree in self.trees[since:until])

    def steps_using(self, level: str, since: int = 0, until: int | None = None) -> int:
        return sum(level in tree.levels for tree in self.trees[since:until])


def greedy_verdict(tree: TokenTree, truth: tuple[int, ...]) -> Verdict:
    """The longest path of `tree` that follows `truth`, then the bonus token."""
    node = 0
    path: list[int] = []
    while True:
        want = truth[len(path)]
        nxt = next((c for c in tree.children[node] if int(tree.tokens[c]) == want), None)
        if nxt is None:
            return Verdict(tuple(path), truth[: len(path)], want)
        path.append(nxt)
        node = nxt


def simulate(
    scheduler_cls: type[Scheduler],
    options: Mapping[str, Any],
    specs: list[Scripted],
    steps: int,
    costs: Any = None,
    seed: int = 0,
    max_depth: int = 32,
    result: SimulationResult | None = None,
) -> SimulationResult:
    """Run `scheduler_cls(options)` over scripted levels for `steps` steps (see the module
    docstring). Pass a previous `result` to continue its scheduler (a next generation)."""
    clock, world = Clock(), World(seed)
    if result is None:
        levels = [Level(s.name, ScriptedStrategy(s, world, clock), clock=clock) for s in specs]
        scheduler = scheduler_cls(scheduler_cls.Options(**options), levels)
        result = SimulationResult(scheduler, costs if costs is not None else FlatCosts())
    else:
        scheduler = result.scheduler
        for level in scheduler.levels:
            strategy = cast(ScriptedStrategy, level.strategy)  # built by the first `simulate` call
            strategy.world, strategy.clock, level.clock = world, clock, clock
            level.reset_counters()
    costs = result.costs
    if result.view is None:  # one view per simulated pipeline: schedulers carry learning over on it
        result.view = CostView(costs, {s.name: PriorCost(s.per_call, s.per_token) for s in specs if s.calibrated})
    state = DecodingState(
        tokens=[1] * 101,
        prompt_length=101,
        sampling=SamplingParams(),
        generator=None,
        costs=result.view,
        context_length=100,
        max_depth=max_depth,
    )
    scheduler.start(state)
    for step in range(steps):
        state.step = step
        world.new_step(step, max_depth + 2)
        before = clock.now
        tree = scheduler.build_tree(state)
        verdict = greedy_verdict(tree, world.truth)
        draft = clock.now - before
        verify = FORWARD * costs.cost(tree.size)
        scheduler.observe(tree, verdict, StepTimings(draft=draft, verify=verify, total=draft + verify))
        result.trees.append(tree)
        result.verdicts.append(verdict)
        result.seconds.append(draft + verify)
    return result


__all__ = [
    "FORWARD",
    "Clock",
    "FlatCosts",
    "Scripted",
    "ScriptedStrategy",
    "SimulationResult",
    "World",
    "greedy_verdict",
    "simulate",
]
