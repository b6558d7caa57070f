"""Cheap verification forwards on CPU (float32): row-count linear kernels, GQA attention, threads.

Use (the plan is per model and machine; `select_plan` takes ~70 s on SmolLM2-135M):

    from cas_spec.kernels import attention_kernel, linear_kernels, select_plan
    plan = select_plan(model, attention="cas_sdpa").plan
    with attention_kernel(model, "cas_sdpa"), linear_kernels(model, plan):
        ...  # every forward of `model`: drafts, verification, prefill

- `linear.py`: `linear_kernels(model, plan)` swaps each `nn.Linear` to a subclass that picks a
  kernel by row count (`stock`, `xwt`, `wxt`, `onednn`, `native`) following a `LinearPlan`;
  parameters, `state_dict` and tying are untouched; restored in `finally`.
- `native.py`: the kernel that made the difference here, an AVX2/FMA few-row product on the
  weight itself (no copy) that prefetches the next weight panel while computing; compiled with
  the system C++ compiler on first use, `stock` when unavailable.
- `int8.py`: a W8A8 AVX2 kernel (int8 weights per channel, int8 activations per token, fused
  quantization) and `Int8Linear`, the int8 twin the `native_int8` drafting backend swaps in.
- `compiled.py`: what both compiled kernels share (CPU check, compiler, cache folder, atomic build).
- `attention.py`: `cas_sdpa`, SDPA without `repeat_kv`, registered with its mask function.
- `select.py`: `select_plan` times every kernel in the full model and keeps the fastest per n.
- `threads.py`: `threads(k)`.

Measured on the dev box (AMD EPYC Zen 3, AVX2, 2 vCPUs, ~10 GB/s single-core memory bandwidth;
SmolLM2-135M float32, 1 thread, 300 cached tokens; `benchmarks/kernel_costs.py`, medians of 9
interleaved repeats, the ranges of two runs; the host is noisy: the interquartile spread of single
cells is 15-30%, so read the ranges, not the digits; a third run, with another process busy on the
second core, gave 1.11 and 1.25 for native + cas_sdpa at n = 4 and 8). Cost of a forward over n
new tokens relative to a STOCK 1-token step (~80-97 ms):

| n                         | 1         | 2         | 4         | 8         | 12        | 16        |
| ------------------------- | --------- | --------- | --------- | --------- | --------- | --------- |
| stock                     | 1.00      | 1.56-1.70 | 1.82-1.92 | 1.85-2.04 | 2.18-2.21 | 2.33-2.40 |
| stock + cas_sdpa          | 0.98-1.01 | 1.40-1.66 | 1.73-1.87 | 1.83-1.89 | 2.04-2.09 | 2.10-2.17 |
| torch kernels* + cas_sdpa | 0.95-0.98 | 1.05-1.23 | 1.22-1.23 | 1.68-1.71 | 1.81-2.16 | 2.01-2.27 |
| native                    | 0.90      | 0.93-1.10 | 1.10-1.16 | 1.22-1.37 | 1.41-1.56 | 1.66-1.91 |
| native + cas_sdpa         | 0.91      | 0.92-0.98 | 0.98-1.00 | 1.14-1.18 | 1.39-1.44 | 1.62      |

(*) the best plan from the four torch kernels (xwt / wxt / oneDNN by n; 513-1026 MiB of copies).
Relative to its own 1-token step, native + cas_sdpa costs 1.05-1.16 at n = 4 and 1.10-1.30 at
n = 8 over every phase of three runs (medians about 1.10 and 1.24; the high ends while another
process was busy on the second core). Logits within 6.5e-5 (native) / 1.1e-4 (torch kernels)
of stock, argmax identical on 244 positions of 4 chat prompts. Memory: the
native plan needs no copies (0 bytes); xwt and onednn each cost a copy of every linear weight
(513 MiB for SmolLM2-135M). Two threads did not help the native plan (the kernel is
single-threaded), gave the stock kernels 3-20% with the second core idle, and made every forward
8-50 times slower while another process held the second core (see `threads.py`).
"""

from cas_spec.kernels.attention import NAME as ATTENTION_NAME
from cas_spec.kernels.attention import MissingMaskError, attention_kernel, register_attention, sdpa_gqa_attention
from cas_spec.kernels.linear import (
    KERNELS,
    STOCK_PLAN,
    LinearPlan,
    available_kernels,
    cached_copy_bytes,
    extra_memory_bytes,
    kernel_status,
    linear_kernels,
    release_copies,
)
from cas_spec.kernels.select import DEFAULT_NS, Selection, plan_from_timings, select_plan, time_forwards
from cas_spec.kernels.threads import threads

__all__ = [
    "ATTENTION_NAME",
    "DEFAULT_NS",
    "KERNELS",
    "STOCK_PLAN",
    "LinearPlan",
    "MissingMaskError",
    "Selection",
    "attention_kernel",
    "available_kernels",
    "cached_copy_bytes",
    "extra_memory_bytes",
    "kernel_status",
    "linear_kernels",
    "plan_from_timings",
    "register_attention",
    "release_copies",
    "sdpa_gqa_attention",
    "select_plan",
    "threads",
    "time_forwards",
]
