"""`DraftCostTable`: what one draft call of each level costs, measured ahead and cached.

The latency model (`schedulers/estimators/latency.py`) prices a level's draft as per_call + per_token · k,
in one-token target forwards at the same context. Online it fits these from the engine's step
timings; this table is where it starts, so that a scheduler neither tries an expensive level at
full length because it has not been timed yet, nor waits for the first steps to learn that
prompt lookup is nearly free.

Measurement (`measure_draft_costs`): on a real text (the shipped Spec-Bench questions), at a
few context lengths, each level drafts `DRAFT_LENGTHS` (1, 3 and 6) tokens below the last
committed token, with early stopping off (`DecodingState.force_length`, so a model level really
proposes each length and the fit can tell a call's cost from a token's), in a shuffled order per
repeat, interleaved with one-token target forwards on the same cache; the medians of draft
seconds over one-token forward seconds are fitted as per_call + per_token · proposed tokens by
least squares, and the fit's root-mean-square residual is kept beside it (`cas-spec calibrate`
shows it: a large one says the level's cost is not linear in its tokens). A level's first call
at a context is a warm-up and not timed (it pays one-time work: twins, variants). A level that
can review (a model level) also has its *agreement* measured there: the share of the next
`AGREEMENT_TOKENS` positions of the text where its argmax, teacher-forced on the text, equals the
target's; schedulers start from it as the level's acceptance before they have seen it draft.

Cached per calibration key (model shape, machine, threads, kernels) and level signature (its
strategy kind and options), in the same folder as the cost tables.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from cas_spec.core.state import DecodingState
from cas_spec.core.tree import TreeBuilder, chain_tree
from cas_spec.core.types import DraftResult, SamplingParams
from cas_spec.costs.table import context_weights, costs_dir
from cas_spec.data.questions import load_questions
from cas_spec.paths import write_text_atomically
from cas_spec.schedulers.estimators.latency import LevelCost

if TYPE_CHECKING:
    from pydantic import BaseModel
    from transformers import PreTrainedConfig

    from cas_spec.core.levels import Level
    from cas_spec.core.target import Target

FORMAT_VERSION = 3
DRAFT_LENGTHS = (1, 3, 6)
AGREEMENT_TOKENS = 48  # positions a level's agreement with the target is measured on, per context


@dataclass(frozen=True)
class LevelDraftCost:
    """A level's draft cost at each measured context, in one-token target forwards there."""

    context_lengths: tuple[int, ...]  # ascending
    per_call: tuple[float, ...]  # [context]
    per_token: tuple[float, ...]  # [context]
    residual: tuple[float, ...] = ()  # [context]: root-mean-square residual of the fit, same unit
    agreement: float | None = None  # share of positions where its greedy token is the target's (model levels)

    def cost(self, calls: int, tokens: int, context: int) -> float:
        return sum(
            w * (calls * self.per_call[i] + tokens * self.per_token[i])
            for i, w in context_weights(self.context_lengths, context)
        )


def level_signature(kind: str, options: BaseModel | Mapping[str, object] | None) -> str:
    """What a level's draft cost depends on besides the model and machine: its kind and options."""
    data = cast("BaseModel", options).model_dump(mode="json") if hasattr(options, "model_dump") else dict(options or {})
    text = json.dumps({"kind": kind, "options": data}, sort_keys=True)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _path(key: str):
    return costs_dir() / f"{key}.draft.json"


def load_draft_costs(key: str) -> dict[str, dict]:
    """signature -> {"cost": LevelDraftCost, "quick": bool} cached for calibration `key`."""
    try:
        data = json.loads(_path(key).read_text())
        if data.get("format") != FORMAT_VERSION:
            return {}
        return {
            sig: {
                "cost": LevelDraftCost(
                    tuple(e["context_lengths"]),
                    tuple(e["per_call"]),
                    tuple(e["per_token"]),
                    tuple(e.get("residual", ())),
                    e.get("agreement"),
                ),
                "quick": bool(e.get("quick")),
            }
            for sig, e in data["levels"].items()
        }
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def save_draft_costs(key: str, entries: dict[str, dict]) -> None:
    levels = {
        sig: {
            "context_lengths": list(e["cost"].context_lengths),
            "per_call": list(e["cost"].per_call),
            "per_token": list(e["cost"].per_token),
            "residual": list(e["cost"].residual),
            "agreement": e["cost"].agreement,
            "quick": e["quick"],
        }
        for sig, e in entries.items()
    }
    write_text_atomically(_path(key), json.dumps({"format": FORMAT_VERSION, "levels": levels}, indent=1))


