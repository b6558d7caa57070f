"""Cost and agreement of an int8 draft pass: the target with int8 twins of its Linear layers.

SmolLM2-135M (float32, CPU, 1 thread). Twins (`cas_spec.strategies.dsia.quantization`) are built once for
every Linear of the decoder layers plus the LM head (tied to the embedding), for each available
backend, and swapped in by replacing the modules around a forward (restored in `finally`).

1. cost c: a forward over n new tokens on a cache of `--cache-tokens` tokens, followed by
   `cache.crop(-n)`, interleaved in one process (every repeat visits every (n, configuration) in a
   rotating order; medians), with the twins swapped in, relative to the float32 forward under the
   same attention/linear kernels: stock, and the repo's fast kernels as `Pipeline.generate`
   activates them (`kernels_active(model, calibrate(...))`: the cached quick calibration, measured
   on first use; under them the float Linears run the calibrated linear plan, the twins keep
   their own int8 GEMMs, attention runs `cas_sdpa` for both);
2. agreement: greedy float32 decoding of chat-templated questions from
   `src/cas_spec/data/spec_bench_question.jsonl` (one per group, not the calibration ones);
   at every position, a 1-token forward with the twins over the float32 target's cache (the first
   draft token of a self-speculative step) and the float forward's argmax are compared;
3. memory of the twins (`twin_bytes`) against the float32 weights they stand for.

quanto twins are calibrated (static activation scales) on forwards over the last
`--calib-tokens` tokens of 8 other questions (quanto's CPU int8 GEMM, `torch._int_mm`, is slow
without VNNI: ~20x a float matmul at 128 rows here, so long calibration forwards take minutes).

Under load (other processes on the cores) medians inflate unevenly; c is also given from the
fastest repeat of each cell (`c_min`), a steadier estimate of the uncontended cost.
Run (about 4 minutes; a first run also measures the quick kernel calibration):

    .venv/bin/python benchmarks/int8_draft_cost.py [--repeats 15] [--positions 200]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from cas_spec.hub import load_model
from cas_spec.strategies.dsia import quantization as qz

DATA = Path(__file__).resolve().parents[1] / "src" / "cas_spec" / "bench" / "data" / "spec_bench_question.jsonl"


def questions() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]


def chat_ids(tok, text: str) -> list[int]:
    out = tok.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(out["input_ids"])


class Swap:
    """Replace every module that has a twin by it, inside the block."""

    def __init__(self, model: nn.Module, twins: dict):
        self.where = [
            (parent, name, child)
            for parent in model.modules()
            for name, child in parent.named_children()
            if child in twins
        ]
        self.twins = twins

    @contextlib.contextmanager
    def __call__(self):
        try:
            for parent, name, child in self.where:
                setattr(parent, name, self.twins[child])
            yield
        finally:
            for parent, name, child in self.where:
                setattr(parent, name, child)


def fast_calibration(model):
    from cas_spec.adapters import resolve_adapter
    from cas_spec.core.target import Target
    from cas_spec.costs.calibration import measure_target

    target = Target(model, resolve_adapter(model))
    return measure_target(target, 1, "auto", "auto", quick=True, use_cache=True, progress=False)


@torch.inference_mode()
def agreement(model, swaps: dict, prompts: list[list[int]], steps: int) -> tuple[dict, int]:
    """(first-draft-token agreement over the float32 cache per backend, positions)."""
    from transformers import DynamicCache

    hits = dict.fromkeys(swaps, 0)
    total = 0
    for ids in prompts:
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([ids[:-1]]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        seq = list(ids)
        for _ in range(steps):
            last = torch.tensor([[seq[-1]]])
            drafts = {}
            for name, swap in swaps.items():
                with swap():
                    drafts[name] = model(input_ids=last, past_key_values=cache, use_cache=True).logits[0, -1].argmax()
                cache.crop(-1)
            target = model(input_ids=last, past_key_values=cache, use_cache=True).logits[0, -1].argmax().item()
            for name in swaps:
                hits[name] += int(drafts[name].item() == target)
            seq.append(target)
            total += 1
    return hits, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--cache-tokens", type=int, default=300)
    parser.add_argument("--ns", default="1,4")
    parser.add_argument("--positions", type=int, default=200, help="agreement positions (over 5 prompts)")
    parser.add_argument(
        "--calib-tokens",
        type=int,
        default=48,
        help="tokens per quanto calibration forward (the last ones of each of 8 questions)",
    )
    parser.add_argument("--no-fast", action="store_true", help="skip the fast-kernel comparison")
    args = parser.parse_args()
    ns = [int(n) for n in args.ns.split(",")]
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(1)
    start = time.perf_counter()
    model, tok = load_model("smollm2-135m", "cpu", "float32")
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, 1 thread"
    )

    linears = [m for m in model.model.layers.modules() if isinstance(m, nn.Linear)] + [model.lm_head]
    float_bytes = sum(
        m.weight.numel() * m.weight.element_size()
        + (m.bias.numel() * m.bias.element_size() if m.bias is not None else 0)
        for m in linears
    )
    status = qz.available_backends()
    backends = [name for name, why in status.items() if why is None]
    for name, why in status.items():
        if why is not None:
            print(f"backend {name} unavailable: {why}")

    rows = questions()
    by_group: dict[str, list[str]] = {}
    for row in rows:
        by_group.setdefault(row["category"], []).append(row["turns"][0])
    groups = ["writing", "translation", "summarization", "qa", "math_reasoning", "rag", "coding", "reasoning"]
    calib_texts = [by_group[g][1] for g in groups if g in by_group]  # calibration: the 2nd question of each group
    eval_groups = ["writing", "translation", "qa", "math_reasoning", "coding"]
    eval_prompts = [chat_ids(tok, by_group[g][0])[-400:] for g in eval_groups]

    twins: dict[str, dict] = {}
    with torch.inference_mode():
        for name in backends:
            t0 = time.perf_counter()
            built = qz.build_twins(linears, name)
            t_build = time.perf_counter() - t0
            t0 = time.perf_counter()
            if qz.needs_calibration(name):
                with Swap(model, built)(), qz.calibrating(name):
                    for text in calib_texts:
                        model(input_ids=torch.tensor([chat_ids(tok, text)[-args.calib_tokens :]]))
            qz.finish(built, name)
            extra = f", engine {qz.dynamic_int8.ENGINE_USED}" if name == "dynamic_int8" else ""
            print(
                f"{name}: {len(built)} twins built in {t_build:.1f} s, calibrated/finished in "
                f"{time.perf_counter() - t0:.1f} s{extra}; {qz.twin_bytes(built) / 2**20:.1f} MiB "
                f"(float32 weights of the same layers: {float_bytes / 2**20:.1f} MiB)"
            )
            twins[name] = built
    swaps = {name: Swap(model, built) for name, built in twins.items()}

    calibration = None
    if not args.no_fast:
        from cas_spec.costs.calibration import kernels_active

        t0 = time.perf_counter()
        calibration = fast_calibration(model)
        plan = calibration.linear_plan.describe() if calibration.linear_plan is not None else "stock"
        print(
            f"fast kernels ({time.perf_counter() - t0:.0f} s to get the calibration): linear plan {plan}, "
            f"attention {calibration.attention}"
        )

    def combo(swap, fast: bool):
        def enter():
            stack = contextlib.ExitStack()
            if fast:
                stack.enter_context(kernels_active(model, calibration))
            if swap is not None:
                stack.enter_context(swap())
            return stack

        return enter

    from cas_spec.kernels import time_forwards

    configs = {"float32": combo(None, False)}
    configs.update({name: combo(swap, False) for name, swap in swaps.items()})
    if calibration is not None:
        configs["float32+fast"] = combo(None, True)
        configs.update({f"{name}+fast": combo(swap, True) for name, swap in swaps.items()})
    t0 = time.perf_counter()
    times = time_forwards(
        model, configs, ns, cache_tokens=args.cache_tokens, repeats=args.repeats, threads=1, progress=False
    )
    med = {n: {k: statistics.median(v) for k, v in row.items()} for n, row in times.items()}
    print(
        f"\ntiming: {args.repeats} interleaved repeats, {args.cache_tokens} cached tokens "
        f"({time.perf_counter() - t0:.0f} s); medians in ms, c = int8 forward / float32 forward under the same kernels"
    )

    steps = max(1, args.positions // len(eval_prompts))
    t0 = time.perf_counter()
    hits, total = agreement(model, swaps, eval_prompts, steps)
    print(f"agreement: {total} greedy positions over {len(eval_prompts)} prompts ({time.perf_counter() - t0:.0f} s)")

    kernels = ["stock"] + (["fast"] if calibration is not None else [])
    mins = {n: {k: min(v) for k, v in row.items()} for n, row in times.items()}
    cols = (
        [f"{'backend':<13}"]
        + [f"c n={n} {k:<5}" for k in kernels for n in ns]
        + [f"c_min n={n} {k:<5}" for k in kernels for n in ns]
        + ["agree", "  MiB"]
    )
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "|".join("-" * (len(c) + 2) for c in cols) + "|")
    suffix = {"stock": "", "fast": "+fast"}
    cells = [f"{med[n]['float32' + suffix[k]] * 1e3:>{len(cols[1])}.1f}" for k in kernels for n in ns]
    cells += [f"{mins[n]['float32' + suffix[k]] * 1e3:>{len(cols[-3])}.1f}" for k in kernels for n in ns]
    print(f"| {'float32 (ms)':<13} | " + " | ".join(cells) + f" | {'-':>5} | {float_bytes / 2**20:>5.0f} |")
    for name in twins:
        cells = [
            f"{med[n][name + suffix[k]] / med[n]['float32' + suffix[k]]:>{len(cols[1])}.2f}"
            for k in kernels
            for n in ns
        ]
        cells += [
            f"{mins[n][name + suffix[k]] / mins[n]['float32' + suffix[k]]:>{len(cols[-3])}.2f}"
            for k in kernels
            for n in ns
        ]
        print(
            f"| {name:<13} | " + " | ".join(cells) + f" | {hits[name] / total:.3f} | "
            f"{qz.twin_bytes(twins[name]) / 2**20:>5.1f} |"
        )
    print("\nms:", {n: {k: round(v * 1e3, 1) for k, v in row.items()} for n, row in med.items()})
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
