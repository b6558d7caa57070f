"""`DecodingState`: the engine's view of one generation in progress, read by schedulers and strategies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cas_spec.core.types import SamplingParams

if TYPE_CHECKING:
    from cas_spec.core.target import Target


@dataclass
class DecodingState:
    """Owned and updated by the engine; plugins must treat it as read-only."""

    tokens: list[int]  # committed tokens, prompt included; tokens[-1] is the next tree's root
    prompt_length: int
    sampling: SamplingParams
    generator: torch.Generator | None
    target: Target
    max_depth: int = 0  # deepest tree the engine accepts this step (budget and context limit)
    step: int = 0  # decoding steps done so far
    # Drafters propose exactly the tokens asked for where they can (no early stop): set while a
    # level's draft cost is measured, so that each drafted length is really drafted.
    force_length: bool = False

    @property
    def root_token(self) -> int:
        return self.tokens[-1]

    @property
    def new_tokens(self) -> int:
        return len(self.tokens) - self.prompt_length
