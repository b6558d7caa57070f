"""Cost of a target forward over n new tokens relative to a single-token step, per kernel lever.

SmolLM2-135M (float32, CPU), a cache of `--cache-tokens` tokens, one forward over n new tokens
followed by `cache.crop(-n)`. Three phases, each interleaving its configurations (every repeat
visits every (n, configuration) pair in a rotating order; medians are reported, with the spread
(p75 - p25) / median as a noise figure):

1. selection: `select_plan` times every available linear kernel in the full model (under
   `cas_sdpa`) and keeps the fastest per n (a kernel without weight copies wins ties within 5%);
   the same table also gives the plan restricted to the four torch kernels (stock, xwt, wxt,
   onednn), without the compiled `native` kernel;
2. comparison: stock, stock + cas_sdpa, each plan with and without cas_sdpa, (optionally) the same
   at 2 threads; costs relative to a STOCK 1-token step and to the 1-token step of the same
   configuration (the project's targets: n = 4 ≤ 1.1, n = 8 ≤ 1.25);
3. exactness: logits of real prompts (prefill, then chunks of 1, 3, 8, 4, 2 tokens) under each
   plan + cas_sdpa against stock: max |Δ| and argmax agreement.

Run (about 3 minutes; 5 with --threads-compare; progress bars on stderr):

    .venv/bin/python benchmarks/kernel_costs.py [--repeats 9] [--threads-compare] [--ns 1,4,8]

Use 1 thread only for timings you compare, and keep other work off the machine: 2-thread runs
become 8-50 times slower while another process holds the second core.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import time

import torch

from cas_spec.hub import load_model
from cas_spec.kernels import (
    DEFAULT_NS,
    LinearPlan,
    attention_kernel,
    extra_memory_bytes,
    kernel_status,
    linear_kernels,
    plan_from_timings,
    select_plan,
    threads,
    time_forwards,
)

TORCH_KERNELS = ("stock", "xwt", "wxt", "onednn")
PROMPTS = [
    "Explain why the sky is blue in two sentences.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "List three differences between a cat and a dog.",
    "Translate to French: The weather is nice today and we are going to the beach.",
]


def config(model, plan: LinearPlan | None, attention: str | None, n_threads: int | None = None):
    def enter():
        stack = contextlib.ExitStack()
        if n_threads is not None:
            stack.enter_context(threads(n_threads))
        if attention is not None:
            stack.enter_context(attention_kernel(model, attention))
        if plan is not None:
            stack.enter_context(linear_kernels(model, plan))
        return stack

    return enter


def spread(values: list[float]) -> float:
    q = statistics.quantiles(values, n=4)
    return (q[2] - q[0]) / statistics.median(values)


def print_comparison(times, names, threads_label) -> dict[int, dict[str, float]]:
    med = {n: {k: statistics.median(v) for k, v in row.items()} for n, row in times.items()}
    base = med[1]["stock"]
    print(
        f"\nms per forward (median), relative to a STOCK 1-token step [relative to the same "
        f"configuration's 1-token step] {{spread}}; {threads_label}"
    )
    print("  n  " + "".join(f"{name:>30}" for name in names))
    for n, row in med.items():
        cells = "".join(
            f"{row[k] * 1e3:8.1f} {row[k] / base:5.2f} [{row[k] / med[1][k]:4.2f}] {{{spread(times[n][k]):4.2f}}}"
            for k in names
        )
        print(f"{n:>3}  {cells}")
    noise = statistics.median(spread(v) for row in times.values() for v in row.values())
    print(f"median spread (p75-p25)/median over all cells: {noise:.2f}")
    return med


@torch.inference_mode()
def exactness(model, tok, plans: dict[str, LinearPlan], attention: str = "cas_sdpa") -> None:
    from transformers import DynamicCache

    print("\nexactness on real prompts (prefill, then chunks 1, 3, 8, 4, 2 of a greedy continuation):")
    chunks = [1, 3, 8, 4, 2]
    for name, plan in plans.items():
        worst, agree, total = 0.0, 0, 0
        for prompt in PROMPTS:
            ids = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
            ids = torch.tensor([list(ids)])
            cont = model.generate(
                ids, max_new_tokens=sum(chunks), do_sample=False, attention_mask=torch.ones_like(ids)
            )[:, ids.shape[1] :]
            full = torch.cat([ids, cont], dim=1)
            outs = {}
            for label, make in (("stock", contextlib.nullcontext), ("plan", config(model, plan, attention))):
                with make():
                    cache = DynamicCache(config=model.config)
                    pieces = [model(input_ids=ids, past_key_values=cache).logits]
                    start = ids.shape[1]
                    for size in chunks:
                        pieces.append(model(input_ids=full[:, start : start + size], past_key_values=cache).logits)
                        start += size
                    outs[label] = torch.cat(pieces, dim=1)[0]
            worst = max(worst, (outs["plan"] - outs["stock"]).abs().max().item())
            agree += (outs["plan"].argmax(-1) == outs["stock"].argmax(-1)).sum().item()
            total += outs["stock"].shape[0]
        print(f"  {name:<28} max |Δlogit| {worst:.2e}   argmax agreement {agree}/{total}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--cache-tokens", type=int, default=300)
    parser.add_argument("--ns", default=",".join(map(str, DEFAULT_NS)))
    parser.add_argument("--threads-compare", action="store_true", help="also time the plans at 2 threads")
    parser.add_argument("--no-exactness", action="store_true")
    args = parser.parse_args()
    ns = [int(n) for n in args.ns.split(",")]
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(1)
    model, tok = load_model("smollm2-135m", "cpu", "float32", progress=False)
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    print("kernels:", {k: ("ok" if why is None else why) for k, why in kernel_status().items()})
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    t0 = time.perf_counter()
    selection = select_plan(
        model, ns, cache_tokens=args.cache_tokens, repeats=args.repeats, threads=1, attention="cas_sdpa", release=False
    )
    print(f"\n== 1. selection ({time.perf_counter() - t0:.0f} s), under cas_sdpa")
    print(selection.format())
    plans = {"best plan": selection.plan}
    torch_plan = plan_from_timings(selection.timings, TORCH_KERNELS)
    if torch_plan != plans["best plan"]:
        plans["torch-kernels plan"] = torch_plan
    for name, plan in plans.items():
        print(f"{name}: {plan.describe()}   extra memory {extra_memory_bytes(model, plan) / 2**20:.0f} MiB")

    configs = {"stock": config(model, None, None), "stock+cas_sdpa": config(model, None, "cas_sdpa")}
    for name, plan in plans.items():
        configs[name] = config(model, plan, None)
        configs[f"{name}+cas_sdpa"] = config(model, plan, "cas_sdpa")
    names = list(configs)
    t0 = time.perf_counter()
    times = time_forwards(
        model, configs, ns, cache_tokens=args.cache_tokens, repeats=args.repeats, threads=1, desc="comparing"
    )
    print(f"\n== 2. comparison ({time.perf_counter() - t0:.0f} s)")
    print_comparison(times, names, "1 thread")

    if args.threads_compare:
        t_configs = {
            "stock": config(model, None, None),
            "best+cas_sdpa": config(model, plans["best plan"], "cas_sdpa"),
            "stock @2": config(model, None, None, 2),
            "best+cas_sdpa @2": config(model, plans["best plan"], "cas_sdpa", 2),
        }
        if "torch-kernels plan" in plans:
            t_configs["torch+cas_sdpa @2"] = config(model, plans["torch-kernels plan"], "cas_sdpa", 2)
        t_times = time_forwards(
            model, t_configs, ns, cache_tokens=args.cache_tokens, repeats=args.repeats, threads=1, desc="threads"
        )
        print("\n== 2b. threads: '@2' runs the forward with 2 threads (switching from 1 around each forward)")
        print_comparison(t_times, list(t_configs), "1 thread unless '@2'")

    if not args.no_exactness:
        exactness(model, tok, plans)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\npeak RSS {rss1:.0f} MiB (after loading the model: {rss0:.0f} MiB; the selection holds every "
        f"kernel's copies at once)"
    )


if __name__ == "__main__":
    main()
