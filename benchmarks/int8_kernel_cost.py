"""Cost of one int8 draft token against one calibrated float32 target step, and draft/target agreement.

SmolLM2-135M (float32, CPU, 1 thread). For each available int8 backend (`native_int8`: the project's
W8A8 AVX2 kernel, `cas_spec.kernels.int8`; `dynamic_int8`: torch's dynamically quantized Linear),
twins of every Linear of the decoder layers and of the LM head are built
(`quanto_activation.build_shared_twins`) and swapped in for a forward the way the strategy does it
(`variants.build_variant` / `ModelAdapter.swapped`), with the project's calibrated kernels active around every
forward (`kernels_active(model, pipe.calibration)` of `load_pipeline("autoregressive")`, as
`Pipeline.generate` runs drafts and verification).

1. cost: a forward over n new tokens (n = 1: one draft token) on a cache of `--cache-tokens` tokens
   (the adapter's `new_cache`, as decoding uses it, or `--cache dynamic`), then `cache.crop(-n)`; configurations interleaved in one process (`kernels.time_forwards`: every
   repeat visits every configuration), medians and minima; c = draft forward / target forward.
2. agreement: greedy decoding of chat-templated Spec-Bench questions (`data.questions`) with the
   float32 target; at every position a 1-token forward of each int8 variant over the target's cache
   (the first draft token of a self-speculative step, cropped again) and the target's argmax are
   compared.
3. memory of the twins against the float32 weights of the same layers.

"no-linear floor": the same forward with every Linear replaced by a module that returns zeros, the
cost of everything else (attention over the cache, norms, rotary, KV-cache updates, Python): no
Linear kernel can bring a draft token below it.

Run (about 3 minutes; a first run also measures the pipeline's quick kernel calibration):

    .venv/bin/python benchmarks/int8_kernel_cost.py [--repeats 21] [--positions 300] [--ns 1,2,4]
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import statistics
import time

import torch
from torch import nn


class FreeLinear(nn.Module):
    """Stands in for a Linear at no cost (zeros of the output shape): the floor of a draft forward."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--cache-tokens", type=int, default=300)
    parser.add_argument("--ns", default="1,4", help="new tokens per timed forward (1 = one draft token)")
    parser.add_argument("--positions", type=int, default=300, help="agreement positions (over --prompts prompts)")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--no-floor", action="store_true", help="skip the forward with free Linear layers")
    parser.add_argument(
        "--cache",
        choices=("pipeline", "dynamic"),
        default="pipeline",
        help="the KV cache: the adapter's `new_cache` (as decoding uses it) or transformers' DynamicCache",
    )
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(1)
    start = time.perf_counter()

    from cas_spec import load_pipeline
    from cas_spec.costs.calibration import kernels_active
    from cas_spec.data.questions import group_questions, load_questions
    from cas_spec.hub import load_model
    from cas_spec.kernels import time_forwards
    from cas_spec.strategies.dsia import quantization as qz
    from cas_spec.strategies.dsia.twins import build_shared_twins, target_linears
    from cas_spec.strategies.dsia.variants import build_variant

    model, tok = load_model("smollm2-135m", "cpu", "float32")
    pipe = load_pipeline("autoregressive", model=model, tokenizer=tok, progress=False)
    target, adapter, calibration = pipe.target, pipe.adapter, pipe.calibration
    plan = calibration.linear_plan.describe() if calibration and calibration.linear_plan else "stock"
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, 1 thread; target kernels: linear plan "
        f"{plan}, attention {calibration.attention if calibration else None}"
    )

    linears = target_linears(target)
    float_bytes = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    status = qz.available_backends()
    backends = [name for name in ("native_int8", "dynamic_int8") if status.get(name) is None]
    for name in ("native_int8", "dynamic_int8"):
        if status.get(name) is not None:
            print(f"backend {name} unavailable: {status[name]}")
    variants, sizes = {}, {}
    for name in backends:
        t0 = time.perf_counter()
        twins = build_shared_twins(target, name)
        sizes[name] = qz.twin_bytes(twins)
        variants[name] = build_variant(adapter, linear_twins=twins, description=name)
        print(
            f"{name}: {len(twins)} twins in {time.perf_counter() - t0:.1f} s, {sizes[name] / 2**20:.1f} MiB "
            f"(float32 weights of the same layers: {float_bytes / 2**20:.1f} MiB)"
        )

    def config(variant=None):
        def enter():
            stack = contextlib.ExitStack()
            stack.enter_context(kernels_active(model, calibration))
            if variant is not None:
                stack.enter_context(adapter.swapped(variant.layers, variant.lm_head))
            return stack

        return enter

    configs = {"target": config()} | {name: config(v) for name, v in variants.items()}
    if not args.no_floor:  # every Linear free: what the rest of a forward costs (a floor for any kernel)
        free = {m: FreeLinear(m.out_features) for m in linears}
        configs["no-linear floor"] = config(build_variant(adapter, linear_twins=free, description="floor"))
    ns = [int(n) for n in args.ns.split(",")]
    from transformers import DynamicCache

    def new_cache():
        if args.cache == "pipeline" and hasattr(adapter, "new_cache"):
            return adapter.new_cache()
        return DynamicCache(config=model.config)

    extra = {"new_cache": new_cache} if "new_cache" in inspect.signature(time_forwards).parameters else {}
    print(f"KV cache: {type(new_cache()).__name__}" + ("" if extra else " (time_forwards: DynamicCache)"))
    t0 = time.perf_counter()
    times = time_forwards(
        model, configs, ns, cache_tokens=args.cache_tokens, repeats=args.repeats, threads=1, progress=False, **extra
    )
    print(
        f"\ntiming: {args.repeats} interleaved repeats, {args.cache_tokens} cached tokens, "
        f"{time.perf_counter() - t0:.0f} s; load average now {os.getloadavg()[0]:.2f}"
    )
    for n in ns:
        row = times[n]
        med = {k: statistics.median(v) for k, v in row.items()}
        low = {k: min(v) for k, v in row.items()}
        q1 = {k: statistics.quantiles(v, n=4)[0] for k, v in row.items()}
        q3 = {k: statistics.quantiles(v, n=4)[2] for k, v in row.items()}
        print(
            f"n={n}: target {med['target'] * 1e3:.1f} ms (min {low['target'] * 1e3:.1f}, "
            f"IQR {q1['target'] * 1e3:.1f}-{q3['target'] * 1e3:.1f})"
        )
        for name in [*variants, *(["no-linear floor"] if not args.no_floor else [])]:
            ratios = [d / t for d, t in zip(row[name], row["target"])]  # same repeat: neighbours in time
            print(
                f"  {name:<13} {med[name] * 1e3:6.1f} ms  c = {med[name] / med['target']:.3f} (medians), "
                f"{low[name] / low['target']:.3f} (minima), {statistics.median(ratios):.3f} (median of "
                f"per-repeat ratios; IQR {statistics.quantiles(ratios, n=4)[0]:.3f}-"
                f"{statistics.quantiles(ratios, n=4)[2]:.3f})"
            )

    # agreement over real text
    _, questions = load_questions()
    groups = group_questions(questions)
    prompts = [pipe.encode(qs[0].prompt, chat=True) for qs in groups.values()][: args.prompts]
    steps = max(1, args.positions // len(prompts))
    hits = dict.fromkeys(variants, 0)
    total = 0
    t0 = time.perf_counter()
    with torch.inference_mode(), kernels_active(model, calibration):
        for ids in prompts:
            cache = new_cache()
            model(input_ids=torch.tensor([ids[:-1]]), past_key_values=cache, use_cache=True, logits_to_keep=1)
            last = ids[-1]
            for _ in range(steps):
                x = torch.tensor([[last]])
                drafts = {}
                for name, variant in variants.items():
                    with adapter.swapped(variant.layers, variant.lm_head):
                        logits = model(input_ids=x, past_key_values=cache, use_cache=True).logits
                    drafts[name] = int(logits[0, -1].argmax())
                    cache.crop(-1)
                last = int(model(input_ids=x, past_key_values=cache, use_cache=True).logits[0, -1].argmax())
                for name in variants:
                    hits[name] += int(drafts[name] == last)
                total += 1
    print(
        f"\nagreement of the draft's argmax with the target's greedy token, {total} positions over "
        f"{len(prompts)} Spec-Bench questions ({', '.join(list(groups)[: len(prompts)])}; "
        f"{time.perf_counter() - t0:.0f} s):"
    )
    for name in variants:
        print(f"  {name:<13} {hits[name] / total:.3f}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
