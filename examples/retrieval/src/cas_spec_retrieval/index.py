"""A suffix array over the token ids of a corpus: longest-suffix match and continuation.

Documents are joined with a separator (-1, never a token id), so no match and no continuation
crosses two documents. The suffix array is built once by prefix doubling (numpy, O(N log² N));
a look-up is a binary search over it, O(m log N) for a pattern of m tokens, independent of how
often the pattern occurs.

Choices:
- `longest_match` finds the longest suffix of the context (from `max_ngram` down to
  `min_ngram` tokens) that occurs in the corpus followed by at least one token. An occurrence
  of n tokens holds one of n - 1 tokens, so the length is found by bisection over n.
- `continuation` proposes the most frequent continuation, token by token, as REST's trie does:
  the occurrences of the match sit in one range of the suffix array, sorted by what follows
  them, so the occurrences that continue with a given token form a sub-range. At each position
  the most frequent next token over the range wins (ties: the smallest token id), and the range
  narrows to it. Where a range holds more than `max_candidates` occurrences, the next tokens of
  `max_candidates` occurrences evenly spaced through it are counted (a stratified sample of a
  sorted range estimates each token's share well). One occurrence left: its text is copied.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEPARATOR = -1  # between documents; never a token id


def suffix_array(tokens: np.ndarray) -> np.ndarray:
    """Start positions of `tokens`' suffixes in lexicographic order (a suffix that is a prefix of
    another sorts first; the separator sorts before every token)."""
    n = len(tokens)
    rank = tokens.astype(np.int64) + 1  # separator 0, tokens 1 ...; "past the end" is -1
    order = np.argsort(rank, kind="stable")
    k = 1
    while n:
        second = np.full(n, -1, dtype=np.int64)
        if k < n:
            second[: n - k] = rank[k:]
        order = np.lexsort((second, rank))
        first_sorted, second_sorted = rank[order], second[order]
        new_group = np.ones(n, dtype=bool)
        new_group[1:] = (first_sorted[1:] != first_sorted[:-1]) | (second_sorted[1:] != second_sorted[:-1])
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.cumsum(new_group) - 1
        if new_group.all():
            break
        k *= 2
    return order


@dataclass(frozen=True)
class Match:
    """Occurrences of the context's last `n` tokens that are followed by a token:
    suffix-array entries `lo` … `hi - 1`."""

    lo: int
    hi: int
    n: int


class SuffixIndex:
    """The corpus's token ids (documents joined by `SEPARATOR`) and their suffix array."""

    def __init__(self, tokens: np.ndarray, suffixes: np.ndarray):
        if len(tokens) != len(suffixes):
            raise ValueError("tokens and suffix array differ in length")
        # array('i') indexes and slices fast, and slices compare lexicographically.
        self.tokens = array("i", np.asarray(tokens, dtype=np.int32).tobytes())
        self.suffixes = array("i", np.asarray(suffixes, dtype=np.int32).tobytes())

    @classmethod
    def build(cls, documents: Sequence[Sequence[int]]) -> SuffixIndex:
        """Index `documents` (lists of token ids ≥ 0); empty documents are dropped."""
        joined: list[int] = []
        for doc in documents:
            if not doc:
                continue
            if min(doc) < 0:
                raise ValueError("token ids must be ≥ 0")
            if joined:
                joined.append(SEPARATOR)
            joined.extend(doc)
        tokens = np.asarray(joined, dtype=np.int32)
        return cls(tokens, suffix_array(tokens))

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(
                f,
                tokens=np.frombuffer(self.tokens, dtype=np.int32),
                suffixes=np.frombuffer(self.suffixes, dtype=np.int32),
            )

    @classmethod
    def load(cls, path: Path) -> SuffixIndex:
        with np.load(path) as data:
            return cls(data["tokens"], data["suffixes"])

    def __len__(self) -> int:
        return len(self.tokens)

    def _bounds(self, pattern: array, lo: int = 0, hi: int | None = None) -> tuple[int, int]:
        """Suffix-array range of the suffixes that start with `pattern`, within [lo, hi)."""
        m, tokens = len(pattern), self.tokens
        hi = len(self.suffixes) if hi is None else hi
        key = lambda p: tokens[p : p + m]  # noqa: E731
        return (
            bisect_left(self.suffixes, pattern, lo, hi, key=key),
            bisect_right(self.suffixes, pattern, lo, hi, key=key),
        )

    def _followed(self, pattern: array) -> tuple[int, int]:
        """Range of the occurrences of `pattern` that a token follows (not the end, not a separator)."""
        lo, hi = self._bounds(pattern)
        ended = array("i", pattern)
        ended.append(SEPARATOR)  # pattern + separator sorts after pattern alone, before pattern + token
        m, tokens = len(ended), self.tokens
        return bisect_right(self.suffixes, ended, lo, hi, key=lambda p: tokens[p : p + m]), hi

    def occurrences(self, pattern: Sequence[int]) -> list[int]:
        """Start positions of `pattern` followed by a token, sorted (for tests and inspection)."""
        lo, hi = self._followed(array("i", pattern))
        return sorted(self.suffixes[lo:hi])

    def longest_match(self, context: Sequence[int], min_ngram: int, max_ngram: int) -> Match | None:
        """The longest suffix of `context` (min_ngram … max_ngram tokens) that the corpus holds
        followed by a token, or None."""
        best: Match | None = None
        low, high = min_ngram, min(max_ngram, len(context))
        while low <= high:  # bisection: a length that matches implies every shorter one does
            n = (low + high) // 2
            lo, hi = self._followed(array("i", context[len(context) - n :]))
            if lo < hi:
                best, low = Match(lo, hi, n), n + 1
            else:
                high = n - 1
        return best

    def continuation(self, match: Match, count: int, max_candidates: int = 64) -> list[int]:
        """Up to `count` tokens: the most frequent continuation of `match`'s occurrences."""
        tokens, suffixes, size = self.tokens, self.suffixes, len(self.tokens)
        lo, hi, depth = match.lo, match.hi, match.n
        pattern = tokens[suffixes[lo] : suffixes[lo] + depth]
        out: list[int] = []
        while len(out) < count:
            if hi - lo == 1:  # one occurrence left: copy what follows it up to the document's end
                start = suffixes[lo] + depth
                for token in tokens[start : start + count - len(out)]:
                    if token == SEPARATOR:
                        break
                    out.append(token)
                break
            step = -(-(hi - lo) // max_candidates)
            counts = Counter(
                tokens[p + depth]
                for p in (suffixes[j] for j in range(lo, hi, step))
                if p + depth < size and tokens[p + depth] != SEPARATOR
            )
            if not counts:
                break
            best = min(counts, key=lambda t: (-counts[t], t))
            out.append(best)
            pattern.append(best)
            depth += 1
            lo, hi = self._bounds(pattern, lo, hi)
        return out
