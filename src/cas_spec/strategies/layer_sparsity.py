"""`layer_sparsity`: draft with some attention and MLP sublayers of the target skipped.

SWIFT's scheme (`notes/papers.md` §1.2), which CAS-Spec's layer-sparsity levels most likely reuse:
attention and MLP sublayers are skipped independently, never in the first or last layer, and
`int((L − 2) · 2 · sparsity)` of them are skipped. The kept layers read the target's KV of the
committed tokens (measured on SmolLM2-135M: a searched 40 % set agrees with the target on about
0.6 of tokens that way, about 0.34 with a KV of its own).

Which sublayers to skip matters more than how many: evenly spaced or last-layers sets agree on
under 0.1 of tokens. The set is therefore either given (`skip`) or searched (`skip_search.py`,
SWIFT's budgets as the defaults): ahead of generation on real text when no finished search is
cached (`prepare`: `cas-spec calibrate`, and a pipeline's first use under `calibration: auto`,
with a progress bar), else on the fly while generating: one candidate scored after each step on
the text just committed (`observe`, timed apart from drafting, so the search never counts as the
level's draft cost), the best set so far drafting meanwhile. Found sets are cached on disk per
model, so the next run starts with them. On this CPU the searched sets still do not pay (a draft pass costs 0.4–0.8 of a
target forward for agreement ≤ 0.6); the level is lossless and a measuring scheduler switches it
off where it does not pay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field, field_validator

from cas_spec.core.errors import ConfigError
from cas_spec.core.state import DecodingState
from cas_spec.core.target import Target
from cas_spec.core.types import SamplingParams, SetupContext
from cas_spec.strategies.dsia.self_draft import SelfDraftOptions, SelfDraftStrategy
from cas_spec.strategies.dsia.skip_search import SkipSearch, load_cached, model_fingerprint, save_cached
from cas_spec.strategies.dsia.twins import QuantizeChoice, quantize_backend, shared_twins
from cas_spec.strategies.dsia.variants import ModelVariant, Sublayer, build_variant, skippable_sublayers

PREPARE_WINDOW = 96  # tokens every candidate is scored on when the search runs ahead (`prepare`)


class LayerSparsityOptions(SelfDraftOptions):
    sparsity: float = Field(0.4, gt=0.0, lt=1.0, description="Fraction of the 2·(L−2) sublayers to skip.")
    skip: list[str] | None = Field(
        None, description="An explicit skip set, e.g. [3.attention, 7.mlp]; no search when given."
    )
    search: Literal["auto", "fresh", "off"] = Field(
        "auto",
        description="auto: start from the cached set and search on until done; fresh: ignore the "
        "cache; off: only the given or cached set.",
    )
    search_budget: int = Field(1000, ge=1, description="Most candidate sets scored (SWIFT's max_opt_iter).")
    target_score: float = Field(
        0.93, gt=0.0, le=1.0, description="Stop searching at this matchness (SWIFT's max_score)."
    )
    patience: int = Field(
        300, ge=1, description="Stop after this many candidates without improvement (SWIFT's max_tolerance_iter)."
    )
    window: int = Field(
        50,
        ge=4,
        le=512,
        description="Committed tokens a candidate is scored on while generating (SWIFT's context_window).",
    )
    stop_below: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="Stop drafting when the draft's top token probability falls below this (SWIFT's 0.8; 0 = never).",
    )
    seed: int = Field(0, description="Seed of the search's random choices.")
    quantize: QuantizeChoice = Field(
        "none",
        description="Also run kept Linear modules in int8 "
        "(none, auto, native_int8, dynamic_int8, quanto): a mixing-DSIA level.",
    )

    @field_validator("skip")
    @classmethod
    def _parse_skip(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for item in value:
                Sublayer.parse(str(item))
        return value


class LayerSparsity(SelfDraftStrategy):
    name = "layer_sparsity"
    Options = LayerSparsityOptions
    options: LayerSparsityOptions

    def setup(self, context: SetupContext) -> None:
        super().setup(context)
        target = self.target
        adapter, options = target.adapter, self.options
        self.skippable = skippable_sublayers(adapter)  # not `candidates`: that is DraftStrategy's method
        self.count = int((adapter.num_layers - 2) * 2 * options.sparsity)
        self.fingerprint = model_fingerprint(target.model)
        self.search: SkipSearch | None = None
        self.skip: frozenset[Sublayer]
        if options.skip is not None:
            self.skip = frozenset(Sublayer.parse(s) for s in options.skip)
            if bad := sorted(s for s in self.skip if s not in self.skippable):
                raise ConfigError(
                    [
                        f"layer_sparsity.skip: cannot skip {', '.join(map(str, bad))}; skippable "
                        f"are layers 1..{adapter.num_layers - 2} (attention of layers "
                        f"{list(adapter.mask_reference_layers)} always runs)"
                    ]
                )
            return
        cached = None if options.search == "fresh" else load_cached(self.fingerprint, options.sparsity)
        start = frozenset(Sublayer.parse(s) for s in cached["skip"]) if cached else frozenset()
        if options.search == "off" or (cached and cached.get("done")):
            if not cached:
                raise ConfigError(
                    [
                        "layer_sparsity: no skip set for this model; give `skip`, or set "
                        "`search: auto` to search for one while generating"
                    ]
                )
            self.skip = start
            return
        self.search = SkipSearch(
            self.skippable,
            self.count,
            budget=options.search_budget,
            target_score=options.target_score,
            patience=options.patience,
            seed=options.seed,
            best=start,
            best_score=float(cached["score"]) if cached else -1.0,
            evaluations=int(cached["evaluations"]) if cached else 0,
        )
        self.skip = self.search.best

    def start(self, state: DecodingState) -> None:
        super().start(state)
        self.truth: dict[int, int] = {}  # position -> the target's argmax there (this generation)

    def head_backend(self) -> str | None:
        return quantize_backend(self.options.quantize)

    def build_variant(self, state: DecodingState) -> ModelVariant:
        return self._variant_for(state, self.skip)

    def _variant_for(self, state: DecodingState, skip: frozenset[Sublayer]) -> ModelVariant:
        twins = shared_twins(self.target, self.options.quantize, state.tokens)
        return build_variant(
            self.target.adapter, skip=skip, linear_twins=twins, description=f"{len(skip)} sublayers skipped"
        )

    def observe(self, state: DecodingState) -> None:
        """While the search is not done, score one candidate on the text just committed (timed
        apart from drafting: the search is not the level's draft cost)."""
        super().observe(state)
        if self.search is not None and not self.search.done:
            self.search_step(state)

    def prepare(self, target: Target, text_ids: Sequence[int], progress: bool = True) -> None:
        """Search the skip set to the end on `text_ids` (`cas-spec calibrate`), every candidate
        scored on the same `PREPARE_WINDOW` tokens, so that generation starts with the final set."""
        text = list(text_ids)
        if len(text) < PREPARE_WINDOW + 2:
            raise ValueError(f"layer_sparsity.prepare needs at least {PREPARE_WINDOW + 2} tokens of text")
        search = self.search
        if search is None or search.done:
            return
        from tqdm import tqdm

        target.prefill(text[:-1])
        state = DecodingState(
            tokens=text,
            prompt_length=len(text),
            sampling=SamplingParams(),
            generator=None,
            context_length=target.length,
        )
        self.truth = {}
        bar = tqdm(
            total=search.budget,
            initial=search.evaluations,
            unit="set",
            disable=not progress,
            leave=False,
            desc=f"searching a skip set (sparsity {self.options.sparsity})",
        )
        try:
            while not search.done:
                before = search.evaluations
                self.search_step(state, window=PREPARE_WINDOW)
                bar.update(search.evaluations - before)
        finally:
            bar.close()
            self.truth = {}
        save_cached(self.fingerprint, self.options.sparsity, search.to_entry())

    def search_step(self, state: DecodingState, window: int | None = None) -> None:
        """Score one candidate on the last `window` committed tokens (default: the option);
        adopt it if it beats the best so far."""
        search = self.search
        assert search is not None, "search_step runs only while a search is on"
        candidate = search.propose()
        score = matchness(
            self.target, state, self._variant_for(state, candidate), window or self.options.window, self.truth
        )
        if score is None:
            return
        if search.report(candidate, score):
            self.skip = candidate
            self._variant = None
        if search.done or search.evaluations % 10 == 0:
            save_cached(self.fingerprint, self.options.sparsity, search.to_entry())


def matchness(
    target: Target, state: DecodingState, variant: ModelVariant, window: int, truth: dict[int, int]
) -> float | None:
    """Fraction of the last `window` committed positions where `variant`'s argmax equals the
    target's, or None when fewer than 4 committed tokens are cached.

    `truth` memoizes the target's argmax per position. Under greedy decoding a generated token is
    the target's argmax at the position before it, so only prompt positions cost a target pass
    (once); under sampling, positions are computed once each, in one pass per window. Both passes
    read the committed KV through a prefix view (`Target.score`): the cache is never written.
    """
    length = target.length  # the cache holds tokens[:length]; tokens[length] is the root
    width = min(window, length - 1)
    if width < 4:
        return None
    start = length - width
    committed = state.tokens[start:length]
    if state.sampling.greedy:
        for position in range(max(start, state.prompt_length - 1), length):
            truth.setdefault(position, state.tokens[position + 1])
    if any(position not in truth for position in range(start, length)):
        predicted = target.score(committed, start).argmax(dim=-1)
        for position, token in zip(range(start, length), predicted.tolist(), strict=True):
            truth.setdefault(position, token)
    expected = torch.tensor([truth[p] for p in range(start, length)])
    return float((target.score(committed, start, variant).argmax(dim=-1).cpu() == expected).float().mean())
