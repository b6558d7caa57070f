"""The small abstract interfaces every plugin implements.

A `DraftStrategy` proposes tokens, a `Scheduler` decides which level drafts where and builds the
token tree, a `Verifier` decides what the target accepts. Each class declares a `name` (its key
in the registry and in YAML) and an inner pydantic `Options` model whose extra keys are
forbidden; a plugin receives its validated `Options` instance. Notation: target = p, draft = q.

What a strategy can do beyond `draft` is declared, not detected: `can_review` (it gives its own
distribution over given tokens, for cascades), `offers_candidates` (several proposals at once,
for tree schedulers), `runs_target` (it drafts with the target model itself and receives it in
`setup`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from cas_spec.core.types import Candidate, DraftResult, SamplingParams, SetupContext, StepTimings, TokenTree, Verdict

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
    #: True when `review` gives the strategy's own distribution over given tokens (cascades).
    can_review: ClassVar[bool] = False
    #: True when `candidates` offers several proposals at once (tree schedulers).
    offers_candidates: ClassVar[bool] = False
    #: True when the strategy drafts with the target model itself: `setup` then receives it.
    runs_target: ClassVar[bool] = False

    def setup(self, context: SetupContext) -> None:
        """Called once when the pipeline is built: its tokenizer and vocabulary size, and, for a
        strategy declaring `runs_target`, the target (`context.target`), which it drafts with only
        inside `Target.draft_pass`."""

    def start(self, state: DecodingState) -> None:
        """Called before each generation, after prefill."""

    def prepare(self, target: Target, text_ids: Sequence[int], progress: bool = True) -> None:
        """One-time work done ahead of generation on real text by `cas-spec calibrate` and on a
        pipeline's first use (e.g. `layer_sparsity` searches its skip set to the end). May use
        `target`'s cache freely: a generation prefills its own. By default nothing."""

    @abstractmethod
    def draft(self, state: DecodingState, prefix: tuple[int, ...], max_tokens: int) -> DraftResult:
        """Propose up to `max_tokens` tokens continuing `state.tokens + prefix`.

        `prefix` holds tree tokens drafted below the root but not verified. The result's
        `draft_probs` must be the exact distribution each token was sampled from, or None.
        """

    def memory_bytes(self) -> int:
        """Bytes of the tensors this strategy holds beyond the target's own (int8 twins, a draft
        head's rows, a corpus index); reported by `cas-spec generate --stats`. By default 0."""
        return 0

    def observe(self, state: DecodingState) -> None:
        """Called after every verified step, once its tokens are committed (`state.tokens` holds
        them): online adaptation to the text, such as `layer_sparsity` scoring a candidate skip
        set on it. Timed apart from drafting (`LevelStats.adapt_seconds`): it is not a draft's
        cost. By default nothing."""

    def review(self, state: DecodingState, prefix: tuple[int, ...], tokens: tuple[int, ...]) -> torch.Tensor:
        """With `can_review`: this level's own distribution at each of `tokens` and after the last
        one, for a cascade in which it reviews a cheaper level's draft: [len(tokens) + 1, V]
        float32, row i = its distribution after `state.tokens + prefix + tokens[:i]` (warped like
        the target's)."""
        raise NotImplementedError(f"{type(self).__name__} cannot review (can_review is False)")

    def candidates(self, state: DecodingState, prefix: tuple[int, ...], max_tokens: int, count: int) -> list[Candidate]:
        """With `offers_candidates`: up to `count` proposals of up to `max_tokens` tokens each,
        best first (the first is what `draft` proposes), each with a `key` naming its kind."""
        raise NotImplementedError(f"{type(self).__name__} offers no candidates (offers_candidates is False)")

    def offer_candidates(self, count: int) -> None:
        """With `offers_candidates`: a scheduler will ask for up to `count` candidates per call
        (called once, when the pipeline is built, so the strategy can keep what that needs)."""


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
