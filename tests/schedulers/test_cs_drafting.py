"""The `cs_drafting` scheduler: the recursion and k-matrix with fake levels (no model), leniency,
the vertical-only and horizontal-only baselines, max_depth, option validation, the exact law of
lenient intermediate reviews, greedy identity on tiny models and stories, and seeded sampling.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from cas_spec import load_pipeline
from cas_spec.core.config import load_config
from cas_spec.core.errors import ConfigError
from cas_spec.core.interfaces import DraftStrategy
from cas_spec.core.levels import Level
from cas_spec.core.state import DecodingState
from cas_spec.core.types import DraftResult, SamplingParams
from cas_spec.schedulers.cs_drafting import CSDraftingScheduler, default_k_matrix, increments, lenient_step
from cas_spec.testing.stats import chi2_critical, chi2_goodness
from cas_spec.verifiers.sampling import SamplingVerifier
from tests.helpers import AUTOREGRESSIVE, IdTokenizer, repetitive_prompt, tiny_llama

V = 16
MAG_TOKEN = 3
PAPER_K = [[5, 14, 10], [0, 1, 10], [0, 0, 10]]  # FLAN-T5 config of the official code (increments)


# -- fake levels ---------------------------------------------------------------------------------
class FakeMaG(DraftStrategy):
    """A lookup level: proposes MAG_TOKEN as often as asked (the code's MaG always fills 10)."""

    name = "fake_mag"

    def __init__(self):
        super().__init__()
        self.asked: list[int] = []

    def draft(self, state, prefix, max_tokens):
        self.asked.append(max_tokens)
        return DraftResult(tokens=(MAG_TOKEN,) * max_tokens, confidence=(1.0,) * max_tokens)


class FakeModel(DraftStrategy):
    """A model level whose review puts `p_draft` on each reviewed token and p_own on its own token
    (0.5: its argmax, while p_draft < 0.5), the rest spread evenly; drafting directly proposes
    its own token."""

    name = "fake_model"
    deterministic = False
    can_review = True

    def __init__(self, own: int, p_draft: float = 0.1):
        super().__init__()
        self.own, self.p_draft = own, p_draft
        self.p_own = 0.5 if p_draft < 0.5 else (1.0 - p_draft) / 2
        self.reviewed: list[int] = []

    def review(self, state, prefix, tokens):
        self.reviewed.append(len(tokens))
        rows = torch.zeros(len(tokens) + 1, V)
        for j, token in enumerate(tokens):
            rows[j, token] = self.p_draft
        rows[:, self.own] += self.p_own
        rows += (1.0 - rows.sum(-1, keepdim=True)) / V
        return rows

    def draft(self, state, prefix, max_tokens):
        return DraftResult(tokens=(self.own,) * max_tokens, confidence=(0.9,) * max_tokens)


def cascade(max_depth: int = 100, p_draft: float = 0.1, **options):
    """base (own token 5) > small (6) > mag, with the paper's k-matrix unless given."""
    strategies = {"base": FakeModel(5, p_draft), "small": FakeModel(6, p_draft), "mag": FakeMaG()}
    levels = [Level(name, s) for name, s in strategies.items()]
    options.setdefault("k_matrix", PAPER_K)
    scheduler = CSDraftingScheduler(CSDraftingScheduler.Options(**options), levels)
    state = DecodingState(
        tokens=[1, 2], prompt_length=2, sampling=SamplingParams(), generator=None, context_length=1, max_depth=max_depth
    )
    scheduler.start(state)
    tree = scheduler.build_tree(state)
    return tree, strategies, {level.name: level for level in levels}


def runs(tree) -> list[tuple[str, int]]:
    """The chain's levels as (level, run length) pairs."""
    out: list[tuple[str, int]] = []
    for name in tree.levels[1:]:
        if out and out[-1][0] == name:
            out[-1] = (name, out[-1][1] + 1)
        else:
            out.append((name, 1))
    return out


# -- the paper's worked example ------------------------------------------------------------------
def test_worked_example_of_the_official_config_when_every_review_rejects():
    """notes/papers.md §2.3: K = [[5,14,10],[0,1,10],[0,0,10]] over (base, small, MaG). The target's
    call takes base-reviewed output until 5 tokens, small-reviewed output until 5 + 14 = 19, MaG's
    until 29. Inside base's calls small reviews MaG until 1 token, then MaG fills until 1 + 10.
    Reviews that reject at once yield one token each: 5 from base, 14 from small, then 10 from MaG."""
    tree, s, levels = cascade(leniency=1.0)
    assert runs(tree) == [("base", 5), ("small", 14), ("mag", 10)]
    assert tree.is_chain and tree.size == 30
    assert s["base"].reviewed == [11] * 5  # small's 1 token + MaG's 10, reviewed by base
    assert s["small"].reviewed == [10] * 19  # 5 calls inside base's, 14 in the target's
    assert s["mag"].asked == [10] * 25  # 2 per base call, 1 per small call, 1 last
    assert levels["base"].calls == 5 and levels["small"].calls == 19 and levels["mag"].calls == 25


def test_worked_example_when_every_review_accepts():
    """Reviews that accept everything add their bonus token: MaG 10 + small + base (12 ≥ 5), then
    MaG 10 + small (23 ≥ 19), then MaG 10 (33 ≥ 29)."""
    tree, s, _ = cascade(p_draft=0.9)
    assert runs(tree) == [("mag", 10), ("small", 1), ("base", 1), ("mag", 10), ("small", 1), ("mag", 10)]
    assert s["base"].reviewed == [11] and s["small"].reviewed == [10, 10]
    assert tree.confidence[1] == pytest.approx(0.9 + 0.05 / V)  # base's probability of the MaG token


def test_cumulative_k_matrix_of_the_paper_is_the_same_cascade():
    assert increments([[5, 19, 29], [0, 1, 11], [0, 0, 10]], "cumulative") == PAPER_K
    a, _, _ = cascade(k_matrix=[[5, 19, 29], [0, 1, 11], [0, 0, 10]], k_form="cumulative", leniency=1.0)
    b, _, _ = cascade(leniency=1.0)
    assert a.levels == b.levels and torch.equal(a.tokens, b.tokens)


def test_default_k_matrix_is_the_official_codes():
    assert default_k_matrix(2) == [[5, 10], [0, 10]]
    assert default_k_matrix(3) == PAPER_K
    assert default_k_matrix(4) == [[5, 14, 14, 10], [0, 1, 10, 10], [0, 0, 1, 10], [0, 0, 0, 10]]


# -- leniency ------------------------------------------------------------------------------------
@pytest.mark.parametrize("p_draft, accepted_from", [(0.4, 3.0), (0.3, 4.0)])
def test_leniency_one_is_exact_and_larger_leniency_accepts_more(p_draft, accepted_from):
    """A drafted token with reviewer probability p_draft below the argmax's 0.5: rejected at l = 1
    (greedy: argmax only), kept once p_draft > q/l (q = 1 for MaG, then q = p_draft)."""
    kept = {}
    for leniency in (1.0, 2.0, 3.0, 4.0):
        tree, _, _ = cascade(p_draft=p_draft, leniency=leniency)
        kept[leniency] = sum(name == "mag" for name in tree.levels)
    assert kept[1.0] == 10  # only the last, unreviewed MaG segment
    assert all(kept[a] <= kept[b] for a, b in zip((1.0, 2.0, 3.0), (2.0, 3.0, 4.0)))
    assert kept[accepted_from] == 30 and all(kept[lv] == 10 for lv in kept if lv < accepted_from)


# -- the baselines and limits -------------------------------------------------------------------
def test_vertical_only_uses_the_first_entry_of_each_row():
    rejecting, s, _ = cascade(cascade="vertical", leniency=1.0)
    assert runs(rejecting) == [("base", 5)]  # MaG → small → base, one token per top-level step
    assert s["small"].reviewed == [10] * 5 and s["mag"].asked == [10] * 5
    accepting, _, _ = cascade(cascade="vertical", p_draft=0.9)
    assert runs(accepting) == [("mag", 10), ("small", 1), ("base", 1)]


def test_horizontal_only_drafts_the_top_row_directly_without_reviews():
    tree, s, _ = cascade(cascade="horizontal")
    assert runs(tree) == [("base", 5), ("small", 14), ("mag", 10)]
    assert s["base"].reviewed == [] and s["small"].reviewed == []


@pytest.mark.parametrize("mode", ["both", "vertical", "horizontal"])
@pytest.mark.parametrize("max_depth", [0, 1, 7, 12])
def test_max_depth_is_respected(mode, max_depth):
    for p_draft in (0.1, 0.9):
        free, _, _ = cascade(cascade=mode, p_draft=p_draft)
        tree, s, _ = cascade(max_depth=max_depth, cascade=mode, p_draft=p_draft)
        assert tree.size - 1 == min(max_depth, free.size - 1)
        assert torch.equal(tree.tokens, free.tokens[: tree.size])  # with these fakes: a cut of the free chain
        assert all(asked <= max_depth for asked in s["mag"].asked)
        assert all(n <= max_depth for n in s["base"].reviewed + s["small"].reviewed)


def test_a_lookup_that_finds_nothing_hands_over_to_the_next_entry():
    class Empty(DraftStrategy):
        name = "empty"

        def draft(self, state, prefix, max_tokens):
            return DraftResult(tokens=())

    levels = [Level("model", FakeModel(5, 0.9)), Level("pld", Empty()), Level("mag", FakeMaG())]
    scheduler = CSDraftingScheduler(
        CSDraftingScheduler.Options(k_matrix=[[2, 3, 4], [0, 3, 4], [0, 0, 4]], lookup_tokens=None), levels
    )
    state = DecodingState(
        tokens=[1, 2], prompt_length=2, sampling=SamplingParams(), generator=None, context_length=1, max_depth=50
    )
    tree = scheduler.build_tree(state)
    # model's call: pld (nothing) → MaG up to 3 + 4 = 7; model reviews, + bonus = 8 ≥ 2; pld nothing;
    # MaG up to 2 + 3 + 4 = 9.
    assert runs(tree) == [("mag", 7), ("model", 1), ("mag", 1)]


# -- options ------------------------------------------------------------------------------------
def config(**options):
    return {
        "model": "smollm2-135m",
        "calibration": "off",
        "scheduler": {"kind": "cs_drafting", "options": options},
        "levels": [{"name": "a", "kind": "prompt_lookup"}, {"name": "b", "kind": "max_gram"}],
    }


@pytest.mark.parametrize(
    "options, message",
    [
        ({"k_matrix": [[1, 2, 3], [0, 1, 1], [0, 0, 1]]}, "scheduler.options.k_matrix: expected 2 × 2"),
        ({"k_matrix": [[1, 2], [0]]}, "k_matrix must be square"),
        ({"k_matrix": [[1, 2], [1, 1]]}, "row 1: entries left of the diagonal are unused and must be 0"),
        ({"k_matrix": [[1, -2], [0, 1]]}, "row 0 has a negative entry"),
        ({"k_matrix": [[3, 2], [0, 1]], "k_form": "cumulative"}, "cumulative entries must not decrease"),
        ({"order": ["a", "c"]}, "scheduler.options.order: no level named 'c'; levels: a, b"),
        ({"order": ["a", "a"]}, "scheduler.options.order: level 'a' is listed more than once"),
        (
            {"order": ["b"], "k_matrix": [[1, 2], [0, 1]]},
            "expected 1 × 1 (one row and one column per level in order: b)",
        ),
        ({"leniency": 0.5}, "scheduler.options.leniency: Input should be greater than or equal to 1"),
        ({"cascade": "diagonal"}, "scheduler.options.cascade: Input should be 'both', 'vertical' or 'horizontal'"),
        ({"lookup_tokens": 0}, "scheduler.options.lookup_tokens: Input should be greater than or equal to 1"),
    ],
)
def test_option_problems_name_their_location(options, message):
    with pytest.raises(ConfigError) as info:
        load_config(config(**options))
    assert message in str(info.value)


def test_the_preset_validates_and_orders_max_gram_last():
    preset = load_config("cs-drafting")
    assert preset.scheduler.kind == "cs_drafting" and preset.levels[-1].kind == "max_gram"
    assert load_config(config(order=["b", "a"], k_matrix=[[2, 3], [0, 4]])).scheduler.options["order"] == ["b", "a"]


# -- exact algebra of a lenient intermediate review ---------------------------------------------
def distributions(size: int = 6):
    """Random distributions with some probability-zero tokens (top-k, top-p)."""
    weights = st.lists(st.one_of(st.just(0.0), st.floats(0.01, 1.0)), min_size=size, max_size=size)
    return weights.filter(lambda w: sum(w) > 0).map(lambda w: torch.tensor(w, dtype=torch.float64) / sum(w))


@given(distributions(), distributions(), st.integers(0, 5), st.sampled_from([1.0, 1.5, 3.0, 10.0]), st.booleans())
def test_lenient_review_emits_exactly_the_recorded_law(p, q, token, leniency, point_mass):
    """Σ_x q(x) [a(x) δ_x + (1 − a(x)) r] = the law handed on; at l = 1 it is the reviewer's p."""
    if point_mass:
        q = torch.zeros(6, dtype=torch.float64)
        q[token] = 1.0
    candidates = [(x, None if point_mass else q) for x in range(6) if q[x] > 0]
    emitted = torch.zeros(6, dtype=torch.float64)
    laws = []
    for x, row in candidates:
        accept, law, residual = lenient_step(p, row, x, leniency)
        residual = residual()
        assert 0.0 <= accept <= 1.0 and float(residual.sum()) == pytest.approx(1.0)
        if p[x] > 0:
            assert accept > 0
        emitted += q[x] * (1 - accept) * residual
        emitted[x] += q[x] * accept
        laws.append(law)
    for law in laws:  # the law does not depend on which token was drawn
        torch.testing.assert_close(law, laws[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(emitted, laws[0], atol=1e-9, rtol=0)
    assert float(laws[0].sum()) == pytest.approx(1.0)
    if leniency == 1.0:
        torch.testing.assert_close(laws[0], p, atol=1e-9, rtol=0)


def test_tree_mode_adds_the_strongest_reviewers_runners_up_as_siblings():
    """Tr+VC: positions that base reviewed get its runners-up as point-mass siblings (SWIFT's
    widths: base's top-1 probability 0.5 gives 8 candidates in all); the chain is unchanged."""
    chain, _, _ = cascade(leniency=1.0)
    tree, _, _ = cascade(leniency=1.0, tree=True, max_nodes=64)
    assert not tree.is_chain and tree.size > chain.size
    first = tree.children[0]
    assert int(tree.tokens[first[0]]) == int(chain.tokens[1])  # the chain token is tried first
    assert len(first) == 8 and all(tree.draft_probs[c] is None for c in first[1:])
    capped, _, _ = cascade(leniency=1.0, tree=True, max_nodes=12)
    assert capped.size == 12


def test_leniency_also_loosens_sampling_reviews():
    """At temperature 1 a reviewer accepts a MaG token (a point mass) with probability
    min(1, l · p_R(x)): with p_R = 0.1, three times as often at l = 3 as at l = 1."""

    def kept(leniency: float) -> float:
        strategies = {"base": FakeModel(5, 0.1), "small": FakeModel(6, 0.1), "mag": FakeMaG()}
        levels = [Level(name, strategy) for name, strategy in strategies.items()]
        scheduler = CSDraftingScheduler(CSDraftingScheduler.Options(k_matrix=PAPER_K, leniency=leniency), levels)
        generator = torch.Generator().manual_seed(0)
        state = DecodingState(
            tokens=[1, 2],
            prompt_length=2,
            sampling=SamplingParams(temperature=1.0),
            generator=generator,
            context_length=1,
            max_depth=100,
        )
        scheduler.start(state)
        trees = [scheduler.build_tree(state) for _ in range(200)]
        # MaG tokens that survived a review: beyond the last, unreviewed MaG segment of 10
        return sum(tree.levels.count("mag") - 10 for tree in trees) / len(trees)

    assert kept(3.0) > 2.0 * kept(1.0) > 0


# -- sampling exactness with fake levels (no model) ---------------------------------------------
class Markov(DraftStrategy):
    """A model level with first-order Markov distributions: row = table[previous token]."""

    name = "markov"
    deterministic = False
    can_review = True

    def __init__(self, table):
        super().__init__()
        self.table = table

    def review(self, state, prefix, tokens):
        context = [state.tokens[-1], *prefix, *tokens]
        return self.table[torch.tensor(context[len(prefix) :])]

    def draft(self, state, prefix, max_tokens):
        raise AssertionError("model levels only review in the full cascade")


class Cycle(DraftStrategy):
    """A deterministic lookup: previous token + 1 (mod V), then again."""

    name = "cycle"

    def draft(self, state, prefix, max_tokens):
        last, out = ([state.tokens[-1], *prefix])[-1], []
        for _ in range(max_tokens):
            last = (last + 1) % 5
            out.append(last)
        return DraftResult(tokens=tuple(out))


@pytest.mark.slow
@pytest.mark.parametrize("leniency, pass_laws", [(1.0, True), (3.0, True), (3.0, False)])
def test_fake_cascade_sampling_gives_the_target_distribution(leniency, pass_laws):
    """Two Markov reviewers over a deterministic lookup, target verification by the sampling
    verifier, two tokens generated: their joint law is the target's at any leniency."""
    vocab, g = 5, torch.Generator().manual_seed(0)

    def table(sharp):
        return torch.softmax(sharp * torch.randn(vocab, vocab, generator=g, dtype=torch.float64), -1)

    target, big, small = table(2.0), table(2.0), table(2.0)
    big = 0.5 * big + 0.5 * target  # drafters that agree with the target often enough
    levels = [Level("big", Markov(big)), Level("small", Markov(small)), Level("cycle", Cycle())]
    scheduler = CSDraftingScheduler(
        CSDraftingScheduler.Options(k_matrix=[[2, 1, 1], [0, 1, 2], [0, 0, 2]], leniency=leniency, pass_laws=pass_laws),
        levels,
    )
    verifier, sampling = SamplingVerifier(), SamplingParams(temperature=1.0)
    runs_, counts, drafted = 10000, Counter(), 0
    generator = torch.Generator().manual_seed(1)
    for _ in range(runs_):
        state = DecodingState(
            tokens=[0], prompt_length=1, sampling=sampling, generator=generator, context_length=0, max_depth=1
        )
        out: list[int] = []
        while len(out) < 2:
            state.max_depth = 2 - len(out)  # the engine's budget for 3 new tokens; 2 are counted
            tree = scheduler.build_tree(state)
            drafted += tree.size - 1
            logits = torch.log(target[tree.tokens]).float()
            verdict = verifier.verify(tree, logits, sampling, generator)
            out += verdict.new_tokens
            state.tokens += verdict.new_tokens
        counts[tuple(out[:2])] += 1
    exact = {(a, b): float(target[0, a] * target[a, b]) for a in range(vocab) for b in range(vocab)}
    stat, df = chi2_goodness(counts, exact, runs_)
    assert drafted > runs_
    assert stat < chi2_critical(df, 1e-3), (stat, df)


# -- greedy identity on tiny models and stories -------------------------------------------------
TINY_LEVELS = [
    {"name": "skip", "kind": "layer_sparsity", "options": {"skip": ["1.mlp", "2.attention"], "stop_below": 0.0}},
    {"name": "exit", "kind": "early_exit", "options": {"exit_layer": 2}},
    {"name": "pld", "kind": "prompt_lookup", "options": {"max_ngram": 3, "num_tokens": 6}},
    {"name": "mag", "kind": "max_gram"},
]
K4 = [[2, 2, 3, 3], [0, 1, 3, 2], [0, 0, 4, 2], [0, 0, 0, 4]]


def cs_config(levels, **options):
    return {
        "scheduler": {"kind": "cs_drafting", "options": {"k_matrix": K4, **options}},
        "levels": levels,
        "calibration": "off",
    }


@pytest.mark.parametrize(
    "options",
    [
        dict(leniency=1.0),
        dict(leniency=3.0),
        dict(leniency=3.0, lookup_tokens=None),
        dict(leniency=3.0, cascade="vertical"),
        dict(leniency=1.0, cascade="horizontal"),
        dict(leniency=3.0, cascade="vertical", tree=True),
    ],
    ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()),
)
@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_output_equals_plain_decoding_on_tiny_models(seed, options):
    model = tiny_llama(seed, layers=4)
    prompt = repetitive_prompt(seed, model.config.vocab_size)
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer()).generate(prompt, max_new_tokens=40)
    pipe = load_pipeline(cs_config(TINY_LEVELS, **options), model=model, tokenizer=IdTokenizer())
    got = pipe.generate(prompt, max_new_tokens=40)
    assert got.token_ids == plain.token_ids
    assert got.stats.target_forwards < 40
    levels = got.stats.levels
    assert levels["skip"].calls > 0 and levels["mag"].calls + levels["pld"].calls > 0


@pytest.mark.parametrize("leniency", [1.0, 3.0])
def test_greedy_output_equals_plain_decoding_on_stories(stories, leniency):
    model, tokenizer = stories
    levels = [
        {
            "name": "skip",
            "kind": "layer_sparsity",
            "options": {"skip": ["1.mlp", "2.attention", "3.mlp"], "stop_below": 0.0},
        },
        {"name": "exit", "kind": "early_exit", "options": {"exit_layer": 3}},
        {"name": "pld", "kind": "prompt_lookup", "options": {"max_ngram": 3, "num_tokens": 6}},
        {"name": "mag", "kind": "max_gram"},
    ]
    prompt = "Once upon a time, there was a little girl named Lily. She"
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=tokenizer)
    speculative = load_pipeline(cs_config(levels, leniency=leniency), model=model, tokenizer=tokenizer)
    plain = plain.generate(prompt, max_new_tokens=60, chat=False)
    got = speculative.generate(prompt, max_new_tokens=60, chat=False)
    assert got.token_ids == plain.token_ids
    assert got.stats.mean_acceptance_length > 1.0


