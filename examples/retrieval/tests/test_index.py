"""The suffix-array index against brute-force oracles, and its continuation rule."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cas_spec_retrieval.index import SEPARATOR, Match, SuffixIndex, suffix_array

documents = st.lists(st.lists(st.integers(0, 3), max_size=12), max_size=4)


def joined(docs):
    out = []
    for doc in (d for d in docs if d):
        out += ([SEPARATOR] if out else []) + doc
    return out


@given(st.lists(st.integers(-1, 3), max_size=40))
def test_suffix_array_sorts_suffixes_like_python(tokens):
    expected = sorted(range(len(tokens)), key=lambda i: tokens[i:])
    assert suffix_array(np.asarray(tokens, dtype=np.int32)).tolist() == expected


def brute_longest(docs, context, min_n, max_n):
    """Longest n with context[-n:] followed by a token inside some document."""
    for n in range(min(max_n, len(context)), min_n - 1, -1):
        pattern = context[len(context) - n :]
        for doc in docs:
            if any(doc[i : i + n] == pattern for i in range(len(doc) - n)):
                return n
    return None


@given(documents, st.lists(st.integers(0, 3), max_size=8), st.integers(1, 3), st.integers(1, 8))
def test_longest_match_is_the_longest_suffix_followed_by_a_token(docs, context, min_n, max_n):
    if not any(docs):
        return
    index = SuffixIndex.build(docs)
    match = index.longest_match(context, min_n, max(min_n, max_n))
    want = brute_longest(docs, context, min_n, max(min_n, max_n))
    assert (match.n if match else None) == want
    if match:
        pattern = context[len(context) - match.n :]
        expected = sorted(
            i
            for i in range(len(index))
            if list(index.tokens[i : i + match.n]) == pattern
            and i + match.n < len(index)
            and index.tokens[i + match.n] != SEPARATOR
        )
        assert index.occurrences(pattern) == expected and match.hi - match.lo == len(expected)


@given(documents, st.lists(st.integers(0, 3), min_size=1, max_size=4), st.integers(1, 6))
def test_continuation_is_the_most_frequent_path(docs, context, count):
    if not any(docs):
        return
    index = SuffixIndex.build(docs)
    match = index.longest_match(context, 1, 4)
    if match is None:
        return
    pattern = context[len(context) - match.n :]
    got = index.continuation(match, count, max_candidates=10**6)
    want = []
    while len(want) < count:  # oracle: count followers of pattern + want over every document
        key = pattern + want
        followers = Counter(
            doc[i + len(key)] for doc in docs for i in range(len(doc) - len(key)) if doc[i : i + len(key)] == key
        )
        if not followers:
            break
        want.append(min(followers, key=lambda t: (-followers[t], t)))
    assert got == want


def test_the_longest_match_wins_over_a_more_frequent_shorter_one():
    index = SuffixIndex.build([[1, 2, 3, 4, 5], [9, 3, 7], [9, 3, 7], [9, 3, 7]])
    match = index.longest_match([0, 2, 3], 1, 8)
    assert match.n == 2 and index.continuation(match, 5) == [4, 5]


def test_ties_go_to_the_smallest_token_and_nothing_crosses_a_document():
    index = SuffixIndex.build([[5, 6, 8], [5, 6, 7], [1]])
    match = index.longest_match([5, 6], 1, 4)
    assert match == Match(match.lo, match.hi, 2) and match.hi - match.lo == 2
    assert index.continuation(match, 4) == [7]  # 7 before 8; [5, 6, 7] ends its document
    assert index.longest_match([8], 1, 4) is None  # 8 ends a document: nothing follows it


def test_a_large_range_is_sampled_and_keeps_the_majority():
    docs = [[1, 2]] * 300 + [[1, 3]] * 100
    index = SuffixIndex.build(docs)
    match = index.longest_match([1], 1, 1)
    assert match.hi - match.lo == 400
    assert index.continuation(match, 1, max_candidates=7) == [2]


def test_save_and_load_round_trip(tmp_path):
    index = SuffixIndex.build([[4, 1, 4, 2], [4, 1, 3]])
    index.save(tmp_path / "index.npz")
    loaded = SuffixIndex.load(tmp_path / "index.npz")
    assert loaded.tokens == index.tokens and loaded.suffixes == index.suffixes
    assert loaded.continuation(loaded.longest_match([4, 1], 1, 2), 2) == [3]


def test_negative_token_ids_are_rejected():
    with pytest.raises(ValueError, match="≥ 0"):
        SuffixIndex.build([[1, -2, 3]])
