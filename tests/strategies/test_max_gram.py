"""`max_gram` (MaG): brute-force oracle, pinned examples, the bigram tables, options, cost, greedy identity."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from cas_spec import load_pipeline
from cas_spec.core.config import load_config
from cas_spec.core.errors import ConfigError
from cas_spec.core.state import DecodingState
from cas_spec.core.types import DraftResult
from cas_spec.strategies.max_gram import (
    BIGRAM_CONFIDENCE,
    BigramTable,
    MaxGram,
    MaxGramOptions,
    load_corpus_bigrams,
)
from cas_spec.strategies.prompt_lookup import NgramIndex
from tests.helpers import (
    AUTOREGRESSIVE,
    STORY_PROMPTS,
    CountingList,
    IdTokenizer,
    hf_greedy,
    make_state,
    repetitive_prompt,
    tiny_llama,
)


def most_frequent_followers(texts: list[list[int]]) -> dict[int, int]:
    """Brute force: each token's most frequent follower; ties to the one that followed it last."""
    pairs = [(text[i], text[i + 1], (d, i)) for d, text in enumerate(texts) for i in range(len(text) - 1)]
    table = {}
    for token in {a for a, _, _ in pairs}:
        followers = [(b, when) for a, b, when in pairs if a == token]
        counts = {b: sum(1 for c, _ in followers if c == b) for b, _ in followers}
        top = max(counts.values())
        table[token] = max((when, b) for b, when in followers if counts[b] == top)[1]
    return table


def oracle(
    tokens: list[int], prefix: tuple[int, ...], options: MaxGramOptions, max_tokens: int, corpus: dict[int, int]
) -> DraftResult:
    """What `MaxGram.draft(state, prefix, max_tokens)` must return, by brute force.

    Contract. S = tokens + prefix (L = len(S)), T = len(tokens), D = the draft so far (empty at
    first), count = min(num_tokens, max_tokens). Lookup, repeated while len(D) < count: for n from
    max_ngram down to 1, a match is an end e with n <= e <= T - 1 and S[e-n:e] == (S + D)[-n:]
    (an n-gram of the committed text followed by a committed token); the first n with a match wins,
    and of its ends the earliest or the latest (`occurrence`). Append S[e:L] (cut at count) to D,
    each token with confidence n. No match: the lookup stops. Then, with `bigram`, the chain: from
    cur = (S + D)[-1], append next = the most frequent follower of cur in the committed text (ties
    to the latest), else corpus[cur], with confidence 0.5, until count or no entry.
    """
    seq, T, L = list(tokens) + list(prefix), len(tokens), len(tokens) + len(prefix)
    count = min(options.num_tokens, max_tokens)
    out: list[int] = []
    confidence: list[float] = []
    while len(out) < count:
        current = seq + out
        match = None
        for n in range(min(options.max_ngram, len(current)), 0, -1):
            ends = [e for e in range(n, T) if seq[e - n : e] == current[-n:]]
            if ends:
                match = (min(ends) if options.occurrence == "earliest" else max(ends), n)
                break
        if match is None:
            break
        e, n = match
        copied = seq[e:L][: count - len(out)]
        out += copied
        confidence += [float(n)] * len(copied)
    if options.bigram and seq:
        context = most_frequent_followers([list(tokens)])
        cur = (seq + out)[-1]
        while len(out) < count:
            cur = context[cur] if cur in context else corpus.get(cur)
            if cur is None:
                break
            out.append(cur)
            confidence.append(BIGRAM_CONFIDENCE)
    return DraftResult(tokens=tuple(out), confidence=tuple(confidence))


def started(tokens: list[int], **options) -> tuple[MaxGram, DecodingState]:
    strategy = MaxGram(MaxGramOptions(**options))
    state = make_state(list(tokens))
    strategy.start(state)
    return strategy, state


