"""`SelfDraftStrategy`: the common draft loop of the self-speculative (DSIA) strategies.

Notation: the target's distribution is p, the drafter's q. A self-speculative level receives the
target in `setup` and drafts with it switched into a `ModelVariant` (`variants.py`), always inside
one `Target.draft_pass`: it feeds the tree root and the unverified `prefix` through the variant in
one forward pass, then one token per pass, reading the target's KV of the committed tokens (the
kept layers see exactly what the target sees) and writing KV for the tokens it feeds. The pass
drops everything it wrote and swaps the target's modules back in `finally`, so a draft that
raises leaves neither the model nor the cache changed.

Greedy decoding proposes the argmax of q (a point mass for the verifier). Sampling proposes a
token drawn from q, warped exactly as the target's p is (temperature, top-k, top-p), and returns
q in `draft_probs`, as the sampling verifier needs it. The confidence of each token is its
probability under q. Drafting stops early when q's top probability falls below `stop_below`
(SWIFT uses 0.8): a stopping rule that looks only at drafted tokens leaves the output
distribution unchanged.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from pydantic import BaseModel, ConfigDict, Field

from cas_spec.core.interfaces import DraftStrategy
from cas_spec.core.sampling import sample, target_probs
from cas_spec.core.state import DecodingState
from cas_spec.core.target import Target
from cas_spec.core.types import EMPTY_DRAFT, DraftResult, SetupContext
from cas_spec.strategies.dsia.variants import ModelVariant


ALTERNATIVES = 8  # runners-up reported per drafted token, for tree schedulers


class SelfDraftOptions(BaseModel):
    """Options every self-speculative strategy shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stop_below: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Stop drafting when the draft's top token probability falls below this (0 = never).",
    )


class SelfDraftStrategy(DraftStrategy):
    """A strategy that drafts with the target model in a cheaper mode (a `ModelVariant`)."""

    deterministic = False  # samples from q when the pipeline samples
    can_review = True
    runs_target = True
    Options = SelfDraftOptions

    def setup(self, context: SetupContext) -> None:
        assert context.target is not None, "a strategy that runs the target receives it in setup"
        self.target: Target = context.target
        self._variant: ModelVariant | None = None

    @abstractmethod
    def build_variant(self, state: DecodingState) -> ModelVariant | None:
        """Build (once, at the first draft) the draft mode of `self.target` (None: propose nothing)."""

    def variant(self, state: DecodingState) -> ModelVariant | None:
        """The variant to draft with this step (None: propose nothing)."""
        if self._variant is None:
            self._variant = self.build_variant(state)
        return self._variant

    def stop_threshold(self, state: DecodingState) -> float:
        """`stop_below`, or 0 while the state asks for exact lengths (`force_length`)."""
        return 0.0 if state.force_length else self.options.stop_below

    def draft(self, state: DecodingState, prefix: tuple[int, ...], max_tokens: int) -> DraftResult:
        variant = self.variant(state)
        if variant is None or max_tokens <= 0:
            return EMPTY_DRAFT
        return draft_chain(self.target, variant, state, prefix, max_tokens, self.stop_threshold(state))

    def review(self, state: DecodingState, prefix: tuple[int, ...], tokens: tuple[int, ...]) -> torch.Tensor:
        variant = self.variant(state)
        return review_chain(self.target, variant, state, prefix, tokens)


@torch.inference_mode()
def draft_chain(target: Target, variant: ModelVariant | None, state: DecodingState, prefix: tuple[int, ...],
                max_tokens: int, stop_below: float = 0.0) -> DraftResult:
    """Draft up to `max_tokens` tokens after `state.tokens + prefix` with `variant` (None: the target
    itself), one token per pass, in one `Target.draft_pass`."""
    feed = [state.root_token, *prefix]
    position = target.length
    tokens: list[int] = []
    confidence: list[float] = []
    rows: list[torch.Tensor] = []
    alternatives: list[tuple[tuple[int, float], ...]] = []
    with target.draft_pass(variant):
        while len(tokens) < max_tokens:
            logits = target.forward(feed, position)[-1]
            position += len(feed)
            token, probs, sampled = _choose(logits, state)
            probability, top = float(probs[token]), float(probs.max())
            if top < stop_below:
                break
            tokens.append(token)
            confidence.append(probability)
            alternatives.append(_runners_up(probs, token))
            if sampled:
                rows.append(probs)
            feed = [token]
    return DraftResult(tokens=tuple(tokens), confidence=tuple(confidence),
                       draft_probs=torch.stack(rows) if rows else None, alternatives=tuple(alternatives))


@torch.inference_mode()
def review_chain(target: Target, variant: ModelVariant | None, state: DecodingState, prefix: tuple[int, ...],
                 tokens: tuple[int, ...]) -> torch.Tensor:
    """[len(tokens) + 1, V] distributions of `variant` (warped as the target's p; one-hot argmax
    when greedy) after `state.tokens + prefix + tokens[:i]`, in one teacher-forced pass."""
    feed = [state.root_token, *prefix, *tokens]
    with target.draft_pass(variant):
        logits = target.forward(feed, target.length, logits_to_keep=len(tokens) + 1)
    return target_probs(logits, state.sampling)


def _runners_up(probs: torch.Tensor, chosen: int) -> tuple[tuple[int, float], ...]:
    """The ALTERNATIVES most likely tokens other than `chosen`, with their draft probability."""
    top = torch.topk(probs, min(ALTERNATIVES + 1, probs.shape[-1]))  # vocabularies under 9 tokens too
    pairs = zip(top.indices.tolist(), top.values.tolist(), strict=True)
    return tuple((t, p) for t, p in pairs if t != chosen and p > 0)[:ALTERNATIVES]


def _choose(logits: torch.Tensor, state: DecodingState) -> tuple[int, torch.Tensor, bool]:
    """(token, draft probabilities [V], whether the token was sampled from them) for one position.

    Greedy: the argmax, with the plain softmax as confidence. Sampling: a draw from q, warped
    exactly as the target's p is."""
    if state.sampling.greedy:
        probs = torch.softmax(logits, dim=-1)
        return int(probs.argmax()), probs, False
    q = target_probs(logits, state.sampling)
    return sample(q, state.generator), q, True


__all__ = ["SelfDraftOptions", "SelfDraftStrategy", "draft_chain", "review_chain"]