def fit_call_and_token(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(per_call, per_token) ≥ 0 with cost ≈ per_call + per_token · tokens over (tokens, cost) points."""
    fit = LevelCost()
    for tokens, cost in points:
        fit.update(1, tokens, cost, decay=1.0)
    return fit.per_call, fit.per_token


def fit_residual(points: Sequence[tuple[float, float]], per_call: float, per_token: float) -> float:
    """Root-mean-square of cost − (per_call + per_token · tokens) over (tokens, cost) points."""
    if not points:
        return 0.0
    return (sum((cost - per_call - per_token * tokens) ** 2 for tokens, cost in points) / len(points)) ** 0.5


@torch.inference_mode()
def measure_draft_costs(
    target: Target,
    levels: Sequence[Level],
    text_ids: Sequence[int],
    context_lengths: Sequence[int] = (64, 300, 1000),
    repeats: int = 5,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, LevelDraftCost]:
    """Level name -> its measured `LevelDraftCost` (see the module docstring)."""
    from tqdm import tqdm

    limit = min(target.adapter.context_length, len(text_ids)) - max(*DRAFT_LENGTHS, AGREEMENT_TOKENS) - 2
    contexts = tuple(sorted({c for c in context_lengths if c <= limit})) or (max(4, limit),)
    rng = random.Random(seed)
    points: dict[str, list[list[tuple[float, float]]]] = {lv.name: [] for lv in levels}
    agreements: dict[str, list[float]] = {lv.name: [] for lv in levels}
    bar = tqdm(
        total=len(contexts) * len(levels) * (repeats * (len(DRAFT_LENGTHS) + 1) + 1),
        desc="calibrating draft costs",
        unit="call",
        disable=not progress,
        file=sys.stderr,
        leave=False,
    )
    try:
        for context in contexts:
            target.prefill(list(text_ids[:context]))
            state = DecodingState(
                tokens=list(text_ids[: context + 1]),
                prompt_length=context + 1,
                sampling=SamplingParams(),
                generator=None,
                context_length=target.length,
                max_depth=max(DRAFT_LENGTHS),
                force_length=True,
            )
            root = TreeBuilder(state.root_token).build()
            ahead = tuple(text_ids[context + 1 : context + 1 + AGREEMENT_TOKENS])
            truth = target.forward_tree(chain_tree(state.root_token, DraftResult(tokens=ahead), None)).argmax(-1)
            target.restore()
            for level in levels:
                level.strategy.start(state)
                level.strategy.draft(state, (), max(DRAFT_LENGTHS))  # warm-up: one-time work
                target.restore()
                bar.update()
                samples: dict[int, list[tuple[float, int]]] = {k: [] for k in DRAFT_LENGTHS}
                forwards: list[float] = []
                for _ in range(repeats):
                    order = [*DRAFT_LENGTHS, 0]  # 0: a one-token target forward, the unit
                    rng.shuffle(order)
                    for k in order:
                        start = time.perf_counter()
                        if k:
                            proposed = len(level.strategy.draft(state, (), k))
                        else:
                            target.forward_tree(root)
                        seconds = time.perf_counter() - start
                        target.restore()
                        if k:
                            samples[k].append((seconds, proposed))
                        else:
                            forwards.append(seconds)
                        bar.update()
                if level.strategy.can_review:
                    reviewed = level.strategy.review(state, (), ahead)
                    target.restore()
                    agreements[level.name].append(float((reviewed.argmax(-1) == truth).float().mean()))
                unit = statistics.median(forwards)
                points[level.name].append(
                    [
                        (
                            statistics.median(p for _, p in samples[k]),
                            statistics.median(s for s, _ in samples[k]) / unit,
                        )
                        for k in DRAFT_LENGTHS
                    ]
                )
    finally:
        bar.close()
        target.restore()
    result = {}
    for name, per_context in points.items():
        fits = [fit_call_and_token(p) for p in per_context]
        residuals = tuple(fit_residual(p, c, t) for p, (c, t) in zip(per_context, fits, strict=True))
        agreement = statistics.mean(agreements[name]) if agreements[name] else None
        result[name] = LevelDraftCost(
            contexts, tuple(c for c, _ in fits), tuple(t for _, t in fits), residuals, agreement
        )
    return result


def format_draft_costs(costs: dict[str, LevelDraftCost], kinds: dict[str, str]) -> str:
    """The table `cas-spec calibrate` shows: per level and context, per call and per token."""
    if not costs:
        return "draft costs: no levels"
    lines = [
        "draft cost of a level, in one-token target forwards: per call + per drafted token "
        f"(fitted over {', '.join(map(str, DRAFT_LENGTHS))} tokens; residual: RMS of the fit)",
        f"{'level':<14}{'kind':<20}{'context':>8}{'per call':>10}{'per token':>11}{'1 token':>9}"
        f"{'residual':>10}{'agreement':>11}",
    ]
    for name, cost in costs.items():
        for i, context in enumerate(cost.context_lengths):
            residual = f"{cost.residual[i]:>10.3f}" if i < len(cost.residual) else f"{'–':>10}"
            agreement = f"{cost.agreement:>11.3f}" if i == 0 and cost.agreement is not None else f"{'':>11}"
            lines.append(
                f"{name if i == 0 else '':<14}{kinds.get(name, '') if i == 0 else '':<20}"
                f"{context:>8}{cost.per_call[i]:>10.3f}{cost.per_token[i]:>11.3f}"
                f"{cost.per_call[i] + cost.per_token[i]:>9.3f}{residual}{agreement}"
            )
    return "\n".join(lines)


def calibration_text_ids(tokenizer: Any, tokens: int, vocab_size: int) -> list[int]:
    """At least `tokens` token ids of real text: the shipped Spec-Bench questions, in file order.

    A tokenizer that cannot encode them (a test double) gets seeded random ids instead: costs
    hardly depend on the text, only lookup levels find fewer matches in it."""

    _, questions = load_questions()
    ids: list[int] = []
    try:
        for question in questions:
            ids.extend(tokenizer(question.prompt + "\n\n", add_special_tokens=False)["input_ids"])
            if len(ids) >= tokens:
                return ids
    except (ValueError, TypeError, KeyError):
        pass
    rng = random.Random(0)
    return [rng.randrange(vocab_size) for _ in range(tokens)]


def calibrated_draft_costs(
    target: Target,
    levels: Sequence[Level],
    kinds: dict[str, str],
    tokenizer: Any,
    *,
    key: str,
    quick: bool,
    use_cache: bool,
    progress: bool = True,
) -> dict[str, LevelDraftCost]:
    """Each level's draft cost: from the cache for calibration `key`, else measured and cached.

    A quick entry (first use: one context, 3 repeats) serves until a full one (`cas-spec
    calibrate`: three contexts, 5 repeats) replaces it."""
    signatures = {lv.name: level_signature(kinds[lv.name], lv.strategy.options) for lv in levels}
    cached = load_draft_costs(key)
    result, missing = {}, []
    for level in levels:
        entry = cached.get(signatures[level.name]) if use_cache else None
        if entry is not None and (quick or not entry["quick"]):
            result[level.name] = entry["cost"]
        else:
            missing.append(level)
    if missing:
        contexts = (300,) if quick else (64, 300, 1000)
        text = calibration_text_ids(
            tokenizer,
            max(contexts) + max(*DRAFT_LENGTHS, AGREEMENT_TOKENS) + 4,
            cast("PreTrainedConfig", target.model.config).vocab_size,
        )
        measured = measure_draft_costs(target, missing, text, contexts, repeats=3 if quick else 5, progress=progress)
        for name, cost in measured.items():
            cached[signatures[name]] = {"cost": cost, "quick": quick}
            result[name] = cost
        save_draft_costs(key, cached)
    return {lv.name: result[lv.name] for lv in levels}
