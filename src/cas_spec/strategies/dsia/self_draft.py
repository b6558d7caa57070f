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

With `draft_vocab` set, the LM head of every draft pass is a `dsia.draft_head.SubsetHead` (FR-Spec):
logits over the `draft_vocab` most frequent tokens plus every context token, `-inf` elsewhere,
so q is zero outside that subset; the head is built once per level (in the level's int8 backend
when it drafts in int8), fed the prompt in `start` and the committed tokens in `observe`.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import replace
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cas_spec.core.interfaces import DraftStrategy
from cas_spec.core.memory import module_tensors, owned_bytes
from cas_spec.core.sampling import sample, target_probs
from cas_spec.core.state import DecodingState
from cas_spec.core.target import Target
from cas_spec.core.types import EMPTY_DRAFT, DraftResult, SetupContext
from cas_spec.strategies.dsia import quantization
from cas_spec.strategies.dsia.draft_head import FLOAT_DRAFT_VOCAB, INT8_DRAFT_VOCAB, SubsetHead, build_subset_head
from cas_spec.strategies.dsia.variants import ModelVariant

ALTERNATIVES = 8  # runners-up reported per drafted token, for tree schedulers


class SelfDraftOptions(BaseModel):
    """Options every self-speculative strategy shares."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    int8_head: ClassVar[bool] = False  # the level always drafts with an int8 LM head (`draft_vocab`'s default)

    stop_below: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Stop drafting when the draft's top token probability falls below this (0 = never).",
    )
    draft_vocab: int | None = Field(
        FLOAT_DRAFT_VOCAB,
        ge=1,
        description="Draft logits only over this many most frequent tokens plus every token of the context "
        "(FR-Spec; lossless: the target still verifies over the whole vocabulary); null = the "
        f"full vocabulary. Default: {FLOAT_DRAFT_VOCAB} for a float32 LM head, {INT8_DRAFT_VOCAB} "
        "for a level that drafts in int8 (quanto_activation, or `quantize` set), the best "
        "cost/agreement trade-offs measured on SmolLM2-135M (cas_spec.strategies.dsia.draft_head).",
    )

    @model_validator(mode="before")
    @classmethod
    def _int8_draft_vocab(cls, data: object) -> object:
        """An int8 level's default `draft_vocab`: its int8 head gains less from a small subset."""
        if (
            isinstance(data, dict)
            and "draft_vocab" not in data
            and (cls.int8_head or data.get("quantize", "none") != "none")
        ):
            return {**data, "draft_vocab": INT8_DRAFT_VOCAB}
        return data


class SelfDraftStrategy(DraftStrategy):
    """A strategy that drafts with the target model in a cheaper mode (a `ModelVariant`)."""

    deterministic = False  # samples from q when the pipeline samples
    can_review = True
    runs_target = True
    Options: ClassVar[type[BaseModel]] = SelfDraftOptions
    options: SelfDraftOptions

    def setup(self, context: SetupContext) -> None:
        assert context.target is not None, "a strategy that runs the target receives it in setup"
        self.target: Target = context.target
        self.tokenizer = context.tokenizer  # ranks the draft head's vocabulary
        self._variant: ModelVariant | None = None
        self._head: SubsetHead | None = None
        self._head_built = False
        self._head_fed = 0  # committed tokens already given to the head

    @abstractmethod
    def build_variant(self, state: DecodingState) -> ModelVariant | None:
        """Build (once, at the first draft) the draft mode of `self.target` (None: propose nothing)."""

    def head_backend(self) -> str | None:
        """The int8 backend this level's LM head drafts in (None: float32)."""
        return None

    def draft_head(self) -> SubsetHead | None:
        """The level's `SubsetHead` (built once), or None when it drafts with the full head."""
        if not self._head_built:
            self._head = build_subset_head(
                self.target.adapter.lm_head, self.tokenizer, self.options.draft_vocab, self.head_backend()
            )
            self._head_built = True
        return self._head

    def start(self, state: DecodingState) -> None:
        """Give the draft head this generation's prompt as its context."""
        if (head := self.draft_head()) is not None:
            head.reset_context(state.tokens)
            self._head_fed = len(state.tokens)

    def observe(self, state: DecodingState) -> None:
        """Give the draft head the tokens committed since the last call."""
        if (head := self.draft_head()) is not None:
            head.add_context(state.tokens[self._head_fed :])
            self._head_fed = len(state.tokens)

    def variant(self, state: DecodingState) -> ModelVariant | None:
        """The variant to draft with this step (None: propose nothing), its LM head the
        `SubsetHead` when `draft_vocab` is set."""
        if self._variant is None:
            variant = self.build_variant(state)
            head = self.draft_head()
            self._variant = variant if head is None or variant is None else replace(variant, lm_head=head)
        return self._variant

    def memory_bytes(self) -> int:
        """The variant's own modules (int8 twins) and the draft head's rows, once built."""
        variant = self._variant
        modules = [m for m in ([variant.layers, variant.lm_head] if variant else [self._head]) if m is not None]
        tensors = owned_bytes(module_tensors(modules), self.target.model)
        return tensors + sum(quantization.packed_bytes(m) for m in modules)

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
def draft_chain(
    target: Target,
    variant: ModelVariant | None,
    state: DecodingState,
    prefix: tuple[int, ...],
    max_tokens: int,
    stop_below: float = 0.0,
) -> DraftResult:
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
    return DraftResult(
        tokens=tuple(tokens),
        confidence=tuple(confidence),
        draft_probs=torch.stack(rows) if rows else None,
        alternatives=tuple(alternatives),
    )


@torch.inference_mode()
def review_chain(
    target: Target, variant: ModelVariant | None, state: DecodingState, prefix: tuple[int, ...], tokens: tuple[int, ...]
) -> torch.Tensor:
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
