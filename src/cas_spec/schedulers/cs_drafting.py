"""`cs_drafting`: CS-Drafting's vertical and horizontal cascades (Chen et al., NeurIPS 2024).

Levels are ordered strongest first (`order`, default the YAML order of `levels`) with the cheapest
statistical level (`max_gram`, `prompt_lookup`) at the bottom. Notation: the target's
distribution is p, a level's own distribution p_R, a token's drafter-side distribution q.

Recursion (the official code's `_csd_iteration`, `notes/papers.md` §2.3). A call belongs to a
reviewer, level s − 1 (the target for s = 0), and uses row s of the k-matrix K (n × n for n
levels). For i = s … n − 1 in turn, while the call's new tokens number fewer than
K[s][s] + … + K[s][i] (the code's K holds increments; `k_form: cumulative` takes the paper's
cumulative form), the call appends the output of level i: if level i can review (a model level)
and is not the last, a sub-call of reviewer i (row i + 1) whose result level i then reviews;
otherwise level i drafts directly. A direct draft by a level that cannot review asks for
`lookup_tokens` (the code's MaG always proposes `_MAG_GENERATION` = 10), one by a model level for
what the threshold still needs. The top call's tokens go to the engine's verifier, which is exact.
`cascade: vertical` keeps only each call's first entry (threshold K[s][s]); `horizontal` keeps
only the top row and every level drafts its segment directly (model levels autoregressively).

Intermediate review by level R of tokens x_1 … x_m, left to right, with leniency l ≥ 1 (the top
review by the target never uses it):
- greedy, exactly the code's rule: accept x_j if x_j = argmax p_R or (l > 1 and p_R(x_j) > q(x_j)/l),
  where p_R is R's plain softmax and q(x_j) the probability the level that last vouched for x_j
  gave it (1 for lookup tokens; the code's one-hot MaG rows). An accepted token takes q = p_R.
  At the first rejection R's argmax replaces x_j and the rest is dropped; if all pass, R's argmax
  after x_m is appended (the code's bonus token).
- sampling (the public code is greedy only; our choice): lenient speculative sampling. Accept x_j
  with probability min(1, l·p_R(x_j)/q(x_j)), q the law x_j was drawn with (a point mass for
  lookup tokens); on rejection draw the replacement from r = norm(max(p_R − q, 0)); if all pass,
  draw the bonus from p_R. Where the code's rule accepts for sure, so does this one; at l = 1 it is
  plain speculative sampling and each reviewer emits exactly its own p_R.

Why sampling stays exact at any leniency. The output token at position j has law
d = min(q, l·p_R) + (1 − Σ min(q, l·p_R))·r given everything drafted before position j (at l = 1,
d = p_R); it is recorded as the token's law, whether x_j was kept or replaced, and becomes the q
of the next review up. Every decision at position j uses only position j's token, rows that
depend on earlier positions, and fresh random numbers; whether position j exists depends only on
earlier positions. So each token handed to the target is distributed as its recorded law given
the accepted prefix, which is what the sampling verifier's min(1, p/q) rule needs; lookup tokens
that no model reviewed are deterministic (point masses), and model drafts carry the q they were
sampled from. `pass_laws: false` hands every token as a point mass instead, which is exact for any
proposal (accept x with p(x), else sample p with x removed) but accepts less. Greedy: the target
keeps its argmax, so the output is plain decoding's whatever the cascade proposes.

Choices where the paper is silent. A level that cannot review (lookup) drafts directly wherever it
stands; its own sub-matrix is unused. A sub-call that adds nothing (a lookup with no match) ends
its entry early, so the next, cheaper entry of the same call takes over (a fallback: in vertical
mode with the same threshold). A reviewer whose `review` returns None abstains (the draft passes
unchanged). A node's level is the level that produced its token (a reviewer for its replacements
and bonus tokens); its confidence is the last model probability of the token (a lookup's match
length if no model saw it). A review counts as a call of the reviewing level, with its time.
Default K: the code's configurations, [[10]], [[5, 10], [0, 10]] (`example.py`), [[5, 14, 10],
[0, 1, 10], [0, 0, 10]] (FLAN-T5), extended for more levels with 14 (top row) and 10 (other rows)
off the diagonal and 1 on the diagonal below the top row. Nothing is learned online.

`tree: true` is CAS-Spec's "Tr+VC" ablation baseline, our reading of it: the cascade's chain, with
the runners-up of the strongest level's reviews at each position it reviewed added as siblings,
as many as SWIFT's confidence widths give (`static_tree`'s defaults), up to `max_nodes`. The
siblings are point masses tried after the chain token, exact as in `static_tree`.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import accumulate
from typing import TYPE_CHECKING, Literal, cast

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cas_spec.core.interfaces import Scheduler
from cas_spec.core.state import DecodingState
from cas_spec.core.tree import TreeBuilder
from cas_spec.core.types import DraftResult, SamplingParams, TokenTree
from cas_spec.schedulers.static_tree import StaticTreeScheduler, static_tree

if TYPE_CHECKING:
    from cas_spec.core.levels import Level


class CSDraftingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    order: list[str] | None = Field(
        None, description="Level names, strongest first, cheapest lookup last; default: the YAML order."
    )
    k_matrix: list[list[int]] | None = Field(
        None,
        description="n × n (n levels in order); row s is the call reviewed by level s − 1 (row 0: "
        "the target), entry j the tokens level j's output adds there. Default: the paper code's configs.",
    )
    k_form: Literal["increments", "cumulative"] = Field(
        "increments", description="increments as in the official code; cumulative as in the paper."
    )
    leniency: float = Field(3.0, ge=1.0, description="l of intermediate reviews (paper: 2, 5 FLAN-T5; 3 LLaMA).")
    cascade: Literal["both", "vertical", "horizontal"] = Field(
        "both",
        description="both cascades, vertical only (first entry of each row) or horizontal only (row 0, direct drafts).",
    )
    lookup_tokens: int | None = Field(
        10,
        ge=1,
        description="Tokens asked of a level that cannot review per direct draft (code: 10); null = "
        "what the k-matrix entry still needs.",
    )
    pass_laws: bool = Field(
        True, description="Sampling: hand each token's exact law to the verifier (else point masses; both exact)."
    )
    tree: bool = Field(
        False,
        description="Tr+VC: the runners-up of the strongest level's reviews join the chain "
        "as siblings, as many as SWIFT's widths give (the static_tree scheduler's defaults).",
    )
    max_nodes: int = Field(32, ge=2, le=1024, description="Most tree nodes with `tree`, root included.")

    @model_validator(mode="after")
    def _matrix(self):
        k = self.k_matrix
        if k is None:
            return self
        if not k or any(len(row) != len(k) for row in k):
            raise ValueError(f"k_matrix must be square (n rows of n entries), got row lengths {[len(r) for r in k]}")
        for s, row in enumerate(k):
            if any(v < 0 for v in row):
                raise ValueError(f"k_matrix row {s} has a negative entry: {row}")
            if any(row[:s]):
                raise ValueError(f"k_matrix row {s}: entries left of the diagonal are unused and must be 0: {row}")
            if self.k_form == "cumulative" and any(b < a for a, b in zip(row[s:], row[s + 1 :])):
                raise ValueError(f"k_matrix row {s}: cumulative entries must not decrease: {row}")
        return self


def default_k_matrix(n: int) -> list[list[int]]:
    """The official code's configurations for 1–3 levels (increments), extended the same way."""

    def entry(s: int, j: int) -> int:
        if j < s:
            return 0
        if j == n - 1:
            return 10
        if s == 0:
            return 5 if j == 0 else 14
        return 1 if j == s else 10

    return [[entry(s, j) for j in range(n)] for s in range(n)]


