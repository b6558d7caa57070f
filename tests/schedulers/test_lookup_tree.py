"""`lookup_tree`: several prompt-lookup matches verified as one tree. The index's multi-match
look-up against a brute-force oracle, the merged tree and its cost-aware trimming with fake levels
and a fake cost table (no model), and greedy identity with plain decoding on tiny models and the
stories fixture."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas_spec import load_pipeline
from cas_spec.core.cost_model import UNCALIBRATED, CostView
from cas_spec.core.interfaces import DraftStrategy
from cas_spec.core.levels import Level
from cas_spec.core.state import DecodingState
from cas_spec.core.types import Candidate, DraftResult, SamplingParams, StepTimings, Verdict
from cas_spec.schedulers.lookup_tree import (
    LookupTreeOptions,
    LookupTreeScheduler,
    MatchEstimate,
    Proposal,
    best_tree_size,
    merged_tree,
)
from cas_spec.strategies.prompt_lookup import Match, NgramIndex, PromptLookup, PromptLookupOptions
from tests.helpers import AUTOREGRESSIVE, IdTokenizer, record_trees, repetitive_prompt, tiny_llama

# -- the index: several matches --------------------------------------------------------------------


def oracle_candidates(tokens: list[int], min_ngram: int, max_ngram: int, occurrences: int, count: int) -> list[Match]:
    """Longest n first; per n the `occurrences` latest ends e (n ≤ e ≤ len − 1) whose n-gram equals
    the suffix, latest first; ends already taken by a longer n skipped (occurrence index kept)."""
    out, seen = [], set()
    L = len(tokens)
    for n in range(max_ngram, min_ngram - 1, -1):
        if L <= n:
            continue
        ends = sorted((e for e in range(n, L) if tokens[e - n : e] == tokens[L - n :]), reverse=True)
        for j, e in enumerate(ends[:occurrences]):
            if e not in seen and len(out) < count:
                seen.add(e)
                out.append(Match(e, n, j))
    return out


@settings(max_examples=200)
@given(
    text=st.lists(st.integers(0, 3), max_size=60),
    min_ngram=st.integers(1, 3),
    extra=st.integers(0, 3),
    occurrences=st.integers(1, 4),
    count=st.integers(1, 8),
    cut=st.integers(0, 60),
)
def test_candidates_match_a_brute_force_oracle_as_the_index_grows(text, min_ngram, extra, occurrences, count, cut):
    index = NgramIndex(min_ngram, min_ngram + extra, occurrences)
    index.extend(text[:cut])  # grown in two parts: incremental indexing keeps the earlier ends
    index.extend(text)
    got = index.candidates(text, count)
    assert got == oracle_candidates(text, min_ngram, min_ngram + extra, occurrences, count)
    first = index.lookup(text)
    assert (got[0].end, got[0].n) == first if got else first is None
    single = NgramIndex(min_ngram, min_ngram + extra)
    single.extend(text)
    assert single.tables == index.tables  # keeping earlier occurrences leaves the latest alone
    assert all(len(ends) < occurrences for table in index.earlier.values() for ends in table.values())


def test_prompt_lookup_candidates_are_drafts_from_each_match():
    A, B, C, D, E, X = 11, 22, 33, 44, 55, 99
    text = [A, B, C, X, A, B, D, E, A, B, E, B, A, B]
    strategy = PromptLookup(PromptLookupOptions(min_ngram=1, max_ngram=2, num_tokens=3))
    strategy.offer_candidates(3)
    state = DecodingState(tokens=list(text), prompt_length=len(text), sampling=SamplingParams(), generator=None)
    strategy.start(state)
    got = strategy.candidates(state, (), 3, 4)
    assert [c.key for c in got] == [(2, 0), (2, 1), (2, 2), (1, 0)]
    assert [c.draft.tokens for c in got] == [(E, B, A), (D, E, A), (C, X, A), (A, B, A)]
    assert got[0].draft == strategy.draft(state, (), 3)  # the first is exactly the single-match draft
    assert all(c.draft.confidence == (float(c.key[0]),) * 3 for c in got)
    assert strategy.candidates(state, (), 0, 4) == []
    plain = PromptLookup(PromptLookupOptions(min_ngram=1, max_ngram=2, num_tokens=3))
    plain.start(state)
    assert len(plain.candidates(state, (), 3, 4)) == 2  # one occurrence kept per n-gram by default


# -- fake levels ----------------------------------------------------------------------------------


class Scripted(DraftStrategy):
    """A lookup-like strategy whose candidates are given per call."""

    name = "scripted"
    offers_candidates = True

    def __init__(self, proposals):
        super().__init__()
        self.proposals, self.kept = proposals, 1

    def offer_candidates(self, count):
        self.kept = count

    def draft(self, state, prefix, max_tokens):
        found = self.candidates(state, prefix, max_tokens, 1)
        return found[0].draft if found else DraftResult(tokens=())

    def candidates(self, state, prefix, max_tokens, count):
        out = []
        for j, tokens in enumerate(self.proposals[:count]):
            n = 3 if j == 0 else 2
            out.append(
                Candidate(
                    (n, j),
                    DraftResult(
                        tokens=tuple(tokens[:max_tokens]), confidence=(float(n),) * min(len(tokens), max_tokens)
                    ),
                )
            )
        return out


class Table:
    def __init__(self, fn):
        self.fn = fn

    def cost(self, n, context=0):
        return self.fn(n)


def make(proposals, *, costs=None, max_depth=16, **options):
    strategy = Scripted(proposals)
    level = Level("pld", strategy)
    scheduler = LookupTreeScheduler(LookupTreeOptions(**options), [level])
    state = DecodingState(
        tokens=[7] * 20,
        prompt_length=20,
        sampling=SamplingParams(),
        generator=None,
        costs=CostView(costs) if costs is not None else UNCALIBRATED,
        context_length=19,
        max_depth=max_depth,
    )
    scheduler.start(state)
    return scheduler, level, state


def step(scheduler, state, truth):
    """Build, verify greedily against the target continuation `truth`, observe."""
    tree = scheduler.build_tree(state)
    tokens = tree.tokens.tolist()
    node, path = 0, []
    while True:
        want = truth[len(path)]
        nxt = next((c for c in tree.children[node] if tokens[c] == want), None)
        if nxt is None:
            break
        path.append(nxt)
        node = nxt
    verdict = Verdict(tuple(path), tuple(tokens[n] for n in path), truth[len(path)])
    scheduler.observe(tree, verdict, StepTimings(0.0, 0.01, 0.01))
    return tree


def paths(tree) -> set[tuple[int, ...]]:
    tokens = tree.tokens.tolist()
    out = set()
    for leaf in range(1, tree.size):
        if not tree.children[leaf]:
            path, node = [], leaf
            while node > 0:
                path.append(tokens[node])
                node = tree.parents[node]
            out.add(tuple(reversed(path)))
    return out


# -- the tree -------------------------------------------------------------------------------------


def test_candidates_are_merged_by_shared_prefix():
    scheduler, level, state = make([[1, 2, 3], [1, 2, 4], [5, 6], [1, 2, 3]], candidates=4, k=3)
    tree = scheduler.build_tree(state)
    assert tree.size == 1 + 6  # 1, 2, 3, 4, 5, 6: shared prefixes and the duplicate merged
    assert paths(tree) == {(1, 2, 3), (1, 2, 4), (5, 6)}
    tokens = tree.tokens.tolist()
    for node in range(tree.size):  # a token appears at most once under each parent
        kids = [tokens[c] for c in tree.children[node]]
        assert len(kids) == len(set(kids))
    assert tree.levels[1:] == ("pld",) * 6 and tree.confidence[1] == 3.0
    assert level.calls == 1 and level.proposed == 11
    assert scheduler.level.strategy.kept == 4  # the index keeps as many occurrences as candidates


def test_candidates_k_max_nodes_and_max_depth_are_respected():
    proposals = [[1, 2, 3, 4, 5, 6], [1, 9, 9, 9], [8, 8, 8, 8], [7, 7]]
    scheduler, _, state = make(proposals, candidates=2, k=4)
    assert paths(scheduler.build_tree(state)) == {(1, 2, 3, 4), (1, 9, 9, 9)}
    scheduler, _, state = make(proposals, candidates=4, k=6, max_nodes=6)
    tree = scheduler.build_tree(state)
    assert tree.size == 6
    scheduler, _, state = make(proposals, candidates=4, k=6, max_depth=2)
    tree = scheduler.build_tree(state)
    assert int(tree.depths.max()) == 2 and tree.size == 1 + 7
    state.max_depth = 0
    assert scheduler.build_tree(state).size == 1
    scheduler, level, state = make(proposals, max_nodes=1)
    assert scheduler.build_tree(state).size == 1 and level.calls == 0


def test_without_a_cost_table_the_highest_valued_nodes_are_kept():
    scheduler, _, state = make([[1, 2, 3, 4], [5, 6, 7, 8]], k=4, max_nodes=5)
    for _ in range(6):  # the first candidate is always right, the second always wrong
        step(scheduler, state, [1, 2, 3, 4, 0])
    assert scheduler.alpha((3, 0)) > 0.9 and scheduler.alpha((2, 1)) < 0.2
    tree = scheduler.build_tree(state)
    assert paths(tree) == {(1, 2, 3, 4)} and tree.is_chain


def test_a_tree_that_does_not_pay_falls_back_to_the_chain_of_the_best_match():
    # A CPU-like step cost: odd sizes penalised, larger forwards dearer.
    cpu = Table(lambda n: {1: 1.0, 2: 1.7, 3: 2.16, 4: 1.79, 5: 1.95}.get(n, 2.0 + 0.06 * (n - 6)))
    proposals = [[1, 2, 3, 4, 5], [9, 8, 7, 6, 5], [1, 2, 6, 6, 6]]
    scheduler, _, state = make(proposals, costs=cpu, k=5)
    for _ in range(8):  # the longest, most recent match is right; the others never are
        tree = step(scheduler, state, [1, 2, 3, 4, 5, 0])
    assert tree.is_chain and paths(tree) == {(1, 2, 3, 4, 5)}


def test_a_tree_is_verified_where_the_alternatives_pay():
    flat = Table(lambda n: 1.0 + 0.01 * (n - 1))  # nearly free extra nodes
    proposals = [[1, 2, 3, 4, 5], [9, 8, 7, 6, 5]]
    scheduler, _, state = make(proposals, costs=flat, k=5)
    truths = [[1, 2, 3, 4, 5, 0], [9, 8, 7, 6, 5, 0]]
    for i in range(10):  # each candidate right half the time
        tree = step(scheduler, state, truths[i % 2])
    assert paths(tree) == {(1, 2, 3, 4, 5), (9, 8, 7, 6, 5)}
    assert tree.size > int(tree.depths.max()) + 1


def test_drafting_that_never_pays_becomes_a_plain_step_and_recovers():
    linear = Table(lambda n: float(n))  # a forward over n tokens costs n: no draft can pay
    scheduler, _, state = make([[1, 2, 3]], costs=linear, k=3)
    assert step(scheduler, state, [1, 2, 3, 0]).size == 1
    cheap = Table(lambda n: 1.0 + 0.2 * (n - 1))
    scheduler, _, state = make([[1, 2, 3]], costs=cheap, k=3)
    for _ in range(5):  # the candidate is always wrong: α falls, steps become plain
        tree = step(scheduler, state, [4, 4, 4, 0])
    assert tree.size == 1
    for _ in range(8):  # learnt from the bonus token alone while plain: drafting comes back
        tree = step(scheduler, state, [1, 2, 3, 0])
    assert tree.size == 4


def test_estimates_learn_from_every_proposal_censored_at_what_was_committed():
    estimate = MatchEstimate()
    assert estimate.alpha == 0.5
    estimate.update(3, False, 0.8)  # 3 of 3 matched (censored: no failure)
    assert estimate.alpha == pytest.approx(3.5 / 4)
    estimate.update(0, True, 0.8)
    assert estimate.alpha == pytest.approx((2.4 + 0.5) / (2.4 + 1 + 1))
    scheduler, _, state = make([[1, 2, 3], [1, 5, 5]], max_nodes=2, k=3)
    step(scheduler, state, [1, 5, 0, 0])  # only node "1" verified; the bonus 5 tells candidate 2 was right
    assert scheduler.estimates[(3, 0)].failures == 1 and scheduler.estimates[(3, 0)].successes == 1
    assert scheduler.estimates[(2, 1)].failures == 0 and scheduler.estimates[(2, 1)].successes == 2


def test_values_siblings_share_their_parents_probability():
    proposals = [Proposal((3, 0), (1, 2), 3.0), Proposal((2, 0), (5, 6), 2.0), Proposal((2, 1), (1, 7), 2.0)]
    tree = merged_tree(0, proposals, [0.9, 0.9, 0.5], "pld", 16)
    assert tree.size == 6
    # root's children 1 (0.9) and 5 (raw 0.9, capped at 1 − 0.9 = 0.1); under 1: 2 (0.81) and 7
    # (raw 0.25, capped at 0.9 − 0.81): with room for three nodes, 1, 2 and 5 are kept
    assert paths(merged_tree(0, proposals, [0.9, 0.9, 0.5], "pld", 4)) == {(1, 2), (5,)}


@given(st.lists(st.floats(0.0, 1.0), max_size=12), st.lists(st.floats(1.0, 3.0), min_size=13, max_size=13))
def test_best_tree_size_maximises_expected_tokens_per_cost(values, table):
    values = sorted(values, reverse=True)
    cost = lambda n, context: table[n - 1]  # noqa: E731
    best = best_tree_size(values, cost, 0)
    ratios = [(1 + sum(values[:s])) / cost(s + 1, 0) for s in range(len(values) + 1)]
    assert ratios[best] == pytest.approx(max(ratios))


def test_a_level_without_candidates_gives_a_chain():
    class Echo(DraftStrategy):
        name = "echo"

        def draft(self, state, prefix, max_tokens):
            return DraftResult(tokens=tuple(range(10, 10 + max_tokens)))

    scheduler = LookupTreeScheduler(LookupTreeOptions(k=4), [Level("echo", Echo())])
    state = DecodingState(
        tokens=[7] * 5, prompt_length=5, sampling=SamplingParams(), generator=None, context_length=4, max_depth=8
    )
    scheduler.start(state)
    tree = scheduler.build_tree(state)
    assert tree.is_chain and tree.tokens.tolist()[1:] == [10, 11, 12, 13]


# -- greedy identity on models --------------------------------------------------------------------


def branching_prompt(seed: int, vocab: int) -> list[int]:
    """A motif that occurs three times with different continuations, then its start again."""
    import torch

    g = torch.Generator().manual_seed(seed)
    motif = torch.randint(3, vocab, (4,), generator=g).tolist()
    parts = [torch.randint(3, vocab, (6,), generator=g).tolist() for _ in range(4)]
    return parts[0] + motif + parts[1] + motif + parts[2] + motif + parts[3] + motif[:3]


def lookup(**options) -> dict:
    return {
        "scheduler": {"kind": "lookup_tree", "options": {"level": "pld", **options}},
        "calibration": "off",
        "levels": [{"name": "pld", "kind": "prompt_lookup", "options": {"max_ngram": 3, "min_ngram": 1}}],
    }


CPU_COSTS = Table(lambda n: {1: 1.0, 2: 1.7, 3: 2.16, 4: 1.79}.get(n, 1.79 + 0.04 * (n - 4)))


@pytest.mark.parametrize("costs", [None, CPU_COSTS], ids=["full_trees", "cost_aware"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_output_equals_plain_decoding_on_tiny_models(family, costs):
    seen_all = []
    for seed in (0, 1, 2):
        model = tiny_llama(seed, family=family, layers=2)
        for prompt in (
            branching_prompt(seed, model.config.vocab_size),
            repetitive_prompt(seed, model.config.vocab_size),
        ):
            plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer()).generate(
                prompt, max_new_tokens=40
            )
            pipe = load_pipeline(lookup(candidates=4, k=5), model=model, tokenizer=IdTokenizer())
            pipe.costs = CostView(costs) if costs is not None else UNCALIBRATED
            seen = record_trees(pipe)
            got = pipe.generate(prompt, max_new_tokens=40)
            assert got.token_ids == plain.token_ids, (seed, prompt)
            seen_all += seen
    assert any(tree.size > int(tree.depths.max()) + 1 for tree, _ in seen_all)  # trees with branches
    assert sum(len(v.accepted_nodes) for _, v in seen_all) > 0


def test_greedy_output_equals_plain_decoding_on_stories(stories):
    model, tokenizer = stories
    prompt = (
        "Once upon a time, there was a little girl named Lily. She loved to play with her ball. "
        "One day, Lily saw a big dog. Lily was scared of the dog. Lily saw a big cat. She"
    )
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=tokenizer).generate(
        prompt, max_new_tokens=60, chat=False
    )
    pipe = load_pipeline(lookup(candidates=4, k=5), model=model, tokenizer=tokenizer)
    seen = record_trees(pipe)
    got = pipe.generate(prompt, max_new_tokens=60, chat=False)
    assert got.token_ids == plain.token_ids
    assert got.stats.mean_acceptance_length > 1.0
    assert any(tree.size > int(tree.depths.max()) + 1 for tree, _ in seen)
