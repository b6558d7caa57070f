"""`dytc`: CAS-Spec's Dynamic Tree Cascade (`notes/papers.md` §1.3), reconstructed.

Notation: target = p, drafts = q. Every step grows a token tree and verifies it in one target
forward. Each node carries its value, the probability that the target's committed path passes
through it (`valued_tree.py`), so a step commits 1 + Σ values tokens on average. Costs are in
one-token target forwards: the drafts spent, plus verify(N), the calibrated cost of a forward over
the N tree nodes. An expansion pays when the value it adds exceeds B times what it adds to the
cost, B being the step's *bar*: the larger of the best rate a single option gives this step
(plain decoding; a free level's proposal, known; a model level's chain, expected from α̂; each
at its best length) and R, the recent rate (tokens per unit of cost, an EMA over steps in which a
copied burst counts at most `BURST_CLIP` · R). So a tree beats the best single option, a costly
level drafts only where nothing cheaper does as well this step (not where the lookup has a long
match), and a run of copied text does not keep the model levels out of the text that follows.
(Maximising each step's own ratio instead lets cheap low-value nodes added first raise the bar
for the valuable ones; one global average rate instead lets copied bursts price the model levels
out of ordinary text. Both lost in simulation or on Spec-Bench.)

1. **Estimates.** Per level, α̂ is an EMA of its acceptance rate over a window of steps (`ema_decay`
   λ = 0.7, `window` H = 20, `warmup` steps; a prompt's own window), starting from the agreement with
   the target measured when its draft cost was calibrated; per drafted token, the probability that
   the target takes it comes from the drafter's own confidence (draft probability for model
   levels, n-gram match length for lookup levels), calibrated online per confidence bucket.
   Both learn from *every* drafted token, those pruned or trimmed away included, scored against
   the committed text (`proposals.py`), so what is left out of trees does not bias them toward
   optimism, and α̂ is what asking a level for a token yields.
2. **Routing.** A branch may open at any node, the root included, next to existing children,
   valued by what it adds given its siblings. Every growth step weighs, at the nodes with the
   most uncovered value (`expand_nodes` of them), each level that has not drafted there yet:
   a free level (lookups: its full draft costs under `free_cost`) is asked for its proposal
   (the proposal is then known exactly, with its confidences) and valued for each prefix
   length; a model level is valued before drafting from α̂ for each draft length k (its i-th
   token adds value where the tree does not already hold the target's path), with its cost from
   the latency model. The expansion with the largest net gain (value − B · cost) is made, so a
   level with more value per cost drafts first, and a cheap level may extend a model's draft as
   well as precede it. Growth stops when no expansion pays, at `max_nodes` (a hard bound) or at
   the step's depth limit. `objective: astar` ranks the expansions that pay by the paper's
   A*-inspired score instead (below).
3. **Siblings.** Where a model level drafts, its runners-up (at most `siblings`, draft
   probability ≥ `sibling_min_prob`) join as point-mass siblings where they pay.
4. **Exact sampling under every option.** A node's presence never depends on the token it drew:
   nodes are only added, each after everything it is verified after (later siblings, and the
   subtree of the token drawn); a drawn model chain is trimmed token by token, keeping token i only
   if its *expected* value (before its draw: its parent's value times α̂) pays for its place,
   and deterministic drafts (lookups, greedy drafts) by their own values. The final pruning of
   leaves whose value does not pay for their verification runs only on trees with no sampled
   node. With these
   rules the sampling verifier's law is the target's for every tree this scheduler builds
   (`tests/schedulers/test_dytc_sampling.py` enumerates it exactly).
5. **Probes.** A level unused for its probe interval, or never measured, drafts `probe_tokens`
   at the root, beside whatever else is there, and a probe is never pruned, so its estimate can
   recover even when a free level always matches; what it drafts is scored like every draft. The
   interval starts at `probe_interval` and doubles after each probe (up to `max_probe_interval`),
   so a level that stays out of use, dead or merely beaten by a cheaper one, costs ever less;
   it returns to the start when the level is chosen on its value, or when a probe moved α̂ by
   more than `PROBE_SURPRISE` (a dead level coming back: follow it up).
6. **Costs.** Verification from the calibrated cost table; drafts from the latency model
   (`latency.py`): calibrated ahead per level and refined online; a level never measured is
   priced conservatively, never at 0.

`objective: astar` (our reading of the paper's T_s(S, k), whose typography is not known): the
paper scores a level S drafting k tokens by [α̂(1 − α̂^k)/(1 − α̂) + α̂^k·α̂_dn] / (ĉ·k + ĉ_dn), α̂_dn
and ĉ_dn those of the cheapest (bottom) level. As written, with a nearly free bottom level it
always picks k = 1 (the numerator grows slower than ĉ·k). Here the expected tokens are weighted
by the node's value and counted with the tree's, and the denominator holds the whole step's cost
(drafts spent and verification), so k > 1 wins where its tokens pay for their verification: score =
(1 + Σ values + gain(S, k) + v_k·α̂_dn) / (spent + c_S(k) + ĉ_dn + verify(N + k + 1)), v_k the value
of the k-th drafted token; the bottom level is the cheapest known one per token.

Choices where the paper is silent (each an option where it matters): the window counts steps;
α̂ counts tokens whose parent was on the committed path; the bar and the net-gain stopping rule;
the valuation of siblings; the confidence calibration; probes. Scheduling overhead (drafting time
outside the levels' draft calls) is reported in `GenerationStats.scheduling_seconds`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from cas_spec.core.interfaces import Scheduler
from cas_spec.core.levels import Level
from cas_spec.core.state import DecodingState
from cas_spec.core.types import DraftResult, StepTimings, TokenTree, Verdict
from cas_spec.schedulers.dytc.estimates import DytcEstimates
from cas_spec.schedulers.dytc.options import DytcOptions
from cas_spec.schedulers.dytc.proposals import Proposal
from cas_spec.schedulers.dytc.valued_tree import NodeInfo, ValuedTree, expected_gains


@dataclass
class _Step:
    """One step's tree under construction, and what its free levels proposed at which nodes."""

    state: DecodingState
    tree: ValuedTree
    free: set[str]  # levels asked for their proposal before they are weighed
    done: set[tuple[int, str]] = field(default_factory=set)  # (node, level) pairs already used
    known: dict[tuple[int, str], DraftResult] = field(default_factory=dict)  # free levels' proposals


