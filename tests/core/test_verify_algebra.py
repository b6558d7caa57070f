"""Exact-algebra property tests of the acceptance kernels in `cas_spec.core.verify`.

No sampling here: every random choice of the drafters is enumerated with its weight, and the
kernels return probabilities, so the lossless property is checked as an identity between
float64 numbers. Notation: target = p, draft = q.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cas_spec.core import verify
from cas_spec.core.tree import TreeBuilder
from cas_spec.core.types import SamplingParams
from cas_spec.core.verify import SiblingStep, emission_distribution, greedy_walk
from cas_spec.testing.exact import as_distribution as _as_dist
from cas_spec.testing.exact import random_distribution as _random_dist
from cas_spec.testing.strategies import distributions
from cas_spec.verifiers.greedy import GreedyVerifier

ATOL = 1e-9


# Distributions: from the testing kit (`cas_spec.testing.exact`, `cas_spec.testing.strategies`).
# ----------------------------------------------------------------------------------------------
def _support(q: torch.Tensor) -> list[tuple[int, float]]:
    return [(x, float(w)) for x, w in enumerate(q.tolist()) if w > 0]


# ----------------------------------------------------------------------------------------------
# a. The sibling rule emits p exactly
# ----------------------------------------------------------------------------------------------
@st.composite
def sibling_problems(draw):
    vocab = draw(st.integers(2, 6))
    p = draw(distributions(vocab))
    n = draw(st.integers(0, 6))
    specs = []  # ("point", token) or ("sampled", q)
    sampled = 0
    for _ in range(n):
        if sampled < 3 and draw(st.booleans()):
            # Same q as an earlier sampled sibling (i.i.d. multi-draft), p itself, or a fresh q.
            earlier = [s[1] for s in specs if s[0] == "sampled"]
            choice = draw(st.sampled_from(["fresh", "p", "earlier"] if earlier else ["fresh", "p"]))
            if choice == "fresh":
                q = draw(distributions(vocab))
            elif choice == "p":
                q = p.clone()
            else:
                q = draw(st.sampled_from(earlier))
            specs.append(("sampled", q))
            sampled += 1
        else:
            specs.append(("point", draw(st.integers(0, vocab - 1))))  # duplicates allowed
    return vocab, p, specs


def _expected_emission(p: torch.Tensor, specs) -> torch.Tensor:
    """Σ over every draw of the sampled candidates of weight · emission_distribution."""
    sampled_at = [i for i, s in enumerate(specs) if s[0] == "sampled"]
    total = torch.zeros_like(p)
    for draws in itertools.product(*[_support(specs[i][1]) for i in sampled_at]):
        candidates = [(s[1], None) if s[0] == "point" else None for s in specs]
        weight = 1.0
        for i, (x, w) in zip(sampled_at, draws):
            candidates[i] = (x, specs[i][1])
            weight *= w
        emitted = emission_distribution(p, candidates)
        # For fixed candidates the kernel itself must return a distribution.
        assert torch.all(emitted >= -1e-12)
        assert abs(float(emitted.sum()) - 1.0) < ATOL
        total += weight * emitted
    return total


@given(sibling_problems())
def test_sibling_rule_emits_exactly_p(problem):
    _, p, specs = problem
    torch.testing.assert_close(_expected_emission(p, specs), p, atol=ATOL, rtol=0)


@given(sibling_problems())
def test_point_mass_candidates_alone_emit_p_without_averaging(problem):
    """Deterministic candidates involve no draft randomness: each fixed list must give p."""
    _, p, specs = problem
    candidates = [(s[1], None) for s in specs if s[0] == "point"]
    torch.testing.assert_close(emission_distribution(p, candidates), p, atol=ATOL, rtol=0)


@given(sibling_problems())
def test_sibling_steps_are_probabilities(problem):
    _, p, specs = problem
    candidates = [(s[1], None) if s[0] == "point" else (int(torch.argmax(s[1])), s[1]) for s in specs]
    steps = verify.sibling_steps(p, candidates)
    assert len(steps) == len(candidates)
    for step in steps:
        assert 0.0 <= step.accept_prob <= 1.0
        assert step.residual.dtype == torch.float64
        assert torch.all(step.residual >= 0)
        assert abs(float(step.residual.sum()) - 1.0) < ATOL


def test_candidate_step_known_values():
    """Hand-computed: p = (1/2, 1/3, 1/6), q = (1/6, 1/2, 1/3)."""
    p = torch.tensor([1 / 2, 1 / 3, 1 / 6], dtype=torch.float64)
    q = torch.tensor([1 / 6, 1 / 2, 1 / 3], dtype=torch.float64)
    step = verify.candidate_step(p, 1, q)  # min(1, (1/3)/(1/2)) = 2/3
    assert step.accept_prob == pytest.approx(2 / 3, abs=1e-12)
    torch.testing.assert_close(step.residual, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    step = verify.candidate_step(p, 0, q)  # p(0) > q(0): always accepted
    assert step.accept_prob == 1.0
    step = verify.candidate_step(p, 0, None)  # point mass: accept with p(0), then zero it
    assert step.accept_prob == pytest.approx(0.5, abs=1e-12)
    torch.testing.assert_close(step.residual, torch.tensor([0.0, 2 / 3, 1 / 3], dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# b. Tree level: one verification step followed by target sampling is distributed as the target
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slot:
    """One child of a tree node: a deterministic candidate or a token sampled from q(.|path, qid)."""

    sampled: bool
    qid: int  # which draft conditional a sampled child uses (two siblings may share one)
    sub: tuple  # tuple[Slot, ...]: the children of this child


class World:
    """Target and draft conditionals and deterministic proposals, each a function of the token
    path only (filled lazily from a seeded RNG keyed by the path)."""

    def __init__(self, seed: int, vocab: int):
        self.seed, self.vocab = seed, vocab
        self._p: dict = {}
        self._q: dict = {}
        self._det: dict = {}

    def _rng(self, *key) -> random.Random:
        return random.Random(repr((self.seed,) + key))

    def p(self, path: tuple[int, ...]) -> torch.Tensor:
        if path not in self._p:
            self._p[path] = _random_dist(self._rng("p", path), self.vocab)
        return self._p[path]

    def q(self, path: tuple[int, ...], qid: int) -> torch.Tensor:
        key = (path, qid)
        if key not in self._q:
            rng = self._rng("q", path, qid)
            # Sometimes the draft equals the target exactly (the residual is then all zero).
            self._q[key] = self.p(path).clone() if rng.random() < 0.2 else _random_dist(rng, self.vocab)
        return self._q[key]

    def det(self, path: tuple[int, ...], index: int) -> int:
        key = (path, index)
        if key not in self._det:
            rng = self._rng("det", path, index)
            # Half the time the target's most likely token, so deep acceptance paths occur.
            self._det[key] = int(torch.argmax(self.p(path))) if rng.random() < 0.5 else rng.randrange(self.vocab)
        return self._det[key]


def step_distribution(world: World, slots: tuple, path: tuple[int, ...] = (), memo=None) -> dict:
    """Exact distribution of the tokens one verification step emits (accepted path + bonus) below
    a node reached by `path`, using the kernels the SamplingVerifier uses (`verify.sibling_steps`).

    The draws of the sampled children are enumerated with their weights; the subtree of a child
    is a function of (its slots, its path) only, hence the memo.
    """
    memo = {} if memo is None else memo
    key = (slots, path)
    if key in memo:
        return memo[key]
    p = world.p(path)
    sampled_at = [i for i, s in enumerate(slots) if s.sampled]
    out: dict = defaultdict(float)
    for draws in itertools.product(*[_support(world.q(path, slots[i].qid)) for i in sampled_at]):
        weight = 1.0
        drawn = {}
        for i, (x, w) in zip(sampled_at, draws):
            drawn[i] = x
            weight *= w
        candidates = [
            (drawn[i], world.q(path, s.qid)) if s.sampled else (world.det(path, i), None) for i, s in enumerate(slots)
        ]
        steps = verify.sibling_steps(p, candidates)
        reach = weight
        residual = p
        for slot, (token, _), step in zip(slots, candidates, steps):
            accepted = reach * step.accept_prob
            if accepted > 0:
                for tail, w in step_distribution(world, slot.sub, path + (token,), memo).items():
                    out[(token,) + tail] += accepted * w
            reach *= 1.0 - step.accept_prob
            residual = step.residual
        for y, r in enumerate(residual.tolist()):
            if r > 0:
                out[(y,)] += reach * r
    memo[key] = dict(out)
    return memo[key]


def lossless_error(world: World, emitted: dict, depth: int) -> float:
    """max over token sequences t (1 ≤ |t| ≤ depth + 1) of |P(t is a prefix of the step output
    continued by target sampling) − Π_j p(t_j | t_<j)|."""
    cond = {}

    def p(path, token):
        if path not in cond:
            cond[path] = world.p(path).tolist()
        return cond[path][token]

    # mass[t] = P(the step output extends t: len(s) ≥ len(t) and s[:len(t)] == t)
    mass: dict = defaultdict(float)
    for s, w in emitted.items():
        for m in range(1, len(s) + 1):
            mass[s[:m]] += w
    worst = 0.0
    for m in range(1, depth + 2):
        for t in itertools.product(range(world.vocab), repeat=m):
            target = 1.0
            for j in range(m):
                target *= p(t[:j], t[j])
            got = mass.get(t, 0.0)
            # outputs that stop at a proper prefix t[:k], continued by sampling the target
            for k in range(1, m):
                stop = emitted.get(t[:k], 0.0)
                if stop > 0:
                    cont = 1.0
                    for j in range(k, m):
                        cont *= p(t[:j], t[j])
                    got += stop * cont
            worst = max(worst, abs(got - target))
    return worst


def tree_depth(slots: tuple) -> int:
    return 1 + max((tree_depth(s.sub) for s in slots), default=0) if slots else 0


@st.composite
def tree_shapes(draw, depth: int, budget: list[int], root: bool = False):
    """Children slots of one node: up to 3 children, at most 2 of them sampled (bounds the
    enumeration), depth ≤ `depth`. `budget` caps the total number of nodes."""
    if depth == 0 or budget[0] <= 0:
        return ()
    width = min(budget[0], draw(st.sampled_from([1, 2, 3] if root else [0, 1, 1, 2, 2, 3])))
    budget[0] -= width
    slots = []
    sampled = 0
    for _ in range(width):
        is_sampled = sampled < 2 and draw(st.booleans())
        sampled += is_sampled
        sub = draw(tree_shapes(depth - 1, budget))
        slots.append(Slot(is_sampled, draw(st.integers(0, 1)), sub))
    return tuple(slots)


@st.composite
def tree_problems(draw):
    vocab = draw(st.integers(2, 4))
    depth = draw(st.sampled_from([1, 2, 3, 3]))
    shape = draw(tree_shapes(depth, [draw(st.integers(2, 9))], root=True))
    return World(draw(st.integers(0, 2**32 - 1)), vocab), shape


@given(tree_problems())
def test_tree_step_then_target_sampling_is_the_target(problem):
    world, shape = problem
    emitted = step_distribution(world, shape)
    depth = tree_depth(shape)
    assert abs(sum(emitted.values()) - 1.0) < ATOL
    assert all(1 <= len(s) <= depth + 1 for s in emitted)
    assert all(w >= 0 for w in emitted.values())
    assert lossless_error(world, emitted, depth) < ATOL


def test_chain_of_sampled_drafts_is_lossless():
    """A pure chain sampled from q(.|path) (the classic speculative-sampling setting)."""
    chain = ()
    for _ in range(3):
        chain = (Slot(True, 0, chain),)
    for seed in range(5):
        world = World(seed, 4)
        emitted = step_distribution(world, chain)
        assert lossless_error(world, emitted, 3) < ATOL


def test_multi_draft_tree_with_shared_q_is_lossless():
    """Three i.i.d. drafts from the same q at the root, each continued by a sampled token, and
    a deterministic candidate in front of them (the typical mixed tree)."""
    sub = (Slot(True, 0, ()),)
    shape = (Slot(False, 0, sub), Slot(True, 0, sub), Slot(True, 0, sub), Slot(False, 1, ()))
    for seed in range(5):
        world = World(100 + seed, 3)
        assert lossless_error(world, step_distribution(world, shape), 2) < ATOL


# ----------------------------------------------------------------------------------------------
# c. Negative controls: the checks above detect the classic mistakes
# ----------------------------------------------------------------------------------------------
def _residual_is_p(residual, token, draft_probs):
    """Wrong rule: accept as usual, but on rejection keep the residual unchanged (resample p)."""
    right = _correct_candidate_step(residual, token, draft_probs)
    return SiblingStep(right.accept_prob, residual.clone())


_correct_candidate_step = verify.candidate_step


def _residual_from_original_p(target_probs, candidates):
    """Wrong rule: every sibling is tested against the original p, not the running residual."""
    p = target_probs.double()
    return [_correct_candidate_step(p, token, q) for token, q in candidates]


FIXED_P = _as_dist([5, 3, 2])
FIXED_Q = _as_dist([2, 3, 5])


def _fixed_sibling_error() -> float:
    specs = [("sampled", FIXED_Q), ("point", 0), ("sampled", FIXED_Q)]
    return float((_expected_emission(FIXED_P, specs) - FIXED_P).abs().max())


def _fixed_tree_error() -> float:
    world = World(7, 3)
    sub = (Slot(True, 0, ()),)
    shape = (Slot(True, 0, sub), Slot(False, 0, sub), Slot(True, 1, ()))
    return lossless_error(world, step_distribution(world, shape), 2)


def test_controls_pass_with_the_correct_rule():
    assert _fixed_sibling_error() < ATOL
    assert _fixed_tree_error() < ATOL


@pytest.mark.parametrize("wrong", ["residual_is_p", "residual_from_original_p"])
def test_wrong_residual_rule_is_detected(monkeypatch, wrong):
    if wrong == "residual_is_p":
        monkeypatch.setattr(verify, "candidate_step", _residual_is_p)
    else:
        monkeypatch.setattr(verify, "sibling_steps", _residual_from_original_p)
    assert _fixed_sibling_error() > 1e-2
    assert _fixed_tree_error() > 1e-2


def test_accepting_sampled_drafts_unconditionally_is_detected(monkeypatch):
    """Wrong rule: accept a sampled draft whatever p says (i.e. output the draft's q)."""
    monkeypatch.setattr(
        verify,
        "candidate_step",
        lambda r, t, q: SiblingStep(1.0, r) if q is not None else _correct_candidate_step(r, t, q),
    )
    assert _fixed_sibling_error() > 1e-2
    assert _fixed_tree_error() > 1e-2


# ----------------------------------------------------------------------------------------------
# d. Greedy walk
# ----------------------------------------------------------------------------------------------
@st.composite
def greedy_problems(draw):
    vocab = draw(st.integers(2, 4))
    n = draw(st.integers(1, 14))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    tokens = [draw(st.integers(0, vocab - 1)) for _ in range(n)]
    argmax = [draw(st.integers(0, vocab - 1)) for _ in range(n)]
    return vocab, parents, tokens, argmax


def brute_force_greedy(parents, tokens, argmax):
    """Deepest node whose root path follows the argmax at every parent, taking at each parent the
    first child (insertion order) with the argmax token; returns (path nodes, bonus)."""
    best: list[int] = []
    for node in range(1, len(parents)):
        path = []
        n = node
        while n > 0:
            path.append(n)
            n = parents[n]
        path.reverse()
        ok = True
        for c in path:
            par = parents[c]
            first = min(
                (s for s in range(1, len(parents)) if parents[s] == par and tokens[s] == argmax[par]), default=None
            )
            ok &= tokens[c] == argmax[par] and first == c
        if ok:
            assert len(path) != len(best), "two followed paths of the same length cannot exist"
            if len(path) > len(best):
                best = path
    return best, argmax[best[-1] if best else 0]


@given(greedy_problems())
def test_greedy_walk_matches_brute_force(problem):
    vocab, parents, tokens, argmax = problem
    children = [[c for c in range(len(parents)) if parents[c] == n] for n in range(len(parents))]
    assert greedy_walk(children, tokens, argmax) == brute_force_greedy(parents, tokens, argmax)

    # The greedy verifier plugin on the same tree, with logits whose argmax is `argmax`.
    builder = TreeBuilder(tokens[0])
    for i in range(1, len(parents)):
        assert builder.add(parents[i], tokens[i], "lvl") == i
    tree = builder.build()
    logits = torch.randn(len(parents), vocab, generator=torch.Generator().manual_seed(len(parents)))
    logits[torch.arange(len(parents)), torch.tensor(argmax)] = 10.0
    verdict = GreedyVerifier().verify(tree, logits, SamplingParams(), None)
    nodes, bonus = brute_force_greedy(parents, tokens, argmax)
    assert verdict.accepted_nodes == tuple(nodes)
    assert verdict.accepted_tokens == tuple(tokens[n] for n in nodes)
    assert verdict.bonus_token == bonus
    # What greedy emits is exactly what argmax decoding along the path would produce.
    node = 0
    for n, t in zip(verdict.accepted_nodes, verdict.accepted_tokens):
        assert parents[n] == node and t == argmax[node]
        node = n
    assert verdict.bonus_token == argmax[node]


def test_greedy_walk_prefers_first_duplicate_child():
    # root(0) -> 1 (token 2), 2 (token 2) ; node 2 has a matching child, node 1 does not.
    children = [[1, 2], [], [3], []]
    tokens = [0, 2, 2, 1]
    argmax = [2, 0, 1, 3]
    assert greedy_walk(children, tokens, argmax) == ([1], 0)


def test_greedy_walk_chain_example():
    # A chain 0 -> 1 -> 2 -> 3 that matches twice, then diverges.
    children = [[1], [2], [3], []]
    tokens = [9, 4, 5, 6]
    argmax = [4, 5, 7, 8]
    assert greedy_walk(children, tokens, argmax) == ([1, 2], 7)
