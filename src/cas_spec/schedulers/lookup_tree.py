"""`lookup_tree`: several prompt-lookup matches verified together as one token tree.

The level (a `prompt_lookup` level) proposes up to `candidates` continuations from distinct
matches of the context's suffix, longest n-gram first and, for each n, the most recent occurrence
first (`PromptLookup.candidates`, a strategy declaring `offers_candidates`; the index keeps the last
`candidates` occurrences of every n-gram, as the scheduler asks through `offer_candidates`). Each is at most `k` tokens long. The proposals are merged into a trie below the root:
branches that share a prefix share nodes (a token is added under a parent only once). A level
that offers no candidates (any other strategy) proposes its one draft: the tree is a chain.

Model (cost-aware trimming, `adaptive: true` with a measured cost table):
- Each candidate key (n-gram length n, occurrence index j) has a per-token acceptance estimate
  α_(n,j): the fraction of its tokens the target agreed with, given the tokens before them agreed
  (the i.i.d. chain model of `acceptance.py`). After every step each proposal of that step, in
  the tree or trimmed away, is compared with what the target committed (accepted tokens plus the
  bonus token): m matching tokens are m successes, and a mismatch within that horizon one failure
  (a run that reaches the horizon is censored: no failure). The counts decay by `ema_decay` per
  observation, α = (S + ½) / (S + F + 1). Since the bonus token always gives one observation,
  every estimate keeps learning even while the tree is a chain or a plain step: no probe steps.
- A node at depth d has the value a = max over the candidates through it of α^d: the probability
  that the target's continuation passes through it. Siblings are exclusive (the target takes one
  token), so, in order of value, a child keeps at most what its parent's value leaves after its
  better siblings: Σ children ≤ parent. A child's value never exceeds its parent's.
- A tree T verified in one forward commits E(T) = 1 + Σ_(v ∈ T) a_v tokens on average (bonus
  included) at the relative cost cost(|T| + 1) of a target forward over its nodes and the root
  (the measured table, `state.costs`). Drafting by lookup is taken as free. The best tree
  of s drafted nodes is the s nodes of highest value (a valid tree, as values fall with depth),
  and the scheduler verifies the s ≤ `max_nodes` − 1 that maximises E / cost, s = 0 (a plain
  step) included. Where the alternatives rarely hold the right token this is the chain of the
  longest, most recent match, trimmed to what pays; where they do, it is a tree.
Without a cost table (`calibration: off`) or with `adaptive: false`, the `max_nodes` − 1 nodes of
highest value are verified. Proposals are deterministic: the verifier treats every node as a
point mass, exact for any set of siblings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from cas_spec.core.state import DecodingState
from cas_spec.core.tree import TreeBuilder
from cas_spec.core.types import StepTimings, TokenTree, Verdict
from cas_spec.schedulers.single_level import SingleLevelScheduler

if TYPE_CHECKING:
    from cas_spec.core.levels import Level


class LookupTreeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    level: str | None = Field(None, description="Name of the lookup level; default: the first level.")
    candidates: int = Field(4, ge=1, le=32, description="Most lookup matches proposed per step.")
    k: int = Field(5, ge=1, le=64, description="Most tokens per candidate.")
    max_nodes: int = Field(16, ge=1, le=1024, description="Most tree nodes, root included.")
    adaptive: bool = Field(True, description="Trim the tree by measured cost and online acceptance.")
    ema_decay: float = Field(0.8, ge=0.0, lt=1.0, description="Decay of the acceptance counts per observation.")


@dataclass
class MatchEstimate:
    """Decayed success/failure counts of one candidate key; α = (S + ½) / (S + F + 1)."""

    successes: float = 0.0
    failures: float = 0.0

    @property
    def alpha(self) -> float:
        return (self.successes + 0.5) / (self.successes + self.failures + 1.0)

    def update(self, matched: int, failed: bool, decay: float) -> None:
        self.successes = decay * self.successes + matched
        self.failures = decay * self.failures + (1.0 if failed else 0.0)


@dataclass(frozen=True)
class Proposal:
    key: tuple[int, ...]  # (n-gram length, occurrence index); (0, 0) for a level without candidates
    tokens: tuple[int, ...]
    confidence: float  # match length n


def best_tree_size(values: list[float], cost: Callable[[int, int], float], context: int) -> int:
    """How many of the nodes (values sorted descending) to verify: maximise
    (1 + Σ_(i<s) values[i]) / cost(s + 1, context) over s = 0 … len(values); 0 = a plain step."""
    best, best_value, total = 0, 1.0 / cost(1, context), 1.0
    for s, value in enumerate(values, start=1):
        total += value
        ratio = total / cost(s + 1, context)
        if ratio > best_value * (1 + 1e-9):
            best, best_value = s, ratio
    return best


class LookupTreeScheduler(SingleLevelScheduler):
    name = "lookup_tree"
    Options = LookupTreeOptions
    options: LookupTreeOptions

    def __init__(self, options: BaseModel | None, levels: list[Level]):
        super().__init__(options, levels)
        if self.level.strategy.offers_candidates:
            self.level.strategy.offer_candidates(self.options.candidates)
        self.estimates: dict[tuple[int, ...], MatchEstimate] = {}
        self.pending: list[Proposal] = []

    def start(self, state: DecodingState) -> None:
        self.estimates = {}
        self.pending = []

    def alpha(self, key: tuple[int, ...]) -> float:
        estimate = self.estimates.get(key)
        return estimate.alpha if estimate is not None else MatchEstimate().alpha

    def propose(self, state: DecodingState, limit: int) -> list[Proposal]:
        """The level's candidates (a level that offers none proposes its one draft)."""
        level = self.level
        if not level.strategy.offers_candidates:
            draft = level.draft(state, (), limit)
            return (
                [Proposal((0, 0), draft.tokens, draft.confidence[0] if draft.confidence else 1.0)] if len(draft) else []
            )
        found = level.candidates(state, (), limit, self.options.candidates)
        return [
            Proposal(c.key, c.draft.tokens[:limit], c.draft.confidence[0] if c.draft.confidence else 1.0)
            for c in found
            if len(c.draft)
        ]

    def build_tree(self, state: DecodingState) -> TokenTree:
        options = self.options
        limit = min(options.k, state.max_depth)
        self.pending = self.propose(state, limit) if limit > 0 and options.max_nodes > 1 else []
        costs = state.costs if options.adaptive and state.costs.measured else None
        return merged_tree(
            state.root_token,
            self.pending,
            [self.alpha(p.key) for p in self.pending],
            self.level.name,
            options.max_nodes,
            None if costs is None else costs.verify,
            state.context_length,
        )

    def observe(self, tree: TokenTree, verdict: Verdict, timings: StepTimings) -> None:
        known = verdict.new_tokens
        for proposal in self.pending:
            horizon = min(len(proposal.tokens), len(known))
            matched = 0
            while matched < horizon and proposal.tokens[matched] == known[matched]:
                matched += 1
            self.estimates.setdefault(proposal.key, MatchEstimate()).update(
                matched, matched < horizon, self.options.ema_decay
            )
        self.pending = []


