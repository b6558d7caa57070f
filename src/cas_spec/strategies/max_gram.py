"""`max_gram` (MaG): CS-Drafting's zero-cost bottom drafter, a max-gram lookup and a bigram chain.

A call proposes up to `num_tokens` tokens continuing S = prompt + generated text + `prefix`:

1. Lookup. Find the longest suffix of S (any length 1 … `max_ngram`) that occurs earlier in the
   committed text followed by at least one committed token, and copy what followed it, up to the
   end of S. If that is not enough, repeat the lookup on S + the tokens copied so far, and so on:
   a repeating text thus continues periodically. `occurrence` picks which occurrence of the longest
   match is copied: `earliest` as in the paper's code, or `latest` (the default), which our
   measurements of prompt lookup favour: recent text predicts the next tokens better.
2. Bigram chain. When no suffix matches (the last token never occurred followed by another), fill
   the remaining positions greedily with next = bigram[current], until a token has no entry.
   CS-Drafting's table was estimated on Wikipedia; none exists for our vocabularies, so the table
   here is the context's own statistics (for each token, its most frequent follower in the
   committed text, ties to the most recent), backed by an optional corpus table from
   `corpus_ids`. Context statistics win for every token that has a follower in the context: they
   describe this very text; the corpus only covers tokens the text has not shown yet. Since a token
   with a context follower always has a unigram lookup match, the chain starts only on a token
   unseen in the context: without `corpus_ids` it never fills anything, and with it the context
   statistics steer the chain once it reaches a token seen in the context.

`corpus_ids` is a JSON file (a path relative to the working directory), either a bigram table as
in CS-Drafting's `bigram_models/*.json` (a list indexed by token id giving the next id, -1 or
null for none) or an object `{"token_ids": [...]}` holding token ids of a text, or a list of such
lists (documents; no bigram crosses two), from which the table is counted like the context's.

Deterministic: the verifier treats the tokens as point masses (`draft_probs` is None). The
confidence of a copied token is the length n of the match it was copied after; bigram-filled
tokens get `BIGRAM_CONFIDENCE` = 0.5, below any match. Schedulers rank drafts by confidence, and
bigram fills are the least trusted. Never touches the model: its cost is a few dictionary
look-ups per call, independent of the context length (an incrementally maintained n-gram index,
searched by bisection over n since a suffix that matches has matching shorter suffixes). Indexing
grows with max_ngram squared: at a 4,096-token prompt, max_ngram 16 takes about 45 ms and 7 MB to
index the prompt and 45 µs per call after 3 new tokens; 32 takes 190 ms, 24 MB and 180 µs, and
longer matches only choose among earlier occurrences of the same 16 tokens. Hence the default 16.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cas_spec.core.interfaces import DraftStrategy
from cas_spec.core.state import DecodingState
from cas_spec.core.types import EMPTY_DRAFT, DraftResult
from cas_spec.strategies.prompt_lookup import NgramIndex

#: Confidence of a bigram-filled token: below the match length (≥ 1) of any copied token.
BIGRAM_CONFIDENCE = 0.5


class MaxGramOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_ngram: int = Field(16, ge=1, le=64, description="Longest suffix looked up (any match of 1 or more counts).")
    num_tokens: int = Field(10, ge=1, le=256, description="Most tokens proposed per call (CS-Drafting: 10).")
    occurrence: Literal["earliest", "latest"] = Field(
        "latest", description="Which occurrence of the longest match is copied (paper: earliest)."
    )
    bigram: bool = Field(True, description="Fill what the lookup cannot with a greedy bigram chain.")
    corpus_ids: str | None = Field(
        None, description='JSON bigram table (list by token id) or {"token_ids": [...]} backing the chain.'
    )

    @field_validator("corpus_ids")
    @classmethod
    def _readable_corpus(cls, path: str | None) -> str | None:
        if path is not None:
            load_corpus_bigrams(path)
        return path

    @model_validator(mode="after")
    def _corpus_needs_bigram(self):
        if self.corpus_ids is not None and not self.bigram:
            raise ValueError("corpus_ids is set but bigram is false: the corpus table would never be used")
        return self


class BigramTable:
    """The most frequent follower of each token, counted incrementally; ties go to the most recent."""

    def __init__(self):
        self.counts: dict[int, dict[int, int]] = {}
        self.best: dict[int, int] = {}

    def add(self, token: int, follower: int) -> None:
        followers = self.counts.setdefault(token, {})
        count = followers[follower] = followers.get(follower, 0) + 1
        best = self.best.get(token)
        if best is None or count >= followers[best]:
            self.best[token] = follower

    def add_text(self, ids: list[int]) -> None:
        for token, follower in itertools.pairwise(ids):
            self.add(token, follower)


def _is_id(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _table_from_list(entries: list, path: str) -> dict[int, int]:
    for i, entry in enumerate(entries):
        if entry is not None and not _is_id(entry, -1):
            raise ValueError(f"corpus_ids {path}: entry {i} is {entry!r}; expected a token id, -1 or null")
    return {i: entry for i, entry in enumerate(entries) if entry is not None and entry >= 0}


def _table_from_texts(texts: object, path: str) -> dict[int, int]:
    if isinstance(texts, list) and texts and all(isinstance(text, list) for text in texts):
        documents: Iterable = texts
    else:
        documents = [texts]
    table = BigramTable()
    for d, ids in enumerate(documents):
        if not isinstance(ids, list):
            raise ValueError(f"corpus_ids {path}: token_ids must be a list of token ids or a list of such lists")
        bad = next((i for i, t in enumerate(ids) if not _is_id(t, 0)), None)
        if bad is not None:
            raise ValueError(
                f"corpus_ids {path}: token_ids{f'[{d}]' if ids is not texts else ''}[{bad}] is "
                f"{ids[bad]!r}; expected a token id (an integer ≥ 0)"
            )
        table.add_text(ids)
    return table.best


@lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int, size: int) -> dict[int, int]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"corpus_ids {path}: cannot read the file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"corpus_ids {path}: not valid JSON ({exc})") from None
    if isinstance(data, list):
        table = _table_from_list(data, path)
    elif isinstance(data, dict) and set(data) == {"token_ids"}:
        table = _table_from_texts(data["token_ids"], path)
    else:
        raise ValueError(
            f"corpus_ids {path}: expected a JSON list (a bigram table indexed by token id) or an "
            f'object {{"token_ids": [...]}}, got {type(data).__name__}'
            + (f" with keys {sorted(data)}" if isinstance(data, dict) else "")
        )
    if not table:
        raise ValueError(f"corpus_ids {path}: holds no bigram")
    return table


def load_corpus_bigrams(path: str) -> dict[int, int]:
    """The corpus table (token id → next id) of a `corpus_ids` file; ValueError naming the problem."""
    try:
        stat = Path(path).stat()
    except OSError:
        raise ValueError(f"corpus_ids {path}: no such file") from None
    if not Path(path).is_file():
        raise ValueError(f"corpus_ids {path}: not a file")
    return _load(path, stat.st_mtime_ns, stat.st_size)


class _FirstWins(dict[tuple[int, ...], int]):
    """An index table that keeps the first end position stored per n-gram (the earliest occurrence)."""

    def __setitem__(self, key: tuple[int, ...], value: int) -> None:
        self.setdefault(key, value)


class MaxGram(DraftStrategy):
    name = "max_gram"
    Options = MaxGramOptions
    options: MaxGramOptions

    def __init__(self, options: MaxGramOptions | None = None):
        super().__init__(options)
        path = self.options.corpus_ids
        self.corpus = load_corpus_bigrams(path) if path is not None else {}

    def start(self, state: DecodingState) -> None:
        self.index = NgramIndex(1, self.options.max_ngram)
        if self.options.occurrence == "earliest":
            self.index.tables = {n: _FirstWins() for n in self.index.sizes}
        self.context = BigramTable()

    def _extend(self, tokens: list[int]) -> None:
        first = self.index.next_end
        self.index.extend(tokens)
        if self.options.bigram:
            for end in range(first, len(tokens)):  # the pairs ending at the newly indexed positions
                self.context.add(tokens[end - 1], tokens[end])

    def _longest_match(self, tail: list[int]) -> tuple[int, int] | None:
        """(end, n) of the longest indexed suffix of `tail`, by bisection over n."""
        tables = self.index.tables
        low, high, found = 1, min(self.options.max_ngram, len(tail)), None
        while low <= high:
            n = (low + high) // 2
            end = tables[n].get(tuple(tail[-n:]))
            if end is None:
                high = n - 1
            else:
                found, low = (end, n), n + 1
        return found

    def draft(self, state: DecodingState, prefix: tuple[int, ...], max_tokens: int) -> DraftResult:
        tokens = state.tokens
        self._extend(tokens)
        count = min(self.options.num_tokens, max_tokens)
        committed, total = len(tokens), len(tokens) + len(prefix)
        # Never build `tokens + prefix` (O(context)): the lookups read only the last max_ngram
        # tokens of S + the draft, the copies only what follows a match.
        tail = tokens[-self.options.max_ngram :] + list(prefix)
        out: list[int] = []
        confidence: list[float] = []
        while len(out) < count:
            match = self._longest_match(tail)
            if match is None:
                break
            end, n = match  # end < committed: at least one committed token follows the match
            stop = min(end + count - len(out), total)
            copied = tokens[end : min(stop, committed)] + list(prefix[: max(stop - committed, 0)])
            out += copied
            tail += copied
            confidence += [float(n)] * len(copied)
        if self.options.bigram and tail:
            current = tail[-1]
            while len(out) < count:
                found = self.context.best.get(current, self.corpus.get(current))
                if found is None:
                    break
                current = found
                out.append(current)
                confidence.append(BIGRAM_CONFIDENCE)
        if not out:
            return EMPTY_DRAFT
        return DraftResult(tokens=tuple(out), confidence=tuple(confidence))