# -- seeded sampling on a tiny model (slow) -----------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("leniency", [1.0, 3.0])
def test_seeded_sampling_matches_the_target_distribution(leniency):
    from tests.helpers import PROMPT, peaked_tiny_model, two_token_distribution

    model = peaked_tiny_model()
    prompt = PROMPT
    exact = two_token_distribution(model, prompt)
    levels = [TINY_LEVELS[0], TINY_LEVELS[1], {"name": "mag", "kind": "max_gram"}]
    config = {
        **cs_config(levels, leniency=leniency, k_matrix=[[1, 1, 1], [0, 1, 1], [0, 0, 2]]),
        "sampling": {"temperature": 1.0},
    }
    pipe = load_pipeline(config, model=model, tokenizer=IdTokenizer())
    runs_, counts, accepted = 2500, Counter(), 0
    for seed in range(runs_):
        # 3 new tokens: the first step may draft 2, so intermediate laws at two positions count.
        result = pipe.generate(list(prompt), max_new_tokens=3, temperature=1.0, seed=seed)
        counts[tuple(result.token_ids[:2])] += 1
        accepted += sum(level.accepted for level in result.stats.levels.values())
    assert accepted > 0.1 * runs_, "drafts must be accepted often enough for the test to mean anything"
    stat, df = chi2_goodness(counts, exact, runs_)
    assert stat < chi2_critical(df, 1e-3), (stat, df)