def merged_tree(
    root: int,
    proposals: list[Proposal],
    alphas: list[float],
    level: str | None,
    max_nodes: int,
    cost: Callable[[int, int], float] | None = None,
    context: int = 0,
) -> TokenTree:
    """The trie of `proposals` (in order), valued and trimmed as the module docstring states."""
    tokens, parents, raw, confidence = [root], [-1], [1.0], [1.0]
    children: list[dict[int, int]] = [{}]
    for proposal, alpha in zip(proposals, alphas):
        node, reach = 0, 1.0
        for token in proposal.tokens:
            reach *= alpha
            child = children[node].get(token)
            if child is None:
                child = len(tokens)
                tokens.append(token)
                parents.append(node)
                raw.append(reach)
                confidence.append(proposal.confidence)
                children.append({})
                children[node][token] = child
            else:
                raw[child] = max(raw[child], reach)
                confidence[child] = max(confidence[child], proposal.confidence)
            node = child
    value = list(raw)
    for node in range(len(tokens)):  # parents come before their children
        kids = children[node]
        if len(kids) == 1:
            (child,) = kids.values()
            value[child] = min(raw[child], value[node])
            continue
        left = value[node]
        for child in sorted(kids.values(), key=lambda c: (-raw[c], c)):
            value[child] = min(raw[child], max(left, 0.0))
            left -= value[child]
    order = sorted(range(1, len(tokens)), key=lambda v: (-value[v], v))[: max(max_nodes - 1, 0)]
    keep = len(order) if cost is None else best_tree_size([value[v] for v in order], cost, context)
    builder = TreeBuilder(root)
    index = {0: 0}
    for node in sorted(order[:keep]):
        index[node] = builder.add(index[parents[node]], tokens[node], level, confidence=confidence[node])
    return builder.build()
