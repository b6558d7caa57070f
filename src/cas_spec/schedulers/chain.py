"""`chain`: one level drafts up to `k` tokens below the root, verified in one target forward.

With a measured cost table (the pipeline's calibration) and `adaptive: true`, the chain is
trimmed to the length m that maximises expected committed tokens per unit of cost,
E(m) / (cost(m + 1) + c_call + m · c), with the level's acceptance α estimated online (see
`acceptance.py`) and c_call, c the costs of a draft call and of a drafted token relative to a
one-token target forward, from the shared `LatencyModel` (calibrated ahead, refined online from
the step timings): a level whose drafting costs (a self-speculative one) is
asked for only as many tokens as pay, before it drafts; a free one (lookup) drafts up to `k` and
the draft is trimmed afterwards. On a
CPU where a forward over 2–3 tokens costs far more than one, this turns a poor draft into a plain
single-token step. A level that proposes nothing also makes the step a plain step. When the
estimate has switched drafting off, the full draft is still verified every `probe_interval`
steps so that the estimate can recover; a level whose cost is neither calibrated nor measured
yet drafts in full until it is (it is never taken for free).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cas_spec.core.state import DecodingState
from cas_spec.core.tree import chain_tree
from cas_spec.core.types import EMPTY_DRAFT, DraftResult, StepTimings, TokenTree, Verdict
from cas_spec.schedulers.estimators.acceptance import AcceptanceEstimate, best_draft_length
from cas_spec.schedulers.estimators.latency import LatencyModel
from cas_spec.schedulers.single_level import SingleLevelScheduler


class ChainOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    level: str | None = Field(None, description="Name of the level that drafts; default: the first level.")
    k: int = Field(8, ge=1, le=256, description="Most tokens drafted per step.")
    adaptive: bool = Field(True, description="Trim drafts by measured cost and online acceptance.")
    ema_decay: float = Field(0.7, ge=0.0, lt=1.0, description="λ of the acceptance EMA.")
    probe_interval: int = Field(8, ge=1, description="Verify a full draft at least this often.")


class ChainScheduler(SingleLevelScheduler):
    name = "chain"
    Options = ChainOptions
    options: ChainOptions

    def start(self, state: DecodingState) -> None:
        self.estimate = AcceptanceEstimate(decay=self.options.ema_decay)
        self.skipped = 0
        self.context = state.context_length
        self.latency = LatencyModel(state.costs, [self.level])

    def build_tree(self, state: DecodingState) -> TokenTree:
        limit = min(self.options.k, state.max_depth)
        costs = state.costs
        self.context = state.context_length
        if not self.options.adaptive or not costs.measured:
            return chain_tree(state.root_token, self.level.draft(state, (), limit), self.level.name)
        context, alpha = state.context_length, self.estimate.alpha
        # a level never measured drafts in full to be priced; later, whenever drafting was off for
        # `probe_interval` steps
        probing = self.skipped + 1 >= self.options.probe_interval or not self.latency.known(self.level.name)
        if not probing:  # a level whose drafting costs: decide how much to draft before paying for it
            name = self.level.name
            limit = best_draft_length(
                alpha,
                limit,
                costs.verify,
                context,
                self.latency.draft(name, 0, 1, context),
                self.latency.draft(name, 1, 0, context),
            )
        draft = self.level.draft(state, (), limit) if limit else EMPTY_DRAFT
        keep = len(draft) if probing else best_draft_length(alpha, len(draft), costs.verify, context)
        self.skipped = 0 if keep else self.skipped + 1
        return chain_tree(state.root_token, _trim(draft, keep), self.level.name)

    def observe(self, tree: TokenTree, verdict: Verdict, timings: StepTimings) -> None:
        self.estimate.update(tree.size - 1, len(verdict.accepted_nodes))
        self.latency.observe(tree.size, self.context, timings)


def _trim(draft: DraftResult, keep: int) -> DraftResult:
    if keep >= len(draft):
        return draft
    return DraftResult(
        tokens=draft.tokens[:keep],
        confidence=draft.confidence[:keep],
        draft_probs=None if draft.draft_probs is None else draft.draft_probs[:keep],
    )
