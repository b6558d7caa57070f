"""`DecodingState`: the engine's view of one generation in progress, read by schedulers and strategies.

What a plugin may read: the committed tokens, the sampling settings and generator, the step's
depth budget, the context length the KV cache holds, and the read-only cost model. It never holds
the target model or its cache: only strategies that run the target receive it, once, in `setup`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cas_spec.core.cost_model import UNCALIBRATED, CostModel
from cas_spec.core.types import SamplingParams


@dataclass
class DecodingState:
    """Owned and updated by the engine; plugins must treat it as read-only."""

    tokens: list[int]  # committed tokens, prompt included; tokens[-1] is the next tree's root
    prompt_length: int  # tokens of the prompt at the start of `tokens`
    sampling: SamplingParams  # this generation's sampling settings
    generator: torch.Generator | None  # draw every random number from it (None: greedy)
    costs: CostModel = field(default=UNCALIBRATED)  # verification and draft costs, read-only
    context_length: int = 0  # committed tokens the KV cache holds: all but the root
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
