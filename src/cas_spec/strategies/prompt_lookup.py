"""`prompt_lookup` (PLD): copy what followed the latest earlier occurrence of the context's suffix.

For n from `max_ngram` down to `min_ngram`, look up the last n tokens of prompt + generated text;
at the most recent earlier occurrence, propose the tokens that followed it. When the proposal
reaches the end of the text it continues periodically (a match at distance d means the text
repeats with period d). Deterministic: the verifier treats its tokens as point masses.

An incrementally maintained index (n-gram → most recent end position) makes a call cost a few
dictionary look-ups, independent of context length: no scan over the context per step.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cas_spec.core.interfaces import DraftStrategy
from cas_spec.core.state import DecodingState
from cas_spec.core.types import EMPTY_DRAFT, DraftResult


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


class NgramIndex:
    """For each n, the most recent end position e (exclusive, e < len) of every n-gram."""

    def __init__(self, min_ngram: int, max_ngram: int):
        self.sizes = range(min_ngram, max_ngram + 1)
        self.tables: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}
        self.next_end = 1

    def extend(self, tokens: list[int]) -> None:
        """Index every n-gram that ends before the last token and is not indexed yet."""
        for end in range(self.next_end, len(tokens)):
            for n in self.sizes:
                if end >= n:
                    self.tables[n][tuple(tokens[end - n:end])] = end
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


class PromptLookup(DraftStrategy):
    name = "prompt_lookup"
    Options = PromptLookupOptions

    def start(self, state: DecodingState) -> None:
        self.index = NgramIndex(self.options.min_ngram, self.options.max_ngram)

    def draft(self, state: DecodingState, prefix: tuple[int, ...], max_tokens: int) -> DraftResult:
        tokens = state.tokens
        self.index.extend(tokens)
        # Never build `tokens + prefix`: copying the context would make every call O(context). The
        # lookup reads only the last max_ngram tokens, the proposal only what follows the match.
        tail = tokens[-self.options.max_ngram:] + list(prefix) if prefix else tokens
        match = self.index.lookup(tail)
        if match is None:
            return EMPTY_DRAFT
        end, n = match
        count = min(self.options.num_tokens, max_tokens)
        following = tokens[end:end + count] + list(prefix[:max(end + count - len(tokens), 0)])
        return DraftResult(tokens=tuple(continue_match(following, 0, count)),
                           confidence=(float(n),) * count)
