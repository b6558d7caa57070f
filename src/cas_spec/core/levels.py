"""`Level`: one configured strategy instance in a pipeline, with its own name and counters."""

from __future__ import annotations

import time

from cas_spec.core.interfaces import DraftStrategy
from cas_spec.core.state import DecodingState
from cas_spec.core.types import EMPTY_DRAFT, DraftResult


class Level:
    """A named strategy instance. Schedulers draft through `Level.draft` and review through
    `Level.review`, which are timed."""

    def __init__(self, name: str, strategy: DraftStrategy):
        self.name = name
        self.strategy = strategy
        self.calls = 0
        self.proposed = 0  # tokens returned by draft calls (schedulers may verify fewer)
        self.seconds = 0.0

    def reset_counters(self) -> None:
        self.calls = 0
        self.proposed = 0
        self.seconds = 0.0

    def draft(self, state: DecodingState, prefix: tuple[int, ...], max_tokens: int) -> DraftResult:
        if max_tokens <= 0:
            return EMPTY_DRAFT
        start = time.perf_counter()
        try:
            result = self.strategy.draft(state, prefix, max_tokens)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1
        if len(result) > max_tokens:
            raise RuntimeError(
                f"level '{self.name}' drafted {len(result)} tokens; at most {max_tokens} were asked for"
            )
        self.proposed += len(result)
        return result

    def review(self, state: DecodingState, prefix: tuple[int, ...], tokens: tuple[int, ...]):
        """The strategy's `review` of `tokens` (a cascade's intermediate review), timed and
        counted as a call like a draft: its time is this level's time, not the scheduler's."""
        start = time.perf_counter()
        try:
            return self.strategy.review(state, prefix, tokens)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1

    def __repr__(self) -> str:
        return f"Level({self.name!r}, {type(self.strategy).__name__})"