def increments(k: list[list[int]], form: str) -> list[list[int]]:
    if form == "increments":
        return [list(row) for row in k]
    return [[0] * s + [b - a for a, b in zip([0, *row[s:]], row[s:])] for s, row in enumerate(k)]


def lenient_step(p: torch.Tensor, law: torch.Tensor | None, token: int, leniency: float):
    """Sampling-mode intermediate review of `token` (drawn from `law`; None = a point mass) against
    the reviewer's p ([V]). Returns (the acceptance probability min(1, l·p(x)/q(x)), the output
    token's law min(q, l·p) + (1 − Σ min(q, l·p)) · r, and a function giving the residual
    r = norm(max(p − q, 0)) a replacement is drawn from); float64."""
    p = p.double()
    if law is None:  # q = δ(x): the law is a·δ(x) + (1 − a)·p off x / (1 − p(x)); 5 ops, not 12
        p_x = float(p[token])
        accept = min(1.0, leniency * p_x)
        if p_x >= 1.0:
            return 1.0, p, lambda: p
        out = p * ((1.0 - accept) / (1.0 - p_x))
        out[token] = accept

        def residual() -> torch.Tensor:
            r = p / (1.0 - p_x)
            r[token] = 0.0
            return r

        return accept, out, residual
    q = law.to(p)
    capped = torch.minimum(q, leniency * p)
    q_x = float(q[token])
    accept = 1.0 if q_x <= 0 else min(1.0, float(capped[token]) / q_x)
    r = torch.clamp(p - q, min=0.0)
    total = float(r.sum())
    r = r / total if total > 0 else p  # total 0 only when q = p: then acceptance is certain
    return accept, capped + max(0.0, 1.0 - float(capped.sum())) * r, lambda: r


