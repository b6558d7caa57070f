"""The small abstract interfaces every plugin implements.

A `DraftStrategy` proposes tokens, a `Scheduler` decides which level drafts where and builds the
token tree, a `Verifier` decides what the target accepts. Each class declares a `name` (its key
in the registry and in YAML) and an inner pydantic `Options` model whose extra keys are
forbidden. Notation: target = p, draft = q.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from cas_spec.core.types import DraftResult, SamplingParams, StepTimings, TokenTree, Verdict

if TYPE_CHECKING:
    from cas_spec.core.levels import Level
    from cas_spec.core.state import DecodingState
    from cas_spec.core.target import Target


class NoOptions(BaseModel):
    """Options of a plugin that takes none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Plugin(ABC):
    """Common shape of strategies, schedulers and verifiers."""

    name: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, options: BaseModel | None = None):
        self.options = options if options is not None else self.Options()


class DraftStrategy(Plugin):
    """One way to draft. Instances are levels of a pipeline (several may share a class)."""

    #: True when the strategy never samples (its drafts are point masses for the verifier).
    deterministic: ClassVar[bool] = True

    def setup(self, target: Target) -> None:
        """Called once when the pipeline is built, with the shared target model."""

    def start(self, state: DecodingState) -> None:
        """Called before each generation, after prefill."""

    def prepare(self, target: Target, text_ids: Sequence[int], progress: bool = True) -> None:
        """One-time work done ahead of generation on real text by `cas-spec calibrate` (e.g.
        `layer_sparsity` searches its skip set to the end). May use `target`'s cache freely: a
        generation prefills its own. By default nothing."""

    @abstractmethod
    def draft(self, state: DecodingState, prefix: tuple[int, ...], max_tokens: int) -> DraftResult:
        """Propose up to `max_tokens` tokens continuing `state.tokens + prefix`.

        `prefix` holds tree tokens drafted below the root but not verified. The result's
        `draft_probs` must be the exact distribution each token was sampled from, or None.
        """

    def observe(self, state: DecodingState) -> None:
        """Called after every verified step, once its tokens are committed (`state.tokens` holds
        them): online adaptation to the text, such as `layer_sparsity` scoring a candidate skip
        set on it. Timed apart from drafting (`LevelStats.adapt_seconds`): it is not a draft's
        cost. By default nothing."""

    def review(self, state: DecodingState, prefix: tuple[int, ...], tokens: tuple[int, ...]) -> torch.Tensor | None:
        """This level's own distribution at each of `tokens` and after the last one, for a cascade
        in which it reviews a cheaper level's draft: [len(tokens) + 1, V] float32, row i = its
        distribution after `state.tokens + prefix + tokens[:i]` (warped like the target's), or None
        when the strategy cannot review (lookup strategies)."""
        return None


class Scheduler(Plugin):
    """Decides, every step, which levels draft which part of the token tree."""

    def __init__(self, options: BaseModel | None, levels: list[Level]):
        super().__init__(options)
        self.levels = levels

    @classmethod
    def check_levels(cls, options: BaseModel, level_names: list[str]) -> list[str]:
        """Problems with the pipeline's levels for these options, as `location: message`."""
        return []

    def start(self, state: DecodingState) -> None:
        """Called before each generation, after prefill."""

    @abstractmethod
    def build_tree(self, state: DecodingState) -> TokenTree:
        """Draft a token tree rooted at `state.tokens[-1]` (a tree of one node = no draft)."""

    def observe(self, tree: TokenTree, verdict: Verdict, timings: StepTimings) -> None:
        """Learn from a verified step (acceptance, timings)."""


class Verifier(Plugin):
    """Decides which path of a token tree the target accepts, plus the bonus token."""

    @abstractmethod
    def verify(
        self,
        tree: TokenTree,
        target_logits: torch.Tensor,  # [N, V] float32, row i = target logits after node i
        sampling: SamplingParams,
        generator: torch.Generator | None,
    ) -> Verdict:
        """Return the accepted path and the bonus token."""
