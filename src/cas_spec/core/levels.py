"""`Level`: one configured strategy instance in a pipeline, with its own name and counters."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from cas_spec.core.interfaces import DraftStrategy
from cas_spec.core.state import DecodingState
from cas_spec.core.types import EMPTY_DRAFT, Candidate, DraftResult


def _perf_counter() -> float:
    return time.perf_counter()


class Level:
    """A named strategy instance. Schedulers draft through `Level.draft` and review through
    `Level.review`, which are timed."""

    def __init__(self, name: str, strategy: DraftStrategy, clock: Callable[[], float] | None = None):
        self.name = name
        self.strategy = strategy
        self.clock = clock if clock is not None else _perf_counter  # seconds; simulations pass a fake clock
        self.calls = 0
        self.proposed = 0  # tokens returned by draft calls (schedulers may verify fewer)
        self.seconds = 0.0  # in draft and review calls
        self.adapt_seconds = 0.0  # in `observe`, the strategy's online adaptation

    def reset_counters(self) -> None:
        self.calls = 0
        self.proposed = 0
        self.seconds = 0.0
        self.adapt_seconds = 0.0

    def draft(self, state: DecodingState, prefix: tuple[int, ...], max_tokens: int) -> DraftResult:
        if max_tokens <= 0:
            return EMPTY_DRAFT
        start = self.clock()
        try:
            result = self.strategy.draft(state, prefix, max_tokens)
        finally:
            self.seconds += self.clock() - start
            self.calls += 1
        if len(result) > max_tokens:
            raise RuntimeError(f"level '{self.name}' drafted {len(result)} tokens; at most {max_tokens} were asked for")
        self.proposed += len(result)
        return result

    def review(self, state: DecodingState, prefix: tuple[int, ...], tokens: tuple[int, ...]) -> torch.Tensor:
        """The strategy's `review` of `tokens` (a cascade's intermediate review; the strategy must
        declare `can_review`), timed and counted as a call like a draft: its time is this level's
        time, not the scheduler's."""
        start = self.clock()
        try:
            return self.strategy.review(state, prefix, tokens)
        finally:
            self.seconds += self.clock() - start
            self.calls += 1

    def candidates(self, state: DecodingState, prefix: tuple[int, ...], max_tokens: int, count: int) -> list[Candidate]:
        """The strategy's `candidates` (it must declare `offers_candidates`), timed and counted
        like a draft call; every token of every candidate counts as proposed."""
        start = self.clock()
        try:
            found = self.strategy.candidates(state, prefix, max_tokens, count)
        finally:
            self.seconds += self.clock() - start
            self.calls += 1
        self.proposed += sum(len(c.draft) for c in found)
        return found

    def observe(self, state: DecodingState) -> None:
        """The strategy's `observe` after a verified step, timed apart from its drafts."""
        start = self.clock()
        try:
            self.strategy.observe(state)
        finally:
            self.adapt_seconds += self.clock() - start

    def __repr__(self) -> str:
        return f"Level({self.name!r}, {type(self.strategy).__name__})"
