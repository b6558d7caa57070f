"""Frozen dataclasses that cross module boundaries.

Notation, used the same way in every module: the target model's probabilities are `p`
(`target_probs`), a drafter's are `q` (`draft_probs`). Shapes are given per tensor field;
V is the vocabulary size, N the number of nodes of a token tree, K a number of drafted tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from cas_spec.core.target import Target


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen. temperature 0 means greedy (argmax)."""

    temperature: float = 0.0  # 0: greedy; otherwise logits are divided by it before the softmax
    top_k: int | None = None  # keep the k most likely tokens (None: all)
    top_p: float | None = None  # keep the smallest set of tokens with this much probability (None: all)
    min_p: float | None = None  # drop tokens less likely than min_p × the most likely one's probability (None: none)
    seed: int | None = None  # seeds the generation's torch.Generator (None: unseeded)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class DraftResult:
    """What one draft call proposes: a chain of tokens continuing a tree node.

    `draft_probs` is the distribution q each token was *sampled from*; it is None for
    deterministic proposals (prompt lookup, argmax drafts), which the sampling verifier then
    treats as point masses. `confidence` is the drafter's own estimate per token (draft
    probability for model drafters, match length for lookup drafters).
    """

    tokens: tuple[int, ...]  # the drafted chain, in order
    confidence: tuple[float, ...] = ()  # one per token, or () for none
    draft_probs: torch.Tensor | None = None  # [K, V] float32, row i = q that tokens[i] was sampled from
    # Per drafted position, the drafter's runners-up as (token, probability), most likely first,
    # the drafted token excluded; () when the drafter has none (lookup). Tree schedulers may add
    # them as siblings: they are deterministic proposals (point masses for the verifier).
    alternatives: tuple[tuple[tuple[int, float], ...], ...] = ()

    def __post_init__(self) -> None:
        if self.confidence and len(self.confidence) != len(self.tokens):
            raise ValueError("confidence must have one value per drafted token")
        if self.alternatives and len(self.alternatives) != len(self.tokens):
            raise ValueError("alternatives must have one entry per drafted token")
        if self.draft_probs is not None and self.draft_probs.shape[0] != len(self.tokens):
            raise ValueError("draft_probs must have one row per drafted token")

    def __len__(self) -> int:
        return len(self.tokens)


EMPTY_DRAFT = DraftResult(tokens=())


@dataclass(frozen=True)
class Candidate:
    """One of several proposals a strategy offers at once (`DraftStrategy.candidates`)."""

    key: tuple[int, ...]  # the proposal's kind, for per-kind acceptance (prompt lookup: n, occurrence)
    draft: DraftResult  # the proposal itself


@dataclass(frozen=True)
class SetupContext:
    """What a strategy receives once, in `DraftStrategy.setup`, when its pipeline is built."""

    tokenizer: Any  # the pipeline's tokenizer (strategies that read text, e.g. from a corpus)
    vocab_size: int  # the target's vocabulary size
    target: Target | None = None  # only for strategies that declare `runs_target`


@dataclass(frozen=True)
class TokenTree:
    """Drafted tokens as a tree rooted at the newest committed token (node 0).

    Nodes are in topological order (a parent comes before its children). A chain is a tree
    with one path. Built with `cas_spec.core.tree.TreeBuilder`.
    """

    tokens: torch.Tensor  # [N] int64, node 0 = the root (newest committed token, not yet in the KV cache)
    parents: tuple[int, ...]  # parents[i] < i; parents[0] == -1
    depths: torch.Tensor  # [N] int64, depth of each node (root 0)
    levels: tuple[str | None, ...]  # name of the level that drafted each node (None for the root)
    confidence: tuple[float, ...]  # drafter's confidence per node (1.0 for the root)
    draft_probs: tuple[torch.Tensor | None, ...]  # per node: [V] q the token was sampled from, or None
    children: tuple[tuple[int, ...], ...] = field(default=())  # filled by TreeBuilder, in insertion order

    @property
    def size(self) -> int:
        return len(self.parents)

    @property
    def is_chain(self) -> bool:
        return all(p == i - 1 for i, p in enumerate(self.parents))


@dataclass(frozen=True)
class Verdict:
    """What verification decided: the accepted path and the bonus token."""

    accepted_nodes: tuple[int, ...]  # tree nodes accepted, root excluded, in path order
    accepted_tokens: tuple[int, ...]  # their tokens
    bonus_token: int  # the target's own token after the accepted path (always exactly one)

    @property
    def new_tokens(self) -> tuple[int, ...]:
        return self.accepted_tokens + (self.bonus_token,)


@dataclass(frozen=True)
class StepTimings:
    """Wall-clock seconds spent in one decoding step, by phase."""

    draft: float
    verify: float  # the target forward over the tree
    total: float  # the whole step, engine overhead included


@dataclass(frozen=True)
class LevelStats:
    drafted: int = 0  # tokens this level put into trees
    accepted: int = 0  # of those, tokens the target accepted
    calls: int = 0  # draft calls
    proposed: int = 0  # tokens its draft calls returned (a scheduler may verify fewer)
    seconds: float = 0.0  # wall-clock time in its draft calls
    adapt_seconds: float = 0.0  # wall-clock time in its online adaptation (`DraftStrategy.observe`)


@dataclass(frozen=True)
class GenerationStats:
    """Statistics of one generation run."""

    prompt_tokens: int
    new_tokens: int
    target_forwards: int  # verification forwards (prefill excluded)
    levels: dict[str, LevelStats]
    prefill_seconds: float
    draft_seconds: float
    verify_seconds: float
    overhead_seconds: float  # decoding time spent outside drafting and target forwards
    decode_seconds: float  # all decoding after prefill
    stop_reason: str  # "eos", "max_new_tokens", "context_limit" or "stopping_criteria"
    acceptance_lengths: tuple[int, ...] = ()  # tokens committed by each target forward
    scheduling_seconds: float = 0.0  # drafting time outside the levels' draft calls: the scheduler's own work
    adapt_seconds: float = 0.0  # the levels' online adaptation after steps (e.g. a skip-set search)
    wait_seconds: float = 0.0  # waited for another thread's generation on the same pipeline to end

    @property
    def mean_acceptance_length(self) -> float:
        """Tokens committed per target forward, bonus included (1.0 = autoregressive)."""
        return self.new_tokens / self.target_forwards if self.target_forwards else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0
