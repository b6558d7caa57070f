"""`dytc`: CAS-Spec's Dynamic Tree Cascade (`notes/papers.md` §1.3), reconstructed.

Notation: target = p, drafts = q. Every step grows a token tree best-first and verifies it in one
target forward:

1. **Estimates.** Per level, α̂ is an EMA of its acceptance rate over a window of steps
   (`ema_decay` λ = 0.7, `window` H = 20, `warmup` steps); per drafted token, its acceptance
   probability comes from the drafter's own confidence (draft probability for model levels,
   n-gram match length for lookup levels), calibrated online per confidence bucket and level.
2. **Growth.** The leaf with the highest accumulated acceptance probability P_acc (the product of
   its path's token probabilities) is expanded next. At that leaf every level and draft length k
   is scored by the `objective`:
   - `step_value` (default): the expected tokens this step commits per unit of cost if the
     expansion is made, (1 + Σ P_acc) / (draft cost so far + c_S·k + verify(N + k)), with the
     verification cost from the calibrated cost table and c_S from the latency model;
   - `astar`: the paper's A*-inspired T_s(S, k) = [α̂(1 − α̂^k)/(1 − α̂) + α̂^k·α̂_bottom] / (c·k + c_bottom),
     with the cheapest level as the bottom heuristic.
3. **Siblings.** Where a model level drafts, its runners-up above `sibling_min_prob` (at most
   `siblings`) become sibling nodes at no draft cost (the CPU analogue of the paper's TOP-P
   tree-parallel drafting, which batches sibling drafts on a GPU; a batched multi-leaf draft
   pass is not built: on this CPU it would cost as much as separate passes).
4. **Stopping.** Growth stops when the best expansion would not raise the step value, at
   `max_nodes`, or at the step's depth limit; then leaves whose removal raises the value are
   pruned. A level whose measured value does not pay is thus not used, and a step where nothing
   pays is plain autoregressive decoding. A level unused for its probe interval drafts a probe
   of `probe_tokens` at the root, so that its estimate can recover; the interval starts at
   `probe_interval` and doubles after each probe that does not bring the level back into use
   (up to `max_probe_interval`), so a level that never pays costs ever less.
5. **Costs.** Verification from the calibrated cost table; drafts from the latency model,
   which starts from the calibrated draft costs (`cas-spec calibrate`) and learns online. A
   level whose full draft costs under `free_cost` (prompt lookup, max-gram) drafts at the root
   first, every step: deciding whether to ask for it would cost more than asking, and its
   proposal (with its confidence) is what the other levels are weighed against; pruning drops
   what of it does not pay.

Choices where the paper is silent (each an option where it matters): the window counts steps;
α̂ counts tokens whose parent was accepted; the stopping rule and the step-value objective; the
confidence calibration. Scheduling overhead (drafting time outside the levels' draft calls) is
reported for every scheduler in `GenerationStats.scheduling_seconds`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cas_spec.core.interfaces import Scheduler
from cas_spec.core.state import DecodingState
from cas_spec.core.tree import TreeBuilder
from cas_spec.core.types import DraftResult, StepTimings, TokenTree, Verdict
from cas_spec.schedulers.acceptance import ConfidenceCalibration, WindowedAcceptance
from cas_spec.schedulers.latency import LatencyModel


class DytcOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ema_decay: float = Field(0.7, ge=0.0, lt=1.0, description="λ of the per-level acceptance EMA.")
    window: int = Field(20, ge=1, description="Steps in the recent-acceptance window H.")
    warmup: int = Field(20, ge=0, description="Steps before the EMA takes over from the running rate.")
    prior_alpha: float = Field(0.6, gt=0.0, lt=1.0, description="Acceptance assumed for an unmeasured level.")
    objective: Literal["step_value", "astar"] = Field("step_value", description="Scoring of (level, k) at a leaf.")
    max_draft: int = Field(8, ge=1, le=64, description="Most tokens one draft call is asked for.")
    max_nodes: int = Field(24, ge=2, le=256, description="Most tree nodes, root included.")
    siblings: int = Field(2, ge=0, le=8, description="Runners-up of a model draft added as siblings.")
    sibling_min_prob: float = Field(0.1, ge=0.0, le=1.0, description="Least draft probability of a sibling.")
    probe_interval: int = Field(16, ge=1, description="Steps after which an unused level drafts a probe.")
    max_probe_interval: int = Field(256, ge=1, description="Longest probe interval after failed probes.")
    probe_tokens: int = Field(1, ge=1, le=64, description="Tokens a probe drafts.")
    carry_over: bool = Field(True, description="Keep what was learned (costs, acceptance, calibration, probe "
                             "intervals) from one generation of the pipeline to the next.")
    free_cost: float = Field(0.02, ge=0.0, description="A level whose full draft costs less than this (in "
                             "one-token target forwards) drafts at the root every step, before growth.")


Objective = Callable[..., float]


class DytcScheduler(Scheduler):
    name = "dytc"
    Options = DytcOptions

    @classmethod
    def check_levels(cls, options, level_names: list[str]) -> list[str]:
        return [] if level_names else ["levels: dytc needs at least one level to draft with"]

    def start(self, state: DecodingState) -> None:
        """Before a generation. What was learned in earlier generations of this pipeline (level
        costs, acceptance estimates, confidence calibration, probe intervals) carries over
        (`carry_over`, default on), so a level that does not pay is not tried afresh for every
        prompt; the EMAs adapt to the new text within a few steps."""
        o = self.options
        draft_costs = getattr(state.target, "draft_costs", None)
        fresh = not o.carry_over or getattr(self, "latency", None) is None
        if fresh or self.latency.costs is not state.target.costs:
            self.latency = LatencyModel(state.target.costs, self.levels, draft_costs=draft_costs)
            self.alpha = {lv.name: WindowedAcceptance(prior=o.prior_alpha, decay=o.ema_decay, window=o.window,
                                                      warmup=o.warmup) for lv in self.levels}
            self.calibration = {lv.name: ConfidenceCalibration() for lv in self.levels}
            self.probe_every = {lv.name: o.probe_interval for lv in self.levels}
        else:
            self.latency.restart()  # the engine reset the levels' counters
        self.last_used = {lv.name: 0 for lv in self.levels}
        self._nodes: list[tuple[str, int, bool] | None] = [None]  # per node: (level, bucket, alternative)
        self._context = state.target.length
        self.bottom = self._cheapest_level(self._context)

    # -- building ---------------------------------------------------------------------------
    def build_tree(self, state: DecodingState) -> TokenTree:
        context = self._context = state.target.length
        builder = TreeBuilder(state.root_token)
        nodes: list[tuple[str, int, bool] | None] = [None]
        p_acc = [1.0]
        expected, spent = 0.0, 0.0
        exhausted: set[tuple[int, str]] = set()
        probe = self._due_probe(state)
        for level in self._free_levels(context):  # costless drafts first: what they propose informs the rest
            limit = min(self.options.max_draft, state.max_depth, self.options.max_nodes - builder.size)
            if limit <= 0:
                break
            draft = level.draft(state, (), limit)
            self.last_used[level.name] = state.step
            exhausted.add((0, level.name))
            if len(draft):
                expected += self._add_draft(builder, nodes, p_acc, 0, level.name, draft)
        while builder.size < self.options.max_nodes:
            choice = self._best_expansion(builder, p_acc, expected, spent, context, exhausted, state, probe)
            if choice is None:
                break
            leaf, level, k = choice
            draft = level.draft(state, builder.path_tokens(leaf), k)
            spent += self.latency.draft(level.name, 1, len(draft), context)
            self.last_used[level.name] = state.step
            if level.name == probe:
                probe = None
                self.probe_every[level.name] = min(2 * self.probe_every[level.name],
                                                   self.options.max_probe_interval)
            else:  # chosen on its value: back to the shortest probe interval
                self.probe_every[level.name] = self.options.probe_interval
            if not len(draft):
                exhausted.add((leaf, level.name))
                continue
            expected += self._add_draft(builder, nodes, p_acc, leaf, level.name, draft)
            exhausted.add((leaf, level.name))
        return self._prune(builder, nodes, p_acc, spent, context)

    def _free_levels(self, context: int) -> list:
        """Levels whose full draft costs next to nothing (lookups), as calibrated or measured."""
        if not self.latency.draft_costs and not self.latency.forward_seconds:
            return []  # nothing known yet about any level's cost
        return [lv for lv in self.levels
                if (self.latency.measured(lv.name) or lv.name in self.latency.draft_costs)
                and self.latency.draft(lv.name, 1, self.options.max_draft, context) < self.options.free_cost]

    def _due_probe(self, state: DecodingState) -> str | None:
        due = [lv.name for lv in self.levels if state.step - self.last_used[lv.name] >= self.probe_every[lv.name]]
        return due[0] if due else None

    def _best_expansion(self, builder, p_acc, expected, spent, context, exhausted, state, probe):
        """(leaf, level, k) of the best expansion that raises the step value, or None."""
        size = builder.size
        current = (1.0 + expected) / (spent + self.latency.verify(size, context))
        room = self.options.max_nodes - size
        leaves = sorted((i for i in range(size) if not builder.children[i]), key=lambda i: -p_acc[i])
        for leaf in leaves:
            depth_left = state.max_depth - builder.depths[leaf]
            limit = min(self.options.max_draft, depth_left, room)
            if limit <= 0:
                continue
            best, best_score = None, float("-inf")
            for level in self.levels:
                if (leaf, level.name) in exhausted:
                    continue
                forced = level.name == probe and leaf == 0
                if forced:  # a due probe comes first, and is short
                    return leaf, level, min(limit, self.options.probe_tokens)
                alpha = self.alpha[level.name].alpha
                for k in range(1, limit + 1):
                    gain = p_acc[leaf] * sum(alpha ** i for i in range(1, k + 1))
                    cost = spent + self.latency.draft(level.name, 1, k, context) + self.latency.verify(size + k, context)
                    value = (1.0 + expected + gain) / cost
                    score = value if self.options.objective == "step_value" else self._astar(level.name, k, context)
                    if value > current * (1 + 1e-9) and score > best_score:
                        best, best_score = (leaf, level, k), score
            if best is not None:
                return best
            # Leaves are visited in decreasing P_acc: a lower one cannot gain more, unless other
            # levels remain untried at it.
            if not any((leaf, lv.name) not in exhausted for lv in self.levels):
                continue
            return None
        return None

    def _cheapest_level(self, context: int) -> str:
        """The bottom level of the A* heuristic: the cheapest per drafted token, as measured."""
        return min(self.levels, key=lambda lv: self.latency.draft(lv.name, 1, 1, context)).name

    def _astar(self, level: str, k: int, context: int) -> float:
        bottom = self.bottom
        alpha, alpha_bottom = self.alpha[level].alpha, self.alpha[bottom].alpha
        gain = sum(alpha ** i for i in range(1, k + 1)) + alpha ** k * alpha_bottom
        return gain / (self.latency.draft(level, 1, k, context) + self.latency.draft(bottom, 1, 1, context) + 1e-3)

    def _add_draft(self, builder, nodes, p_acc, leaf: int, level: str, draft: DraftResult) -> float:
        """Add `draft` (and its runners-up as siblings) below `leaf`; returns the added Σ P_acc."""
        alpha = self.alpha[level].alpha
        calibration = self.calibration[level]
        added, parent = 0.0, leaf
        for i, token in enumerate(draft.tokens):
            confidence = draft.confidence[i] if draft.confidence else 1.0
            key = calibration.bucket(confidence)
            node = builder.add(parent, token, level, confidence,
                               None if draft.draft_probs is None else draft.draft_probs[i])
            nodes.append((level, key, False))
            p_acc.append(p_acc[parent] * calibration.probability(key, alpha))
            added += p_acc[-1]
            alternatives = draft.alternatives[i] if draft.alternatives else ()
            for alt, prob in alternatives[: self.options.siblings]:
                if prob < self.options.sibling_min_prob or builder.size >= self.options.max_nodes:
                    break
                alt_key = calibration.bucket(prob, alternative=True)
                builder.add(parent, alt, level, prob)
                nodes.append((level, alt_key, True))
                p_acc.append(p_acc[parent] * calibration.probability(alt_key, alpha * prob))
                added += p_acc[-1]
            parent = node
        return added

    def _prune(self, builder, nodes, p_acc, spent, context) -> TokenTree:
        """Drop leaves whose removal raises (1 + Σ P_acc) / (draft cost + verify(N))."""
        keep = set(range(builder.size))
        children = {i: set(c) for i, c in enumerate(builder.children)}
        expected = sum(p_acc[1:])
        while len(keep) > 1:
            leaves = [i for i in keep if i and not (children[i] & keep)]
            worst = min(leaves, key=lambda i: p_acc[i])
            now = (1 + expected) / (spent + self.latency.verify(len(keep), context))
            after = (1 + expected - p_acc[worst]) / (spent + self.latency.verify(len(keep) - 1, context))
            if after <= now:
                break
            keep.discard(worst)
            expected -= p_acc[worst]
        kept = sorted(keep)
        index = {old: new for new, old in enumerate(kept)}
        pruned = TreeBuilder(builder.tokens[0])
        for old in kept[1:]:
            pruned.add(index[builder.parents[old]], builder.tokens[old], builder.levels[old],
                       builder.confidence[old], builder.draft_probs[old])
        self._nodes = [nodes[old] for old in kept]
        return pruned.build()

    # -- learning ---------------------------------------------------------------------------
    def observe(self, tree: TokenTree, verdict: Verdict, timings: StepTimings) -> None:
        self.latency.observe(tree.size, self._context, timings)
        self.bottom = self._cheapest_level(self._context)
        accepted = set(verdict.accepted_nodes)
        counts = {lv.name: [0, 0] for lv in self.levels}
        for i in range(1, tree.size):
            meta = self._nodes[i] if i < len(self._nodes) else None
            parent = tree.parents[i]
            if meta is None or (parent != 0 and parent not in accepted):
                continue  # its parent was rejected: the node was never tested
            level, key, alternative = meta
            self.calibration[level].update(key, i in accepted)
            if not alternative:
                counts[level][0] += 1
                counts[level][1] += i in accepted
        for name, (eligible, hits) in counts.items():
            self.alpha[name].update(eligible, hits)
