"""The frequency-ranked draft head (`draft_vocab`, FR-Spec): draft-token cost and agreement per V′.

SmolLM2-135M (float32, CPU, 1 thread). Two self-speculative levels, each drafting with the full LM
head and with a `SubsetHead` of V′ ∈ `--vocabs` frequent tokens plus the context's
(`strategies/dsia/draft_head.py`):

- `int8`: `quanto_activation`, `backend: auto` (every Linear, LM head included, an int8 twin);
- `ls60`: `layer_sparsity` at sparsity 0.6 with its searched skip set (the cached one; searched
  here with `prepare`, as `cas-spec calibrate` does, when none is cached), float32.

The pipeline's calibrated kernels (`load_pipeline("autoregressive")`'s calibration, entered with
`kernels_active`) are active around every forward, as `Pipeline.generate` runs drafts and
verification.

1. cost: on a cache of `--cache-tokens` tokens of the shipped Spec-Bench text (the heads' context:
   the same tokens), one forward over one new token of each configuration (the level's variant
   swapped in with `ModelAdapter.swapped`, as a draft pass runs) against one target forward, every repeat
   visiting every configuration in a rotated order (interleaved), the cache rolled back to its
   length after each (`adapter.rollback`: skipped attention writes no KV, so `crop` would be
   wrong). c = the median over repeats of draft seconds / target seconds of the same repeat (and
   the ratio of medians). "call" repeats the measurement for a whole 1-token `draft()` call of the
   level (variant swap, forward, softmax over V, runners-up, rollback) against `Target.forward_tree`
   of one token, as `costs/draft_costs.py` prices levels.
2. agreement: greedy decoding of chat-templated Spec-Bench questions (the first of each task group,
   `--steps` tokens each) with the float32 target; at every position one 1-token forward of each
   level over the target's cache (the first draft token of a self-speculative step), its final
   hidden state read once and scored by every head; agreement = its argmax equals the target's
   greedy token. Also: how often the subset head's argmax equals the level's full head's, and how
   often the target's token is in the subset at all (an upper bound for the agreement).

Run (about 5 minutes; a first run also calibrates kernels and may search the 0.6 skip set):

    .venv/bin/python benchmarks/draft_vocab.py [--repeats 31] [--steps 50] [--vocabs full,32768,...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from dataclasses import replace

import torch
from torch import nn


class Capture(nn.Module):
    """An LM head that records its input (the final hidden state) and returns the wrapped head's logits."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.hidden: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.hidden = hidden
        return self.head(hidden)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--cache-tokens", type=int, default=300)
    parser.add_argument("--vocabs", default="full,32768,16384,8192,4096,2048")
    parser.add_argument("--sparsity", type=float, default=0.6)
    parser.add_argument("--no-ls", action="store_true", help="only the int8 level")
    parser.add_argument("--prompts", type=int, default=6, help="agreement: questions (the first of each group)")
    parser.add_argument("--steps", type=int, default=50, help="agreement: greedy tokens per question")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(1)
    start = time.perf_counter()

    from cas_spec import load_pipeline
    from cas_spec.core.state import DecodingState
    from cas_spec.core.tree import TreeBuilder
    from cas_spec.core.types import SamplingParams
    from cas_spec.costs.calibration import kernels_active
    from cas_spec.costs.draft_costs import calibration_text_ids
    from cas_spec.data.questions import group_questions, load_questions
    from cas_spec.hub import load_model
    from cas_spec.strategies.dsia.skip_search import load_cached, model_fingerprint
    from cas_spec.strategies.dsia.token_ranking import ranked_ids

    model, tok = load_model("smollm2-135m", "cpu", "float32")
    pipe = load_pipeline("autoregressive", model=model, tokenizer=tok, progress=False)
    calibration, adapter = pipe.calibration, pipe.adapter
    plan = calibration.linear_plan.describe() if calibration and calibration.linear_plan else "stock"
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, 1 thread; "
        f"target kernels: linear plan {plan}, attention {calibration.attention if calibration else None}"
    )
    t0 = time.perf_counter()
    print(f"token ranking: {len(ranked_ids(tok))} special and seen ids ({time.perf_counter() - t0:.1f} s)")
    vocabs: list[int | None] = [None if v == "full" else int(v) for v in args.vocabs.split(",")]
    text = calibration_text_ids(tok, max(args.cache_tokens + 2, 600), model.config.vocab_size)

    families = {"int8": {"kind": "quanto_activation", "options": {"backend": "auto"}}}
    if not args.no_ls:
        ls = {"sparsity": args.sparsity, "stop_below": 0.0}
        cached = load_cached(model_fingerprint(model), args.sparsity)
        if cached is None or not cached.get("done"):
            t0 = time.perf_counter()
            search = load_pipeline(
                {
                    "scheduler": {"kind": "chain"},
                    "calibration": "off",
                    "levels": [{"name": "ls", "kind": "layer_sparsity", "options": ls}],
                },
                model=model,
                tokenizer=tok,
                progress=False,
            )
            with kernels_active(model, calibration):
                search.levels[0].strategy.prepare(search.target, text[:512], progress=False)
            print(f"searched the {args.sparsity} skip set in {time.perf_counter() - t0:.0f} s")
        cached = load_cached(model_fingerprint(model), args.sparsity)
        print(
            f"ls{round(args.sparsity * 100)} skip set: {len(cached['skip'])} sublayers, search score "
            f"{cached['score']:.3f} after {cached['evaluations']} candidates"
        )
        families[f"ls{round(args.sparsity * 100)}"] = {"kind": "layer_sparsity", "options": {**ls, "search": "off"}}

    def label(v: int | None) -> str:
        return "full" if v is None else str(v)

    levels = [
        {"name": f"{fam}_{label(v)}", "kind": spec["kind"], "options": {**spec["options"], "draft_vocab": v}}
        for fam, spec in families.items()
        for v in vocabs
    ]
    drafts = load_pipeline(
        {"scheduler": {"kind": "chain"}, "calibration": "off", "levels": levels},
        model=model,
        tokenizer=tok,
        progress=False,
    )
    target = drafts.target
    strategies = {lv.name: lv.strategy for lv in drafts.levels}

    # -- 1. cost ---------------------------------------------------------------------------------
    context = args.cache_tokens
    with torch.inference_mode(), kernels_active(model, calibration):
        target.prefill(list(text[:context]))
        state = DecodingState(
            tokens=list(text[: context + 1]),
            prompt_length=context + 1,
            sampling=SamplingParams(),
            generator=None,
            context_length=context,
            max_depth=1,
            force_length=True,
        )
        for strategy in strategies.values():
            strategy.start(state)  # the heads' context: the cached text
            strategy.draft(state, (), 1)  # builds variants and heads
        variants = {name: s.variant(state) for name, s in strategies.items()}
        ids = torch.tensor([[state.root_token]])
        positions = torch.tensor([[context]])
        root = TreeBuilder(state.root_token).build()

        def forward(name: str | None):
            def run() -> None:
                model(
                    input_ids=ids,
                    position_ids=positions,
                    past_key_values=target.cache,
                    use_cache=True,
                    logits_to_keep=1,
                )

            if name is None:
                return contextlib.nullcontext, run
            return (lambda: adapter.swapped(variants[name].layers, variants[name].lm_head)), run

        def call(name: str | None):
            if name is None:
                return contextlib.nullcontext, lambda: target.forward_tree(root)
            return contextlib.nullcontext, lambda: strategies[name].draft(state, (), 1)

        timed = {("forward", n): forward(n) for n in [None, *strategies]}
        timed |= {("call", n): call(n) for n in [None, *strategies]}
        keys = list(timed)
        times: dict = {k: [] for k in keys}
        t0 = time.perf_counter()
        for r in range(args.repeats + 1):
            shift = r % len(keys)
            for key in keys[shift:] + keys[:shift]:
                enter, run = timed[key]
                with enter():
                    t = time.perf_counter()
                    run()
                    elapsed = time.perf_counter() - t
                target.restore()
                if r:
                    times[key].append(elapsed)
        print(
            f"\ntiming: {args.repeats} interleaved repeats, {context} cached tokens, "
            f"{time.perf_counter() - t0:.0f} s; load average now {os.getloadavg()[0]:.2f}"
        )
    costs: dict[tuple[str, str], tuple[float, float, float, float]] = {}
    for kind in ("forward", "call"):
        unit = times[(kind, None)]
        print(
            f"{kind}: target {statistics.median(unit) * 1e3:.1f} ms (IQR "
            f"{statistics.quantiles(unit, n=4)[0] * 1e3:.1f}-{statistics.quantiles(unit, n=4)[2] * 1e3:.1f})"
        )
        for name in strategies:
            mine = times[(kind, name)]
            ratios = [d / u for d, u in zip(mine, unit, strict=True)]
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            costs[(kind, name)] = (statistics.median(ratios), q1, q3, statistics.median(mine) / statistics.median(unit))
            print(
                f"  {name:<12} {statistics.median(mine) * 1e3:6.1f} ms  c = {costs[(kind, name)][0]:.3f} "
                f"(IQR {q1:.3f}-{q3:.3f}; ratio of medians {costs[(kind, name)][3]:.3f})"
            )

    # -- 2. agreement ----------------------------------------------------------------------------
    _, questions = load_questions()
    groups = group_questions(questions)
    prompts = [pipe.encode(qs[0].prompt, chat=True) for qs in groups.values()][: args.prompts]
    capture = {fam: Capture(variants[f"{fam}_full"].lm_head or adapter.lm_head) for fam in families}
    capture_variants = {fam: replace(variants[f"{fam}_full"], lm_head=capture[fam]) for fam in families}
    heads = {name: strategies[name].draft_head() for name in strategies}
    hits = dict.fromkeys(strategies, 0)
    same = dict.fromkeys(strategies, 0)
    covered = dict.fromkeys(strategies, 0)
    total = 0
    t0 = time.perf_counter()
    with torch.inference_mode(), kernels_active(model, calibration):
        for prompt in prompts:
            target.prefill(prompt[:-1])
            for head in heads.values():
                if head is not None:
                    head.reset_context(prompt)
            last = prompt[-1]
            for _ in range(args.steps):
                length = target.length
                x, pos = torch.tensor([[last]]), torch.tensor([[length]])
                full_tokens, predicted = {}, {}
                for fam, variant in capture_variants.items():
                    with adapter.swapped(variant.layers, variant.lm_head):
                        logits = model(
                            input_ids=x, position_ids=pos, past_key_values=target.cache, use_cache=True
                        ).logits[0, -1]
                    target.restore()
                    full_tokens[fam] = int(logits.argmax())
                    hidden = capture[fam].hidden
                    for v in vocabs:
                        name = f"{fam}_{label(v)}"
                        head = heads[name]
                        predicted[name] = full_tokens[fam] if head is None else int(head(hidden)[0, -1].argmax())
                logits = model(input_ids=x, position_ids=pos, past_key_values=target.cache, use_cache=True).logits
                target.length += 1
                last = int(logits[0, -1].argmax())
                for name, token in predicted.items():
                    fam = name.rsplit("_", 1)[0]
                    hits[name] += token == last
                    same[name] += token == full_tokens[fam]
                    covered[name] += heads[name] is None or bool(heads[name].member[last])
                for head in heads.values():
                    if head is not None:
                        head.add_context([last])
                total += 1
    print(
        f"\nagreement with the target's greedy token, {total} positions over {len(prompts)} Spec-Bench questions "
        f"({', '.join(list(groups)[: len(prompts)])}; {time.perf_counter() - t0:.0f} s)"
    )
    print(
        "\n| level | V′ | c (forward) | IQR | c (draft call) | agreement | = own full head | target token in subset |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in strategies:
        fam, v = name.rsplit("_", 1)
        c, q1, q3, _ = costs[("forward", name)]
        print(
            f"| {fam} | {v} | {c:.3f} | {q1:.3f}-{q3:.3f} | {costs[('call', name)][0]:.3f} | "
            f"{hits[name] / total:.3f} | {same[name] / total:.3f} | {covered[name] / total:.3f} |"
        )
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
