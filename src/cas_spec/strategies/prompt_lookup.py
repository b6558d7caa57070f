"""`prompt_lookup` (PLD): copy what followed the latest earlier occurrence of the context's suffix.

For n from `max_ngram` down to `min_ngram`, look up the last n tokens of prompt + generated text;
at the most recent earlier occurrence, propose the tokens that followed it. When the proposal
reaches the end of the text it continues periodically (a match at distance d means the text
repeats with period d). Deterministic: the verifier treats its tokens as point masses.

An incrementally maintained index (n-gram → most recent end position) makes a call cost a few
dictionary look-ups, independent of context length: no scan over the context per step.

`PromptLookup.candidates` returns several matches at once (each n-gram length, and the last few
occurrences of each n-gram, longest and most recent first) for schedulers that verify them
together as a tree (`lookup_tree`). The index keeps the earlier occurrences only when a scheduler
asks for them (`offer_candidates`), and at most that many per n-gram: memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cas_spec.core.interfaces import DraftStrategy
from cas_spec.core.state import DecodingState
from cas_spec.core.types import EMPTY_DRAFT, Candidate, DraftResult


class PromptLookupOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_ngram: int = Field(3, ge=1, le=32, description="Longest suffix n-gram looked up first.")
    min_ngram: int = Field(1, ge=1, le=32, description="Shortest suffix n-gram accepted as a match.")
    num_tokens: int = Field(10, ge=1, le=256, description="Most tokens proposed per call.")

    @model_validator(mode="after")
    def _ngram_order(self):
        if self.min_ngram > self.max_ngram:
            raise ValueError(f"min_ngram ({self.min_ngram}) must not exceed max_ngram ({self.max_ngram})")
        return self


def continue_match(sequence: list[int], end: int, count: int) -> list[int]:
    """The `count` tokens following position `end`, continuing periodically past the end."""
    period = len(sequence) - end
    out: list[int] = []
    for i in range(count):
        j = end + i
        out.append(sequence[j] if j < len(sequence) else out[i - period])
    return out


@dataclass(frozen=True)
class Match:
    """One earlier occurrence of the context's suffix n-gram."""

    end: int  # position just after the matched n-gram (what follows it starts here)
    n: int  # n-gram length
    occurrence: int  # 0 = the most recent occurrence of this n-gram, 1 = the one before, ...


class NgramIndex:
    """For each n, the most recent end position e (exclusive, e < len) of every n-gram, and, when
    `occurrences` > 1, up to `occurrences - 1` earlier end positions of it (most recent first)."""

    def __init__(self, min_ngram: int, max_ngram: int, occurrences: int = 1):
        if occurrences < 1:
            raise ValueError(f"occurrences must be at least 1, got {occurrences}")
        self.sizes = range(min_ngram, max_ngram + 1)
        self.tables: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}
        self.occurrences = occurrences
        self.earlier: dict[int, dict[tuple[int, ...], tuple[int, ...]]] = {n: {} for n in self.sizes}
        self.next_end = 1

    def extend(self, tokens: list[int]) -> None:
        """Index every n-gram that ends before the last token and is not indexed yet."""
        keep = self.occurrences - 1
        for end in range(self.next_end, len(tokens)):
            for n in self.sizes:
                if end >= n:
                    key = tuple(tokens[end - n : end])
                    table = self.tables[n]
                    if keep:
                        previous = table.get(key)
                        if previous is not None:
                            earlier = self.earlier[n]
                            earlier[key] = ((previous,) + earlier.get(key, ()))[:keep]
                    table[key] = end
        self.next_end = max(self.next_end, len(tokens))

    def lookup(self, sequence: list[int]) -> tuple[int, int] | None:
        """(end position, n) of the longest, most recent match of `sequence`'s suffix, or None."""
        for n in reversed(self.sizes):
            if len(sequence) <= n:
                continue
            end = self.tables[n].get(tuple(sequence[-n:]))
            if end is not None:
                return end, n
        return None

    def candidates(self, sequence: list[int], count: int) -> list[Match]:
        """Up to `count` matches of `sequence`'s suffix with distinct end positions: longest n
        first, and for each n its occurrences most recent first (at most `occurrences` per n).
        The first is `lookup`'s match. A shorter n-gram ending where a longer one already matched
        is the same continuation and is skipped."""
        out: list[Match] = []
        seen: set[int] = set()
        for n in reversed(self.sizes):
            if len(out) >= count:
                break
            if len(sequence) <= n:
                continue
            key = tuple(sequence[-n:])
            latest = self.tables[n].get(key)
            if latest is None:
                continue
            for occurrence, end in enumerate((latest, *self.earlier[n].get(key, ()))):
                if end not in seen:
                    seen.add(end)
                    out.append(Match(end, n, occurrence))
                    if len(out) >= count:
                        break
        return out


class PromptLookup(DraftStrategy):
    name = "prompt_lookup"
    Options = PromptLookupOptions
    options: PromptLookupOptions
    offers_candidates = True
    occurrences = 1  # occurrences kept per n-gram; raised by `offer_candidates`

    def offer_candidates(self, count: int) -> None:
        """Keep the last `count` occurrences of every n-gram from the next `start` on (a tree
        scheduler that verifies several matches calls this once, when the pipeline is built)."""
        self.occurrences = max(self.occurrences, count)

    def start(self, state: DecodingState) -> None:
        self.index = NgramIndex(self.options.min_ngram, self.options.max_ngram, self.occurrences)

    def draft(self, state: DecodingState, prefix: tuple[int, ...], max_tokens: int) -> DraftResult:
        tokens = state.tokens
        self.index.extend(tokens)
        match = self.index.lookup(self._tail(tokens, prefix))
        if match is None:
            return EMPTY_DRAFT
        end, n = match
        return self._proposal(tokens, prefix, end, n, min(self.options.num_tokens, max_tokens))

    def candidates(self, state: DecodingState, prefix: tuple[int, ...], max_tokens: int, count: int) -> list[Candidate]:
        """Up to `count` proposals from distinct matches (`NgramIndex.candidates` order), each as
        `draft` would make it from that match, keyed (n-gram length, occurrence); the first is
        exactly `draft`'s proposal."""
        tokens = state.tokens
        self.index.extend(tokens)
        size = min(self.options.num_tokens, max_tokens)
        if size <= 0:
            return []
        return [
            Candidate((match.n, match.occurrence), self._proposal(tokens, prefix, match.end, match.n, size))
            for match in self.index.candidates(self._tail(tokens, prefix), count)
        ]

    def _tail(self, tokens: list[int], prefix: tuple[int, ...]) -> list[int]:
        # Never build `tokens + prefix`: copying the context would make every call O(context). The
        # lookup reads only the last max_ngram tokens, the proposal only what follows the match.
        return tokens[-self.options.max_ngram :] + list(prefix) if prefix else tokens

    @staticmethod
    def _proposal(tokens: list[int], prefix: tuple[int, ...], end: int, n: int, count: int) -> DraftResult:
        following = tokens[end : end + count] + list(prefix[: max(end + count - len(tokens), 0)])
        return DraftResult(tokens=tuple(continue_match(following, 0, count)), confidence=(float(n),) * count)
