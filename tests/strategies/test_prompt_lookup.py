"""`prompt_lookup` against a brute-force oracle, pinned examples, options, and per-call cost."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cas_spec.core.state import DecodingState
from cas_spec.core.types import DraftResult
from cas_spec.strategies.prompt_lookup import NgramIndex, PromptLookup, PromptLookupOptions
from tests.helpers import CountingList, make_state


def oracle(tokens: list[int], prefix: tuple[int, ...], options: PromptLookupOptions, max_tokens: int) -> DraftResult:
    """What `PromptLookup.draft(state, prefix, max_tokens)` must return, by brute force.

    Contract. Let S = tokens + prefix (L = len(S)) and T = len(tokens) (committed tokens).
    For n = max_ngram, max_ngram - 1, ..., min_ngram, the first n with a match wins:
    a match is an end position e with n <= e <= T - 1 and S[e-n:e] == S[L-n:L]; the latest such e
    is taken. The matched n-gram lies inside the committed tokens and is followed by at least one
    committed token: n-grams ending inside `prefix`, or at the end of the committed tokens (e == T),
    are not candidates even when `prefix` is non-empty (the index only covers committed text).
    With an empty prefix this is exactly "the latest earlier occurrence" (e < L).

    The proposal is the `count = min(num_tokens, max_tokens)` tokens following e, continuing
    periodically with period L - e past the end of S: token i = S[e+i] if e+i < L, else
    proposal[i - (L - e)]. Every token's confidence is float(n). No match: no tokens.
    """
    seq = list(tokens) + list(prefix)
    L, T = len(seq), len(tokens)
    for n in range(options.max_ngram, options.min_ngram - 1, -1):
        if L < n:
            continue
        suffix = seq[L - n :]
        ends = [e for e in range(n, T) if seq[e - n : e] == suffix]
        if not ends:
            continue
        e = max(ends)
        count = min(options.num_tokens, max_tokens)
        proposal: list[int] = []
        for i in range(count):
            proposal.append(seq[e + i] if e + i < L else proposal[i - (L - e)])
        return DraftResult(tokens=tuple(proposal), confidence=(float(n),) * count)
    return DraftResult(tokens=())


def started(tokens: list[int], **options) -> tuple[PromptLookup, DecodingState]:
    strategy = PromptLookup(PromptLookupOptions(**options))
    state = make_state(list(tokens))
    strategy.start(state)
    return strategy, state


# -- the oracle -----------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.data())
def test_draft_matches_brute_force_oracle_as_the_context_grows(data):
    size = data.draw(st.integers(2, 6), label="vocabulary size")
    alphabet = data.draw(st.lists(st.integers(0, 50_000), min_size=size, max_size=size, unique=True), label="alphabet")
    text = data.draw(st.lists(st.sampled_from(alphabet), max_size=80), label="text")
    min_ngram = data.draw(st.integers(1, 4), label="min_ngram")
    max_ngram = data.draw(st.integers(min_ngram, 6), label="max_ngram")
    num_tokens = data.draw(st.integers(1, 12), label="num_tokens")
    options = PromptLookupOptions(min_ngram=min_ngram, max_ngram=max_ngram, num_tokens=num_tokens)
    strategy = PromptLookup(options)

    # decoding: a prompt, then the committed tokens grow in steps; the engine extends the same list
    prompt_length = data.draw(st.integers(0, len(text)), label="prompt length")
    cuts = sorted(set(data.draw(st.lists(st.integers(prompt_length, len(text)), max_size=10), label="cuts")))
    state = make_state(list(text[:prompt_length]))
    strategy.start(state)
    for cut in [prompt_length, *cuts, len(text)]:
        state.tokens.extend(text[len(state.tokens) : cut])
        for _ in range(data.draw(st.integers(1, 3), label="calls at this length")):
            prefix = tuple(data.draw(st.lists(st.sampled_from(alphabet), max_size=6), label="prefix"))
            max_tokens = data.draw(st.integers(1, 16), label="max_tokens")
            got = strategy.draft(state, prefix, max_tokens)
            assert got == oracle(state.tokens, prefix, options, max_tokens), (state.tokens, prefix)
            assert len(got) <= max_tokens
    assert state.tokens == text  # the strategy left the state alone


@settings(max_examples=100)
@given(text=st.lists(st.integers(0, 3), min_size=1, max_size=60), num_tokens=st.integers(1, 12))
def test_one_shot_and_incremental_indexing_agree(text, num_tokens):
    """Indexing the whole text at once equals indexing it token by token."""
    options = dict(min_ngram=1, max_ngram=4, num_tokens=num_tokens)
    whole, whole_state = started(text, **options)
    grown, grown_state = started(text[:1], **options)
    for token in text[1:]:
        grown.draft(grown_state, (), num_tokens)
        grown_state.tokens.append(token)
    assert grown.draft(grown_state, (), num_tokens) == whole.draft(whole_state, (), num_tokens)
    assert grown.index.tables == whole.index.tables


# -- pinned examples ------------------------------------------------------------------------------

A, B, C, D, X = 11, 22, 33, 44, 99


def test_periodic_continuation_of_a_repeating_pair():
    strategy, state = started([A, B, A, B], min_ngram=1, max_ngram=3, num_tokens=7)
    got = strategy.draft(state, (), 7)
    # the bigram (A, B) last ended at 2: copy A B, then continue with period 2
    assert got.tokens == (A, B, A, B, A, B, A)
    assert got.confidence == (2.0,) * 7
    assert got.draft_probs is None  # deterministic: point masses for the verifier


def test_period_one_repeats_the_last_token():
    strategy, state = started([C, C], min_ngram=1, max_ngram=3, num_tokens=4)
    assert strategy.draft(state, (), 10).tokens == (C, C, C, C)


def test_no_match_proposes_nothing():
    strategy, state = started([A, B, C, D], num_tokens=5)
    assert strategy.draft(state, (), 5) == DraftResult(tokens=())
    strategy, state = started([], num_tokens=5)
    assert len(strategy.draft(state, (), 5)) == 0


def test_min_ngram_is_respected():
    text = [A, B, C, B]  # only the unigram B recurs
    strategy, state = started(text, min_ngram=1, max_ngram=3, num_tokens=3)
    assert strategy.draft(state, (), 3).tokens == (C, B, C)
    strategy, state = started(text, min_ngram=2, max_ngram=3, num_tokens=3)
    assert len(strategy.draft(state, (), 3)) == 0


def test_longest_ngram_wins_over_a_more_recent_shorter_one():
    text = [A, B, C, X, B, C, D, A, B, C]
    strategy, state = started(text, min_ngram=1, max_ngram=3, num_tokens=1)
    got = strategy.draft(state, (), 1)
    assert (got.tokens, got.confidence) == ((X,), (3.0,))  # the trigram A B C, followed by X
    strategy, state = started(text, min_ngram=1, max_ngram=2, num_tokens=1)
    got = strategy.draft(state, (), 1)
    assert (got.tokens, got.confidence) == ((D,), (2.0,))  # the latest bigram B C, followed by D


def test_latest_occurrence_wins():
    strategy, state = started([A, C, A, D, A], min_ngram=1, max_ngram=1, num_tokens=4)
    assert strategy.draft(state, (), 4).tokens == (D, A, D, A)


def test_num_tokens_and_max_tokens_cap_the_proposal():
    text = [A, B, C, D, X, A]
    strategy, state = started(text, min_ngram=1, max_ngram=2, num_tokens=10)
    assert strategy.draft(state, (), 3).tokens == (B, C, D)
    assert strategy.draft(state, (), 100).tokens == (B, C, D, X, A, B, C, D, X, A)
    strategy, state = started(text, min_ngram=1, max_ngram=2, num_tokens=2)
    assert strategy.draft(state, (), 100).tokens == (B, C)


def test_prefix_extends_the_looked_up_suffix():
    strategy, state = started([A, B, C, A], min_ngram=1, max_ngram=2, num_tokens=4)
    assert strategy.draft(state, (), 4).tokens == (B, C, A, B)
    # the uncommitted prefix (B,) makes the suffix A B: copy what followed it, through the prefix
    assert strategy.draft(state, (B,), 4).tokens == (C, A, B, C)


def test_ngrams_ending_in_the_prefix_or_at_the_committed_end_are_not_candidates():
    # committed [C]: no committed n-gram is followed by a committed token, so nothing matches,
    # although C occurs earlier in C + (C,)
    strategy, state = started([C], min_ngram=1, max_ngram=2, num_tokens=3)
    assert len(strategy.draft(state, (C,), 3)) == 0
    # committed [C, C]: the unigram C ending at 1 is indexed
    strategy, state = started([C, C], min_ngram=1, max_ngram=2, num_tokens=3)
    assert strategy.draft(state, (C,), 3).tokens == (C, C, C)


def test_start_resets_the_index_for_a_new_generation():
    strategy, state = started([A, B, A], min_ngram=1, max_ngram=2, num_tokens=2)
    assert strategy.draft(state, (), 2).tokens == (B, A)
    fresh = make_state([C, A])
    strategy.start(fresh)
    assert len(strategy.draft(fresh, (), 2)) == 0  # nothing left over from [A, B, A]


# -- options --------------------------------------------------------------------------------------


def test_default_options():
    options = PromptLookupOptions()
    assert (options.min_ngram, options.max_ngram, options.num_tokens) == (1, 3, 10)


def test_min_ngram_above_max_ngram_is_rejected():
    with pytest.raises(ValidationError, match=r"min_ngram \(4\) must not exceed max_ngram \(2\)"):
        PromptLookupOptions(min_ngram=4, max_ngram=2)


@pytest.mark.parametrize(
    "options",
    [
        {"num_tokenz": 3},
        {"num_tokens": 0},
        {"num_tokens": 257},
        {"min_ngram": 0},
        {"max_ngram": 33},
        {"max_ngram": "three"},
    ],
)
def test_bad_options_are_rejected(options):
    with pytest.raises(ValidationError):
        PromptLookupOptions(**options)


def test_options_are_frozen():
    with pytest.raises(ValidationError):
        PromptLookupOptions().num_tokens = 3


# -- cost: no scan of the context per call --------------------------------------------------------


@pytest.mark.parametrize("repetitive", [False, True], ids=["random", "repetitive"])
def test_draft_cost_is_independent_of_a_4k_context(monkeypatch, repetitive):
    rng = random.Random(7)
    context, steps = 4096, 400
    if repetitive:
        sentence = [rng.randrange(49_152) for _ in range(29)]
        text = [sentence[i % 29] for i in range(context + 4 * steps)]
    else:
        text = [rng.randrange(49_152) for _ in range(context + 4 * steps)]
    options = PromptLookupOptions(min_ngram=2, max_ngram=4, num_tokens=7)
    ngram_sum = sum(range(options.min_ngram, options.max_ngram + 1))

    extended: list[tuple[int, int]] = []  # per extend call: (new ends indexed, n-gram tuples built)
    real_extend = NgramIndex.extend

    def counting_extend(self, tokens):
        before, reads = self.next_end, tokens.reads
        real_extend(self, tokens)
        extended.append((self.next_end - before, tokens.reads - reads))

    monkeypatch.setattr(NgramIndex, "extend", counting_extend)
    strategy = PromptLookup(options)
    state = make_state(CountingList(text[:context]))
    strategy.start(state)
    strategy.draft(state, (), 7)  # indexes the prompt once (prefill-time work)
    assert extended[0][0] == context - 1

    rng_steps = random.Random(3)
    drafted = 0
    for step in range(steps):
        new = rng_steps.randint(1, 4)
        list.extend(state.tokens, text[len(state.tokens) : len(state.tokens) + new])
        prefix = tuple(text[len(state.tokens) : len(state.tokens) + step % 3])  # sometimes a prefix
        reads = state.tokens.reads
        result = strategy.draft(state, prefix, 7)
        drafted += len(result)
        # only the newly committed tokens are indexed: `new` end positions, sum(n) reads each
        assert extended[-1] == (new, new * ngram_sum)
        # the whole call reads a bounded number of tokens: indexing, suffix look-ups, the proposal
        assert state.tokens.reads - reads <= new * ngram_sum + ngram_sum + options.num_tokens
    assert len(extended) == steps + 1
    assert len(state.tokens) > context
    assert (drafted > 5 * steps) == repetitive  # the repetitive text does match


def test_counting_list_detects_a_context_scan():
    """The cost test can fail: copying the context (`tokens + prefix`) is counted."""
    tokens = CountingList(range(4096))
    _ = tokens + [1]
    assert tokens.reads == 4096
    _ = tokens[-3:]
    assert tokens.reads == 4099