@dataclass(frozen=True)
class Expansion:
    """A candidate growth step: `level` drafts (or inserts its known proposal) below `node`."""

    node: int
    level: Level
    tokens: int  # k to draft, or the prefix length of a known proposal to insert
    proposal: DraftResult | None  # a free level's known proposal; None: draft k tokens
    value: float  # the step's worth after it (`_worth`)
    score: float  # what ranks it (the worth, or the A* score)


class DytcScheduler(Scheduler):
    name = "dytc"
    Options = DytcOptions
    options: DytcOptions

    @classmethod
    def check_levels(cls, options: BaseModel, level_names: list[str]) -> list[str]:
        return [] if level_names else ["levels: dytc needs at least one level to draft with"]

    def start(self, state: DecodingState) -> None:
        """Before a generation. What was learned in earlier generations of this pipeline
        (`DytcEstimates`: costs, acceptance, calibration, probe intervals, the recent rate) carries
        over (`carry_over`, default on), so a level that does not pay is not tried afresh for every
        prompt; the EMAs adapt to the new text within a few steps."""
        known = getattr(self, "estimates", None)
        if not self.options.carry_over or known is None or known.latency.costs is not state.costs:
            self.estimates = DytcEstimates(self.options, self.levels, state.costs)
        self.estimates.restart()
        self.proposals: list[Proposal] = []
        self.pruned_tokens = getattr(self, "pruned_tokens", 0)  # drafted tokens left out of trees, ever (tests)
        self._context = state.context_length
        self._spent = 0.0
        self._bar = 1.0

    # -- building ---------------------------------------------------------------------------
    def build_tree(self, state: DecodingState) -> TokenTree:
        o = self.options
        context = self._context = state.context_length
        self.proposals = []
        self._spent = 0.0
        step = _Step(
            state,
            ValuedTree(state.root_token),
            {lv.name for lv in self.levels if self.estimates.is_free(lv.name, context)},
        )
        tree = step.tree
        self._bottom = self.estimates.bottom_level(context)
        self._bar = max(self._best_single_option(step), self.estimates.rate)
        probe = self.estimates.due_probe(state.step)
        if probe is not None and state.max_depth > 0:
            level = next(lv for lv in self.levels if lv.name == probe)
            self._draft(step, 0, level, min(o.probe_tokens, state.max_depth, o.max_nodes - 1), probe=True)
            step.done.add((0, probe))
        while tree.size < o.max_nodes:
            best = self._best_expansion(step)
            if best is None:
                break
            step.done.add((best.node, best.level.name))
            if best.proposal is not None:
                self._insert_known(tree, best.node, best.level.name, best.proposal, best.tokens)
            else:
                self._draft(step, best.node, best.level, best.tokens)
            self.estimates.chosen(best.level.name)
        if tree.any_sampled:  # a drawn node stays whatever it drew (see the module docstring)
            return tree.build()
        result = tree.pruned(
            lambda value, expected, size: self._worth(expected - value, size - 1) > self._worth(expected, size) + 1e-12
        )
        self.pruned_tokens += tree.size - result.size
        return result

    def _worth(self, expected: float, size: int, extra_cost: float = 0.0) -> float:
        """What a step verifying `size` nodes holding `expected` value is worth: the tokens it
        commits on average less their cost (drafts spent, `extra_cost`, verification) at the
        step's bar B. Adding a node pays when its value exceeds B times what it costs."""
        cost = self._spent + extra_cost + self.estimates.latency.verify(size, self._context)
        return 1.0 + expected - self._bar * cost

    def _best_single_option(self, step: _Step) -> float:
        """The step's bar B: the best rate (tokens per one-token forward of cost) any single option
        gives at the root this step: plain decoding (1 token for one forward), a free level's
        proposal (known) or a model level's chain (expected from α̂), each at its best length.
        Every expansion of the tree must then bring more than B tokens per unit of its cost, so
        the tree beats the best single option, and a costly level drafts only where nothing
        cheaper does as well (where the lookup has a long match this step, it does not)."""
        limit = min(self.options.max_draft, step.state.max_depth, self.options.max_nodes - 1)
        scratch = ValuedTree(step.state.root_token)
        best = 1.0 / self.estimates.latency.verify(1, self._context)
        for level in self.levels if limit > 0 else ():
            name = level.name
            if name in step.free:
                draft = self._ask(step, 0, level)
                confidence = (draft.confidence or (1.0,) * len(draft))[:limit]
                gains = scratch.chain_gains(
                    0, draft.tokens[:limit], [self.estimates.probability(name, c) for c in confidence]
                )
                options = [(added, new, 0.0) for new, added in gains]
            else:
                options = [
                    (added, k, self.estimates.latency.draft(name, 1, k, self._context))
                    for k, added in expected_gains(scratch, 0, self.estimates.alpha[name].alpha, limit)
                ]
            for added, new, cost in options:
                best = max(best, (1.0 + added) / (cost + self.estimates.latency.verify(1 + new, self._context)))
        return best

    def _ask(self, step: _Step, node: int, level: Level) -> DraftResult:
        """A free level's proposal below `node`, asked for once per node and step."""
        key = (node, level.name)
        if key not in step.known:
            path = step.tree.path(node)
            draft = step.known[key] = level.draft(step.state, path, self.options.max_draft)
            self._spent += self.estimates.latency.draft(level.name, 1, len(draft), self._context)
            self._record(level.name, path, draft, probe=False)
            self.estimates.last_used[level.name] = step.state.step
        return step.known[key]

    def _best_expansion(self, step: _Step) -> Expansion | None:
        o, tree, state = self.options, step.tree, step.state
        current = self._worth(tree.expected, tree.size)
        room = o.max_nodes - tree.size
        nodes = sorted(
            (n for n in range(tree.size) if tree.depth(n) < state.max_depth and tree.open_mass(n) > 0),
            key=lambda n: -tree.open_mass(n),
        )[: o.expand_nodes]
        best: Expansion | None = None
        for node in nodes:
            limit = min(room, state.max_depth - tree.depth(node), o.max_draft)
            for level in self.levels:
                if (node, level.name) in step.done:
                    continue
                if level.name in step.free:
                    candidate = self._weigh_known(step, node, level, limit)
                else:
                    candidate = self._weigh_draft(tree, node, level, limit)
                if (
                    candidate is not None
                    and candidate.value > current + 1e-12
                    and (best is None or candidate.score > best.score)
                ):
                    best = candidate
        return best

    def _weigh_draft(self, tree: ValuedTree, node: int, level: Level, limit: int) -> Expansion | None:
        """The best k for `level` drafting below `node`, valued before drafting (`expected_gains`)."""
        best, before = None, 0.0
        for k, added in expected_gains(tree, node, self.estimates.alpha[level.name].alpha, limit):
            cost = self.estimates.latency.draft(level.name, 1, k, self._context)
            expansion = self._expansion(tree, node, level, k, None, added, added - before, k, cost)
            before = added
            if best is None or expansion.score > best.score:
                best = expansion
        return best

    def _weigh_known(self, step: _Step, node: int, level: Level, limit: int) -> Expansion | None:
        """The best prefix of a free level's proposal below `node`."""
        draft = self._ask(step, node, level)
        tokens = draft.tokens[:limit]
        if not tokens:
            return None
        probabilities = [
            self.estimates.probability(level.name, c) for c in (draft.confidence or (1.0,) * len(draft))[:limit]
        ]
        best, before = None, 0.0
        for m, (new, added) in enumerate(step.tree.chain_gains(node, tokens, probabilities), start=1):
            last, before = added - before, added
            if new == 0:
                continue
            expansion = self._expansion(step.tree, node, level, m, draft, added, last, new, 0.0)
            if best is None or expansion.score > best.score:
                best = expansion
        return best

    def _expansion(
        self,
        tree: ValuedTree,
        node: int,
        level: Level,
        tokens: int,
        proposal: DraftResult | None,
        gain: float,
        last: float,
        new_nodes: int,
        cost: float,
    ) -> Expansion:
        value = self._worth(tree.expected + gain, tree.size + new_nodes, cost)
        score = value
        if self.options.objective == "astar" and self._bottom is not None:
            bottom = self._bottom
            heuristic = last * self.estimates.alpha[bottom].alpha
            bottom_cost = self.estimates.latency.draft(bottom, 1, 1, self._context)
            score = (1.0 + tree.expected + gain + heuristic) / (
                self._spent
                + cost
                + bottom_cost
                + self.estimates.latency.verify(tree.size + new_nodes + 1, self._context)
            )
        return Expansion(node, level, tokens, proposal, value, score)

    # -- adding nodes ---------------------------------------------------------------------------
    def _record(
        self, level: str, parent_path: tuple[int, ...], draft: DraftResult, probe: bool, asked: int | None = None
    ) -> None:
        calibration = self.estimates.calibration[level]
        confidence = draft.confidence or (1.0,) * len(draft)
        alternatives = (
            tuple(
                tuple((t, calibration.bucket(p, alternative=True)) for t, p in alts[: self.options.siblings])
                for alts in draft.alternatives
            )
            if draft.alternatives
            else ()
        )
        self.proposals.append(
            Proposal(
                level,
                parent_path,
                draft.tokens,
                tuple(calibration.bucket(c) for c in confidence),
                alternatives,
                probe,
                asked,
            )
        )

    def _insert_known(self, tree: ValuedTree, node: int, level: str, draft: DraftResult, count: int) -> None:
        """Insert the first `count` tokens of a free level's (deterministic) proposal below `node`."""
        confidence = draft.confidence or (1.0,) * len(draft)
        parent = node
        for token, c in zip(draft.tokens[:count], confidence[:count], strict=True):
            parent, _ = tree.add(parent, token, self.estimates.probability(level, c), NodeInfo(level, sampled=False), c)
        self.pruned_tokens += len(draft) - count

    def _draft(self, step: _Step, node: int, level: Level, k: int, probe: bool = False) -> None:
        """`level` drafts k tokens below `node`; its tokens join the tree while they pay (a probe's
        always), each kept or dropped before its own value is looked at when it was sampled."""
        state, tree = step.state, step.tree
        name = level.name
        path = tree.path(node)
        draft = level.draft(state, path, k)
        self._spent += self.estimates.latency.draft(name, 1, len(draft), self._context)
        self._record(name, path, draft, probe, asked=k)
        sampled = draft.draft_probs is not None
        confidence = draft.confidence or (1.0,) * len(draft)
        alpha = self.estimates.alpha[name].alpha
        probabilities = [self.estimates.probability(name, c) for c in confidence]
        parent, kept = node, 0
        for i, token in enumerate(draft.tokens):
            if tree.size >= self.options.max_nodes:
                break
            # Whether token i may join is decided before looking at it when it was sampled: on its
            # parent and α̂; a deterministic draft is judged on its own tokens.
            gains = (
                expected_gains(tree, parent, alpha, len(draft) - i)
                if sampled
                else tree.chain_gains(parent, draft.tokens[i:], probabilities[i:])
            )
            pays = self._extension_pays(tree, parent, gains)
            if not probe and not pays:
                break
            child, _ = tree.add(
                parent,
                token,
                probabilities[i],
                NodeInfo(name, sampled, probe),
                confidence[i],
                None if draft.draft_probs is None else draft.draft_probs[i],
            )
            kept += 1
            if draft.alternatives and not probe:
                self._add_siblings(tree, parent, name, draft.alternatives[i])
            parent = child
        self.pruned_tokens += len(draft) - kept
        self.estimates.last_used[name] = state.step

    def _extension_pays(self, tree: ValuedTree, parent: int, gains: list[tuple[int, float]]) -> bool:
        """Whether adding some prefix of a chain below `parent`, with (new nodes, added value) per
        prefix length as given, raises the step's worth."""
        current = self._worth(tree.expected, tree.size)
        return any(
            new and self._worth(tree.expected + added, tree.size + new) > current + 1e-12 for new, added in gains
        )

    def _add_siblings(
        self, tree: ValuedTree, parent: int, level: str, alternatives: tuple[tuple[int, float], ...]
    ) -> None:
        """Runners-up of a drafted position as point-mass siblings, while each raises the step's worth."""
        o = self.options
        for token, prob in alternatives[: o.siblings]:
            if prob < o.sibling_min_prob or tree.size >= o.max_nodes:
                break
            probability = self.estimates.probability(level, prob, alternative=True)
            gain = tree.child_value(parent, probability)
            if tree.existing_child(parent, token) is not None or not (
                self._worth(tree.expected + gain, tree.size + 1) > self._worth(tree.expected, tree.size)
            ):
                continue
            tree.add(parent, token, probability, NodeInfo(level, sampled=False), prob)

    # -- learning ---------------------------------------------------------------------------
    def observe(self, tree: TokenTree, verdict: Verdict, timings: StepTimings) -> None:
        self.estimates.learn(self.proposals, verdict.new_tokens, tree.size, self._context, self._spent, timings)


__all__ = ["DytcScheduler"]
