"""`static_tree`: SWIFT's confidence-based token tree ("Tr", the tree baseline of CAS-Spec).

One level drafts a chain of up to `k` tokens (its top-1 chain: the argmax when greedy, a draw
from q when sampling). At each chain position the drafter's runners-up (`DraftResult.alternatives`)
are added as siblings of the chain token, so that position holds `width` candidates in all, the
chain token included. The width is set by the drafter's top-1 probability t at that position:
with ascending `thresholds` t_1 < … < t_m, the width is `widths[0]` for t ≤ t_1, `widths[i]` for
t_i < t ≤ t_(i+1), and `widths[m]` for t > t_m. SWIFT's values are the defaults: greedy
t > 0.95 → 3, > 0.8 → 5, > 0.5 → 8, else 10; sampling 1 / 3 / 5 / 10 (`sampling_widths`). A
strategy reports at most 8 runners-up, so a width of 10 gives at most 9 candidates.

Branches grow only along the top-1 chain: a sibling is a leaf. The tree is static: no cost model
and no acceptance estimate, only the widths and the caps. `max_nodes` caps the tree, root
included: the chain is kept first (it is drafted only as long as the cap and `state.max_depth`
allow); then the siblings with the highest estimated reach, q(chain tokens before it) · q(sibling),
fill what is left. A level without alternatives (prompt lookup) gives a plain chain.

Exactness. Siblings are deterministic proposals (point masses: `draft_probs` None). The chain
token is inserted first under each node, so the sampling verifier tries it first, with the q it
was sampled from; the runners-up, which depend on the sampled token, are tried only after it was
rejected, against the residual norm(max(p − q, 0)), which does not depend on the sampled token.
The point-mass rule emits any residual exactly for any candidate set fixed before it runs, so the
emitted token is distributed as p (see `tests/schedulers/test_static_tree.py`). The reverse order
(point masses before the sampled token) would not be exact.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cas_spec.core.state import DecodingState
from cas_spec.core.tree import TreeBuilder
from cas_spec.core.types import DraftResult, TokenTree
from cas_spec.schedulers.single_level import SingleLevelScheduler


class StaticTreeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    level: str | None = Field(default=None, description="Name of the level that drafts; default: the first level.")
    k: int = Field(default=5, ge=1, le=64, description="Length of the drafted top-1 chain.")
    thresholds: tuple[float, ...] = Field(
        default=(0.5, 0.8, 0.95), description="Ascending top-1 probabilities at which the width changes."
    )
    widths: tuple[int, ...] = Field(
        default=(10, 8, 5, 3), description="Candidates per position when greedy, one more entry than thresholds."
    )
    sampling_widths: tuple[int, ...] = Field(
        default=(10, 5, 3, 1), description="Candidates per position when sampling, one more entry than thresholds."
    )
    max_nodes: int = Field(default=32, ge=1, le=1024, description="Most tree nodes, root included.")

    @model_validator(mode="after")
    def _consistent(self):
        t = self.thresholds
        if any(not 0.0 <= x <= 1.0 for x in t):
            raise ValueError(f"thresholds must lie in [0, 1], got {list(t)}")
        if any(b <= a for a, b in itertools.pairwise(t)):
            raise ValueError(f"thresholds must be strictly ascending, got {list(t)}")
        for name in ("widths", "sampling_widths"):
            widths = getattr(self, name)
            if len(widths) != len(t) + 1:
                raise ValueError(
                    f"{name} needs one entry more than thresholds ({len(t) + 1}: the width "
                    f"up to the first threshold, then above each), got {len(widths)}"
                )
            if any(w < 1 for w in widths):
                raise ValueError(f"{name} must be at least 1 (the chain token itself), got {list(widths)}")
        return self


def width_for(top: float, thresholds: tuple[float, ...], widths: tuple[int, ...]) -> int:
    """Candidates at a position whose top-1 draft probability is `top`."""
    index = 0
    while index < len(thresholds) and top > thresholds[index]:
        index += 1
    return widths[index]


class StaticTreeScheduler(SingleLevelScheduler):
    name = "static_tree"
    Options = StaticTreeOptions
    options: StaticTreeOptions

    def build_tree(self, state: DecodingState) -> TokenTree:
        options = self.options
        limit = min(options.k, state.max_depth, options.max_nodes - 1)
        draft = self.level.draft(state, (), limit) if limit > 0 else DraftResult(tokens=())
        widths = options.widths if state.sampling.greedy else options.sampling_widths
        return static_tree(state.root_token, draft, self.level.name, options.thresholds, widths, options.max_nodes)


def static_tree(
    root: int,
    draft: DraftResult,
    level: str | None,
    thresholds: tuple[float, ...],
    widths: tuple[int, ...],
    max_nodes: int,
    levels: Sequence[str] | None = None,
    laws: Sequence[torch.Tensor | None] | None = None,
) -> TokenTree:
    """The tree of `draft`'s chain plus its runners-up as siblings (see the module docstring).
    `levels` and `laws` give each chain token its own level and the law it was drawn with, when
    not all of it comes from `level` with `draft.draft_probs` (a cascade's chain)."""
    builder = TreeBuilder(root)
    draft = trim_draft(draft, max(max_nodes - 1, 0))
    if levels is None and laws is None:
        chain = builder.add_chain(0, draft, level)
    else:
        chain, parent = [], 0
        for i, token in enumerate(draft.tokens):
            parent = builder.add(
                parent,
                token,
                levels[i] if levels is not None else level,
                draft.confidence[i] if draft.confidence else 1.0,
                laws[i] if laws is not None else None,
            )
            chain.append(parent)
    if not draft.alternatives:
        return builder.build()
    # (estimated reach, position, rank, token, q) of every sibling the widths allow
    options = []
    reach = 1.0
    for position, runners_up in enumerate(draft.alternatives):
        chosen = draft.confidence[position] if draft.confidence else 1.0
        top = max(chosen, runners_up[0][1]) if runners_up else chosen
        for rank, (token, prob) in enumerate(runners_up[: width_for(top, thresholds, widths) - 1]):
            options.append((reach * prob, position, rank, token, prob))
        reach *= chosen
    room = max_nodes - builder.size
    kept = sorted(options, key=lambda o: (-o[0], o[1], o[2]))[: max(room, 0)]
    for _, position, _, token, prob in sorted(kept, key=lambda o: (o[1], o[2])):
        parent = chain[position - 1] if position else 0
        builder.add(parent, token, levels[position] if levels is not None else level, confidence=prob)
    return builder.build()


def trim_draft(draft: DraftResult, keep: int) -> DraftResult:
    """The first `keep` tokens of a draft, with their confidences, q rows and alternatives."""
    if keep >= len(draft):
        return draft
    return DraftResult(
        tokens=draft.tokens[:keep],
        confidence=draft.confidence[:keep],
        draft_probs=None if draft.draft_probs is None else draft.draft_probs[:keep],
        alternatives=draft.alternatives[:keep],
    )