def write_json(tmp_path, data, name="corpus.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


# -- the oracle -----------------------------------------------------------------------------------


@settings(max_examples=300)
@given(data=st.data())
def test_draft_matches_brute_force_oracle_as_the_context_grows(data, tmp_path_factory):
    size = data.draw(st.integers(2, 6), label="vocabulary size")
    alphabet = data.draw(
        st.lists(st.integers(0, 300), min_size=size + 2, max_size=size + 2, unique=True), label="alphabet"
    )
    text = data.draw(st.lists(st.sampled_from(alphabet[:size]), max_size=60), label="text")
    options = dict(
        max_ngram=data.draw(st.integers(1, 6), label="max_ngram"),
        num_tokens=data.draw(st.integers(1, 12), label="num_tokens"),
        occurrence=data.draw(st.sampled_from(["earliest", "latest"]), label="occurrence"),
        bigram=data.draw(st.booleans(), label="bigram"),
    )
    corpus: dict[int, int] = {}
    if options["bigram"] and data.draw(st.booleans(), label="with a corpus table"):
        # a table over the whole alphabet, including two tokens the text never holds
        entries = [-1] * 301
        for token in alphabet:
            entries[token] = data.draw(st.sampled_from(alphabet + [-1]), label=f"corpus[{token}]")
        if any(entry >= 0 for entry in entries):
            corpus = {i: entry for i, entry in enumerate(entries) if entry >= 0}
            options["corpus_ids"] = write_json(tmp_path_factory.mktemp("corpus"), entries)
    options = MaxGramOptions(**options)
    strategy = MaxGram(options)

    # decoding: the committed tokens grow by 0-4 tokens before each call
    calls = data.draw(
        st.lists(
            st.tuples(st.integers(0, 4), st.lists(st.sampled_from(alphabet), max_size=5), st.integers(1, 16)),
            min_size=1,
            max_size=25,
        ),
        label="calls: (new committed tokens, prefix, max_tokens)",
    )
    state = make_state(text[: data.draw(st.integers(0, len(text)), label="prompt length")])
    strategy.start(state)
    for new, prefix, max_tokens in calls:
        state.tokens += text[len(state.tokens) : len(state.tokens) + new]
        got = strategy.draft(state, tuple(prefix), max_tokens)
        assert got == oracle(state.tokens, tuple(prefix), options, max_tokens, corpus), (state.tokens, prefix)
        assert len(got) <= max_tokens and got.draft_probs is None
    assert state.tokens == text[: len(state.tokens)]  # the strategy left the state alone


@settings(max_examples=100)
@given(
    text=st.lists(st.integers(0, 4), min_size=2, max_size=60),
    prefix=st.lists(st.integers(0, 4), max_size=4),
    max_tokens=st.integers(1, 12),
)
def test_a_draft_continues_a_real_occurrence_of_the_longest_match(text, prefix, max_tokens):
    strategy, state = started(text, max_ngram=6, num_tokens=12, bigram=False)
    got = strategy.draft(state, tuple(prefix), max_tokens)
    sequence = text + prefix
    assert len(got) <= max_tokens
    assert (len(got) > 0) == any(text[e - 1] == sequence[-1] for e in range(1, len(text)))
    if len(got):
        n = int(got.confidence[0])

        def matches(m):  # ends of committed occurrences of the m-token suffix, each followed by a token
            return [e for e in range(m, len(text)) if sequence[e - m : e] == sequence[-m:]]

        assert any(sequence[e] == got.tokens[0] for e in matches(n))
        assert n == 6 or not matches(n + 1)  # no longer suffix occurs


@settings(max_examples=60)
@given(text=st.lists(st.integers(0, 3), min_size=1, max_size=60), occurrence=st.sampled_from(["earliest", "latest"]))
def test_one_shot_and_incremental_indexing_agree(text, occurrence):
    options = dict(max_ngram=5, num_tokens=8, occurrence=occurrence)
    whole, whole_state = started(text, **options)
    grown, grown_state = started(text[:1], **options)
    for token in text[1:]:
        grown.draft(grown_state, (), 8)
        grown_state.tokens.append(token)
    assert grown.draft(grown_state, (), 8) == whole.draft(whole_state, (), 8)
    assert grown.index.tables == whole.index.tables
    assert grown.context.best == whole.context.best


# -- pinned examples ------------------------------------------------------------------------------

A, B, C, D, X = 11, 22, 33, 44, 99


def test_longest_match_wins_over_shorter_more_recent_ones():
    text = [A, B, C, X, B, C, D, A, B, C]
    strategy, state = started(text, num_tokens=1)
    got = strategy.draft(state, (), 1)
    assert (got.tokens, got.confidence) == ((X,), (3.0,))  # the trigram A B C, followed by X
    strategy, state = started(text, max_ngram=2, num_tokens=1)
    assert strategy.draft(state, (), 1).tokens == (D,)  # max_ngram caps the match: the latest B C


def test_matches_of_any_length_count_up_to_a_long_max_ngram():
    sentence = list(range(100, 140))  # 40 distinct tokens
    text = sentence + [A] + sentence[:35]
    strategy, state = started(text, max_ngram=64, num_tokens=4)
    got = strategy.draft(state, (), 4)
    assert got.tokens == tuple(sentence[35:39]) and got.confidence == (35.0,) * 4


def test_earliest_and_latest_occurrence():
    text = [A, B, C, A, B, D, A, B]
    latest, state = started(text, num_tokens=3)
    assert latest.draft(state, (), 3).tokens == (D, A, B)
    earliest, state = started(text, num_tokens=3, occurrence="earliest")
    assert earliest.draft(state, (), 3).tokens == (C, A, B)


def test_default_occurrence_is_latest():
    strategy, state = started([A, C, A, D, A], num_tokens=1)
    assert strategy.draft(state, (), 1).tokens == (D,)


def test_periodic_continuation_by_repeated_lookups():
    strategy, state = started([A, B, A, B], num_tokens=7)
    got = strategy.draft(state, (), 7)
    assert got.tokens == (A, B, A, B, A, B, A)
    assert got.confidence == (2.0,) * 7
    assert got.draft_probs is None
    strategy, state = started([C, C], num_tokens=4)
    assert strategy.draft(state, (), 10).tokens == (C, C, C, C)


def test_a_short_copy_is_continued_by_a_new_lookup():
    # A B C D, then X A: copy B C D X A up to the end, then look up again after A (latest: B)
    strategy, state = started([A, B, C, D, X, A], num_tokens=8)
    got = strategy.draft(state, (), 8)
    assert got.tokens == (B, C, D, X, A, B, C, D)
    # the second lookup matches only A: X A occurs just at the committed end, followed by nothing
    assert got.confidence == (1.0,) * 8


def test_prefix_extends_the_looked_up_suffix_and_is_copied():
    strategy, state = started([A, B, C, A], max_ngram=2, num_tokens=4)
    assert strategy.draft(state, (), 4).tokens == (B, C, A, B)
    assert strategy.draft(state, (B,), 4).tokens == (C, A, B, C)
    # a match right before the committed end copies through the prefix
    strategy, state = started([C, C], num_tokens=3)
    assert strategy.draft(state, (C,), 3).tokens == (C, C, C)


def test_max_tokens_and_num_tokens_cap_the_proposal():
    strategy, state = started([A, B, C, D, X, A], num_tokens=10)
    assert strategy.draft(state, (), 3).tokens == (B, C, D)
    assert len(strategy.draft(state, (), 100)) == 10
    strategy, state = started([A, B, C, D, X, A], num_tokens=2)
    assert strategy.draft(state, (), 100).tokens == (B, C)


def test_empty_or_unmatched_context_proposes_nothing():
    strategy, state = started([], num_tokens=5)
    assert strategy.draft(state, (), 5) == DraftResult(tokens=())
    strategy, state = started([A], num_tokens=5)
    assert len(strategy.draft(state, (A,), 5)) == 0  # nothing committed follows a committed A
    strategy, state = started([A, B, C, D], num_tokens=5)
    assert len(strategy.draft(state, (), 5)) == 0  # D never occurred earlier; no corpus table


def test_start_resets_the_index_and_the_context_table():
    strategy, state = started([A, B, A], num_tokens=2)
    assert strategy.draft(state, (), 2).tokens == (B, A)
    fresh = make_state([C, A])
    strategy.start(fresh)
    assert len(strategy.draft(fresh, (), 2)) == 0
    assert strategy.context.best == {C: A}


# -- the bigram chain and its tables --------------------------------------------------------------


def test_context_table_most_frequent_follower_ties_to_the_most_recent():
    table = BigramTable()
    table.add_text([A, B, A, C, A, C, A, B])
    assert table.best[A] == B  # B and C twice each: B followed A last
    table.add(A, C)
    assert table.best[A] == C
    assert table.best == most_frequent_followers([[A, B, A, C, A, C, A, B, A, C]])


@settings(max_examples=100)
@given(st.lists(st.integers(0, 4), max_size=50))
def test_context_table_matches_brute_force(text):
    table = BigramTable()
    table.add_text(text)
    assert table.best == most_frequent_followers([text])


def test_bigram_chain_starts_at_an_unseen_token_and_prefers_the_context(tmp_path):
    entries = [-1] * 100
    entries[D], entries[A], entries[X] = A, X, B  # corpus: D → A → X ...
    corpus = write_json(tmp_path, entries)
    # context: A is followed by B twice, by C once; B by C; C by A, then D (unseen before) ends it
    strategy, state = started([A, B, C, A, B, C, A, C, D], corpus_ids=corpus, num_tokens=6)
    got = strategy.draft(state, (), 6)
    # D: no match, corpus D → A; A seen in context: most frequent follower B; then B → C; C → A ...
    assert got.tokens == (A, B, C, A, B, C)
    assert got.confidence == (BIGRAM_CONFIDENCE,) * 6
    # without the bigram fallback nothing is proposed
    strategy, state = started([A, B, C, A, B, C, A, C, D], bigram=False, num_tokens=6)
    assert len(strategy.draft(state, (), 6)) == 0


def test_bigram_chain_stops_where_no_table_has_an_entry(tmp_path):
    entries = [-1] * 100
    entries[D], entries[X] = X, C
    strategy, state = started([A, B, D], corpus_ids=write_json(tmp_path, entries), num_tokens=6)
    got = strategy.draft(state, (), 6)
    assert got.tokens == (X, C) and got.confidence == (BIGRAM_CONFIDENCE,) * 2


def test_bigram_fills_rank_below_every_copied_token(tmp_path):
    entries = [None] * 100
    entries[D] = A
    strategy, state = started([A, B, C, A, B, D], corpus_ids=write_json(tmp_path, entries), num_tokens=3)
    got = strategy.draft(state, (), 3)
    assert got.tokens == (A, B, D)  # D unseen: corpus D → A; then context A → B; B → C or D: D came last
    assert got.confidence == (BIGRAM_CONFIDENCE,) * 3
    copied = strategy.draft(state, (A,), 3)  # the suffix D A occurs nowhere, A does: a copy
    assert copied.tokens == (B, D, A) and min(copied.confidence) == 1.0 > BIGRAM_CONFIDENCE


def test_corpus_token_ids_are_counted_like_the_context(tmp_path):
    path = write_json(tmp_path, {"token_ids": [[A, B, A, C, A, C], [B, X]]})
    assert load_corpus_bigrams(path) == most_frequent_followers([[A, B, A, C, A, C], [B, X]])
    assert load_corpus_bigrams(path)[C] == A  # within the first document only
    single = write_json(tmp_path, {"token_ids": [A, B, A, B, A, C]}, "single.json")
    assert load_corpus_bigrams(single) == {A: B, B: A}
    table = write_json(tmp_path, [5, -1, None, 0], "table.json")
    assert load_corpus_bigrams(table) == {0: 5, 3: 0}


@pytest.mark.parametrize(
    "content, problem",
    [
        ("[1, 2", "not valid JSON"),
        ('"tokens"', "expected a JSON list (a bigram table indexed by token id) or an object"),
        ('{"ids": [1, 2]}', "with keys ['ids']"),
        ("[1, -2, 3]", "entry 1 is -2; expected a token id, -1 or null"),
        ('[1, "2"]', "entry 1 is '2'"),
        ("[true, 1]", "entry 0 is True"),
        ("[-1, null]", "holds no bigram"),
        ('{"token_ids": [1, 2.5]}', "token_ids[1] is 2.5; expected a token id"),
        ('{"token_ids": [[1, 2], [3, -1]]}', "token_ids[1][1] is -1"),
        ('{"token_ids": [7]}', "holds no bigram"),
        ('{"token_ids": 7}', "token_ids must be a list"),
    ],
)
def test_malformed_corpus_files_are_rejected_naming_path_and_problem(tmp_path, content, problem):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="corpus_ids .*bad.json: ") as info:
        load_corpus_bigrams(str(path))
    assert problem in str(info.value)
    with pytest.raises(ValidationError, match="bad.json"):
        MaxGramOptions(corpus_ids=str(path))