class _Token:
    __slots__ = ("confidence", "law", "level", "q", "runners_up", "token")

    def __init__(self, token: int, level: str, confidence: float, q: float, law: torch.Tensor | None):
        self.token, self.level, self.confidence, self.q, self.law = token, level, confidence, q, law
        self.runners_up: tuple[tuple[int, float], ...] = ()  # the strongest reviewer's, with `tree`


class CSDraftingScheduler(Scheduler):
    name = "cs_drafting"
    Options = CSDraftingOptions
    options: CSDraftingOptions

    @classmethod
    def check_levels(cls, options: BaseModel, level_names: list[str]) -> list[str]:
        options = cast(CSDraftingOptions, options)
        where = "scheduler.options"
        if not level_names:
            return ["levels: cs_drafting needs at least one level (the cheapest, a lookup, last)"]
        order = options.order if options.order is not None else level_names
        problems = []
        if options.order is not None:
            if not order:
                problems.append(f"{where}.order: name at least one level")
            for name in sorted({n for n in order if n not in level_names}):
                problems.append(f"{where}.order: no level named '{name}'; levels: {', '.join(level_names)}")
            for name in sorted({n for n in order if order.count(n) > 1}):
                problems.append(f"{where}.order: level '{name}' is listed more than once")
        k = options.k_matrix
        if k is not None and order and len(k) != len(order):
            problems.append(
                f"{where}.k_matrix: expected {len(order)} × {len(order)} (one row and one column per "
                f"level in order: {', '.join(order)}), got {len(k)} × {len(k)}"
            )
        return problems

    def __init__(self, options: BaseModel | None, levels: list[Level]):
        super().__init__(options, levels)
        o = self.options
        by_name = {level.name: level for level in levels}
        self.order = [by_name[n] for n in o.order] if o.order is not None else list(levels)
        n = len(self.order)
        self.k = increments(o.k_matrix, o.k_form) if o.k_matrix is not None else default_k_matrix(n)
        self.reviews = [level.strategy.can_review for level in self.order]
        horizontal = o.cascade == "horizontal"
        self.leaf = [horizontal or i == n - 1 or not self.reviews[i] for i in range(n)]
        self.plans: list[list[tuple[int, int]]] = []  # per call row s: (level index, threshold) in turn
        for s in range(n):
            row = self.k[s][s:]
            if o.cascade == "vertical":
                self.plans.append([(i, row[0]) for i in range(s, n)])
            else:
                self.plans.append(list(zip(range(s, n), accumulate(row), strict=True)))
        if horizontal:
            self.plans[1:] = [[] for _ in self.plans[1:]]

    @torch.inference_mode()
    def build_tree(self, state: DecodingState) -> TokenTree:
        builder = TreeBuilder(state.root_token)
        if state.max_depth <= 0 or not self.order:
            return builder.build()
        self.greedy = state.sampling.greedy
        # Greedy reviews compare softmax probabilities as the paper's code does; review() would
        # return one-hot argmax rows under greedy sampling parameters.
        self.review_state = replace(state, sampling=SamplingParams(temperature=1.0)) if self.greedy else state
        tokens = self._call(state, (), 0, state.max_depth)[: state.max_depth]
        laws = not self.greedy and self.options.pass_laws
        if not self.options.tree:
            node = 0
            for tok in tokens:
                node = builder.add(node, tok.token, tok.level, tok.confidence, tok.law if laws else None)
            return builder.build()
        chain = DraftResult(
            tokens=tuple(t.token for t in tokens),
            confidence=tuple(t.confidence for t in tokens),
            alternatives=tuple(t.runners_up for t in tokens),
        )
        o = StaticTreeScheduler.Options()
        widths = o.widths if self.greedy else o.sampling_widths
        return static_tree(
            state.root_token,
            chain,
            None,
            o.thresholds,
            widths,
            self.options.max_nodes,
            levels=[t.level for t in tokens],
            laws=[t.law if laws else None for t in tokens],
        )

    # -- the recursion ----------------------------------------------------------------------
    def _call(self, state: DecodingState, prefix: tuple[int, ...], s: int, room: int) -> list[_Token]:
        """Tokens after `prefix` from the call of row `s` (reviewer s − 1), before its review."""
        out: list[_Token] = []
        for i, threshold in self.plans[s]:
            limit = min(threshold, room)
            while len(out) < limit:
                here = prefix + tuple(t.token for t in out) if out else prefix
                if self.leaf[i]:
                    new = self._direct(state, here, i, limit - len(out), room - len(out))
                else:
                    new = self._call(state, here, i + 1, room - len(out))
                    new = self._review(state, here, i, new, room - len(out))
                if not new:
                    break  # no progress: the next entry takes over
                out += new
        return out

    def _direct(self, state: DecodingState, prefix: tuple[int, ...], i: int, need: int, room: int) -> list[_Token]:
        level, model = self.order[i], self.reviews[i]
        wanted = need if model or self.options.lookup_tokens is None else self.options.lookup_tokens
        draft = level.draft(state, prefix, min(wanted, room))
        laws = None if self.greedy else draft.draft_probs
        out = []
        for j, token in enumerate(draft.tokens):
            confidence = draft.confidence[j] if draft.confidence else 1.0
            out.append(
                _Token(
                    token,
                    level.name,
                    confidence,
                    min(confidence, 1.0) if model else 1.0,
                    None if laws is None else laws[j],
                )
            )
        return out

    def _review(
        self, state: DecodingState, prefix: tuple[int, ...], i: int, draft: list[_Token], room: int
    ) -> list[_Token]:
        """Level i reviews `draft` (continuing `prefix`); returns the accepted prefix plus one token."""
        level = self.order[i]
        tokens = tuple(t.token for t in draft)
        rows = level.review(self.review_state, prefix, tokens)
        if rows is None:
            return draft  # this level cannot review now: it abstains
        out = self._reviewed(state, level.name, draft, rows, room)
        if self.options.tree and i == 0:  # Tr+VC: the strongest reviewer's runners-up become siblings
            for j, tok in enumerate(out):
                tok.runners_up = _runners_up(rows[j], tok.token)
        return out

    def _reviewed(
        self, state: DecodingState, name: str, draft: list[_Token], rows: torch.Tensor, room: int
    ) -> list[_Token]:
        """`draft` after the review whose distributions are `rows` (see the module docstring)."""
        m = len(draft)
        if self.greedy:
            top = rows.max(dim=-1)
            best, top_p = top.indices.tolist(), top.values.tolist()
            lenient = self.options.leniency
            for j, tok in enumerate(draft):
                if tok.token == best[j]:
                    tok.q = tok.confidence = top_p[j]
                    continue
                if lenient > 1 and (p := float(rows[j, tok.token])) > tok.q / lenient:
                    tok.q = tok.confidence = p
                    continue
                return draft[:j] + [_Token(best[j], name, top_p[j], top_p[j], None)]
            bonus = [_Token(best[m], name, top_p[m], top_p[m], None)]
        else:
            generator = state.generator
            for j, tok in enumerate(draft):
                accept, law, residual = lenient_step(rows[j], tok.law, tok.token, self.options.leniency)
                if _uniform(generator) < accept:
                    tok.law, tok.confidence = law, float(rows[j, tok.token])
                    continue
                token = int(torch.multinomial(residual(), 1, generator=generator).item())
                return draft[:j] + [_Token(token, name, float(rows[j, token]), 1.0, law)]
            token = int(torch.multinomial(rows[m], 1, generator=generator).item())
            bonus = [_Token(token, name, float(rows[m, token]), 1.0, rows[m].double())]
        return draft + bonus if m < room else draft


def _runners_up(row: torch.Tensor, chosen: int, count: int = 9) -> tuple[tuple[int, float], ...]:
    """The `count` most likely tokens of a review row other than `chosen`, with their probability."""
    top = torch.topk(row, min(count + 1, row.shape[-1]))
    pairs = zip(top.indices.tolist(), top.values.tolist(), strict=True)
    return tuple((t, p) for t, p in pairs if t != chosen and p > 0)[:count]


def _uniform(generator: torch.Generator | None) -> float:
    device = generator.device if generator is not None else "cpu"
    return float(torch.rand((), generator=generator, dtype=torch.float64, device=device))


__all__ = ["CSDraftingOptions", "CSDraftingScheduler", "default_k_matrix", "lenient_step"]