def test_missing_corpus_file_and_directory_are_rejected(tmp_path):
    with pytest.raises(ValidationError, match="nowhere.json: no such file"):
        MaxGramOptions(corpus_ids=str(tmp_path / "nowhere.json"))
    with pytest.raises(ValidationError, match="not a file"):
        MaxGramOptions(corpus_ids=str(tmp_path))


def test_a_bad_corpus_file_fails_pipeline_validation_with_its_location(tmp_path):
    path = write_json(tmp_path, {"tokens": []})
    config = {
        "scheduler": {"kind": "chain"},
        "levels": [{"name": "mag", "kind": "max_gram", "options": {"corpus_ids": path}}],
    }
    with pytest.raises(ConfigError, match=r"levels\.0\.options\.corpus_ids: .*corpus\.json: expected a JSON list"):
        load_config(config)


# -- options --------------------------------------------------------------------------------------


def test_default_options_are_frozen():
    options = MaxGramOptions()
    assert (options.max_ngram, options.num_tokens, options.occurrence, options.bigram, options.corpus_ids) == (
        16,
        10,
        "latest",
        True,
        None,
    )
    with pytest.raises(ValidationError):
        options.num_tokens = 3


def test_corpus_without_bigram_is_rejected(tmp_path):
    path = write_json(tmp_path, [1, 2])
    with pytest.raises(ValidationError, match="corpus_ids is set but bigram is false"):
        MaxGramOptions(corpus_ids=path, bigram=False)


@pytest.mark.parametrize(
    "options",
    [
        {"num_tokenz": 3},
        {"min_ngram": 2},
        {"num_tokens": 0},
        {"num_tokens": 257},
        {"max_ngram": 0},
        {"max_ngram": 65},
        {"occurrence": "first"},
        {"bigram": "sometimes"},
    ],
)
def test_bad_options_are_rejected(options):
    with pytest.raises(ValidationError):
        MaxGramOptions(**options)


# -- cost: no scan of the context per call --------------------------------------------------------


@pytest.mark.parametrize("occurrence", ["earliest", "latest"])
def test_draft_cost_is_independent_of_a_4k_context(monkeypatch, occurrence):
    rng = random.Random(11)
    context, steps = 4096, 300
    sentence = [rng.randrange(49_152) for _ in range(29)]
    text = [rng.randrange(49_152) for _ in range(context // 2)] + [
        sentence[i % 29] for i in range(context // 2 + 4 * steps)
    ]
    options = MaxGramOptions(max_ngram=8, num_tokens=10, occurrence=occurrence)
    ngram_sum = sum(range(1, options.max_ngram + 1))
    strategy = MaxGram(options)
    state = make_state(CountingList(text[:context]))
    strategy.start(state)
    strategy.draft(state, (), 10)  # indexes the prompt once (prefill-time work)
    assert strategy.index.next_end == context

    extends = []
    real_extend = NgramIndex.extend
    monkeypatch.setattr(NgramIndex, "extend", lambda self, tokens: extends.append(1) or real_extend(self, tokens))
    drafted = 0
    for step in range(steps):
        new = rng.randint(1, 4)
        list.extend(state.tokens, text[len(state.tokens) : len(state.tokens) + new])
        prefix = tuple(text[len(state.tokens) : len(state.tokens) + step % 3])
        reads = state.tokens.reads
        result = strategy.draft(state, prefix, 10)
        drafted += len(result)
        # indexing the new tokens (n-grams and bigram pairs), one tail, the copies
        assert state.tokens.reads - reads <= new * (ngram_sum + 2) + options.max_ngram + options.num_tokens
    assert len(extends) == steps
    assert drafted > 5 * steps  # the repeated sentence matches


# -- greedy identity ------------------------------------------------------------------------------


def chain_mag(**options) -> dict:
    return {
        "scheduler": {"kind": "chain", "options": {"level": "mag", "k": 8}},
        "levels": [{"name": "mag", "kind": "max_gram", "options": options}],
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "options", [{}, {"occurrence": "earliest", "max_ngram": 4}, "corpus"], ids=["default", "earliest", "corpus"]
)
def test_chain_max_gram_equals_plain_greedy_on_tiny_models(seed, options, tmp_path):
    model = tiny_llama(seed)
    vocab = model.config.vocab_size
    if options == "corpus":  # a random bigram table over the whole vocabulary: the chain always fills
        rng = random.Random(seed)
        options = {"corpus_ids": write_json(tmp_path, [rng.randrange(3, vocab) for _ in range(vocab)])}
    speculative = load_pipeline(chain_mag(**options), model=model, tokenizer=IdTokenizer())
    prompt = repetitive_prompt(seed, vocab)
    expected = hf_greedy(model, prompt, 60)
    got = speculative.generate(prompt, max_new_tokens=60)
    assert got.token_ids == expected
    assert got.stats.target_forwards <= 60
    assert (
        load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer())
        .generate(prompt, max_new_tokens=60)
        .token_ids
        == expected
    )


@pytest.mark.parametrize("prompt", STORY_PROMPTS)
def test_max_gram_preset_equals_plain_greedy_on_stories(stories, prompt):
    model, tokenizer = stories
    speculative = load_pipeline("max-gram", model=model, tokenizer=tokenizer)
    assert [(level.name, level.strategy.name) for level in speculative.levels] == [("mag", "max_gram")]
    got = speculative.generate(prompt, max_new_tokens=200)
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=tokenizer).generate(prompt, max_new_tokens=200)
    assert got.token_ids == plain.token_ids == hf_greedy(model, got.prompt_token_ids, 200)[: len(plain.token_ids)]
    mag = got.stats.levels["mag"]
    assert 0 < mag.accepted <= mag.drafted
    assert got.stats.target_forwards < len(got.token_ids)  # TinyStories text repeats itself
