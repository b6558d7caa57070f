"""Choose a `LinearPlan` for the model and machine at hand from full-model timings.

Micro-benchmarks of one linear layer with cache-hot weights pick the wrong kernel (a verification
forward streams every weight of the model through the caches once); so each candidate kernel is
timed in the whole model: a forward over n new tokens on a `cache_tokens`-token KV cache (the
caller's `new_cache`, as decoding uses it; transformers' `DynamicCache` by default), after which
the cache is rolled back with `cache.crop(-n)`. Configurations are interleaved (every
repeat visits every (n, kernel) pair, in a rotating order) and the median of the repeats is kept,
so a burst of load from another process slows every configuration alike.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch

from cas_spec.kernels.attention import attention_kernel
from cas_spec.kernels.linear import (
    KERNELS,
    LinearPlan,
    available_kernels,
    linear_kernels,
    release_copies,
)
from cas_spec.kernels.threads import threads as thread_count

if TYPE_CHECKING:
    from transformers import PreTrainedConfig, PreTrainedModel

DEFAULT_NS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16)

ConfigFactory = Callable[[], contextlib.AbstractContextManager]
CacheFactory = Callable[[], Any]  # an empty transformers `Cache` for the model


def _dynamic_cache(model: torch.nn.Module) -> Any:
    """transformers' `DynamicCache`, recording the past so that sliding-window layers can crop."""
    from transformers import DynamicCache

    cache = DynamicCache(config=cast("PreTrainedConfig", model.config))
    cache.activate_past_recording()
    return cache


def time_forwards(
    model: torch.nn.Module,
    configs: Mapping[str, ConfigFactory],
    ns: Sequence[int] = DEFAULT_NS,
    *,
    cache_tokens: int = 300,
    repeats: int = 7,
    threads: int | None = 1,
    seed: int = 0,
    progress: bool = True,
    desc: str = "timing forwards",
    new_cache: CacheFactory | None = None,
) -> dict[int, dict[str, list[float]]]:
    """Seconds of one forward over n new tokens on a `cache_tokens`-token cache, per n and config.

    `configs` maps a name to a factory of a context manager (entered around each timed forward,
    outside the timed region), e.g. `lambda: linear_kernels(model, plan)`. `new_cache` makes the
    cache (default: a `DynamicCache`; a pipeline passes its adapter's `new_cache`). Returns
    `{n: {name: [seconds of each repeat]}}`; one untimed warm-up pass precedes the repeats.
    """
    from tqdm import tqdm

    device = next(model.parameters()).device
    embeddings = cast(torch.nn.Embedding, cast("PreTrainedModel", model).get_input_embeddings())
    vocab = embeddings.num_embeddings
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab, (1, cache_tokens), generator=gen).to(device)
    new = torch.randint(0, vocab, (1, max(ns)), generator=gen).to(device)
    names = list(configs)
    times: dict[int, dict[str, list[float]]] = {n: {name: [] for name in names} for n in ns}
    with thread_count(threads), torch.inference_mode():
        cache = new_cache() if new_cache is not None else _dynamic_cache(model)
        model(input_ids=prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)

        def one(name: str, n: int) -> float:
            with configs[name]():
                t0 = time.perf_counter()
                model(input_ids=new[:, :n], past_key_values=cache, use_cache=True)
                elapsed = time.perf_counter() - t0
            cache.crop(-n)
            return elapsed

        with tqdm(
            total=(repeats + 1) * len(ns) * len(names), desc=desc, file=sys.stderr, disable=not progress, leave=False
        ) as bar:
            for r in range(repeats + 1):
                for i, n in enumerate(ns):
                    shift = (r + i) % len(names)
                    for name in names[shift:] + names[:shift]:
                        elapsed = one(name, n)
                        if r > 0:  # the first pass warms up (weight copies, allocator, caches)
                            times[n][name].append(elapsed)
                        bar.update()
    return times


def medians(times: Mapping[int, Mapping[str, list[float]]]) -> dict[int, dict[str, float]]:
    return {n: {name: statistics.median(v) for name, v in row.items()} for n, row in times.items()}


@dataclass(frozen=True)
class Selection:
    """The chosen plan and the timings it came from (median seconds per n and kernel)."""

    plan: LinearPlan
    timings: dict[int, dict[str, float]]
    threads: int | None
    cache_tokens: int
    repeats: int

    def relative(self, base: tuple[int, str] = (1, "stock")) -> dict[int, dict[str, float]]:
        """Timings divided by the timing of `base` (n, kernel): by default a stock 1-token step."""
        ref = self.timings[base[0]][base[1]]
        return {n: {k: t / ref for k, t in row.items()} for n, row in self.timings.items()}

    def format(self) -> str:
        kernels = list(next(iter(self.timings.values())))
        base = (min(self.timings), "stock") if "stock" in kernels else (min(self.timings), kernels[0])
        rel = self.relative(base)
        lines = [
            f"forward over n new tokens on a {self.cache_tokens}-token cache, {self.threads} thread(s), "
            f"median of {self.repeats}; ms (relative to a {base[1]} {base[0]}-token forward)",
            "  n  " + "".join(f"{k:>17}" for k in kernels) + "   chosen",
        ]
        for n, row in self.timings.items():
            cells = "".join(f"{row[k] * 1e3:>9.2f} ({rel[n][k]:.2f})" for k in kernels)
            lines.append(f"{n:>3}  {cells}   {self.plan.kernel_for(n)}")
        lines.append(f"plan: {self.plan.describe()}")
        return "\n".join(lines)


_MEMORY_ORDER = {"stock": 0, "wxt": 0, "native": 0, "xwt": 1, "onednn": 1}  # weight copies each kernel needs


def plan_from_timings(
    timings: Mapping[int, Mapping[str, float]],
    kernels: Iterable[str] | None = None,
    *,
    tolerance: float = 0.05,
    above: str | None = "stock",
) -> LinearPlan:
    """The plan `select_plan` derives from a timing table (`{n: {kernel: seconds}}`), restricted
    to `kernels` (default: every kernel in the table); see `select_plan` for the arguments."""
    choice = {}
    for n, row in timings.items():
        row = {k: t for k, t in row.items() if kernels is None or k in kernels}
        if not row:
            raise ValueError(f"no timings for n = {n} among kernels {kernels}")
        best = min(row.values())
        within = [k for k, t in row.items() if t <= best * (1 + tolerance)]
        choice[n] = min(within, key=lambda k: (_MEMORY_ORDER.get(k, 1), row[k]))
    return LinearPlan.from_mapping(choice, default=above)


def select_plan(
    model: torch.nn.Module,
    ns: Iterable[int] = DEFAULT_NS,
    *,
    kernels: Iterable[str] | None = None,
    cache_tokens: int = 300,
    repeats: int = 7,
    threads: int | None = 1,
    attention: str | None = None,
    tolerance: float = 0.05,
    above: str | None = "stock",
    seed: int = 0,
    progress: bool = True,
    release: bool = True,
    new_cache: CacheFactory | None = None,
) -> Selection:
    """Time every kernel in the full model for each n and return the plan of the fastest per n.

    - `kernels`: candidates (default: `available_kernels()`);
    - `attention`: an attention implementation to time under (e.g. "cas_sdpa", as it will run);
    - `tolerance`: prefer a kernel that needs no weight copy (stock, wxt, native) when its median
      is within this fraction of the fastest (default 5%: smaller differences are noise on a
      shared host, and a copy costs a model's worth of memory; 0 picks the fastest outright);
    - `above`: the kernel for rows above the largest n (default `stock`: prefill-sized products
      were not measured, and MKL does them well on every thread; None: the largest n's kernel);
    - `release`: free the weight copies the chosen plan does not use;
    - `new_cache`: makes the KV cache the forwards run on (default: transformers' `DynamicCache`).

    Takes (repeats + 1) × len(ns) × len(kernels) forwards: about 70 s on SmolLM2-135M at 1 thread
    with the default 10 sizes, 5 kernels and 7 repeats.
    """
    ns = sorted({int(n) for n in ns})
    if not ns or ns[0] < 1:
        raise ValueError(f"ns must be positive token counts, got {ns}")
    usable = available_kernels()
    candidates = [k for k in (kernels or usable) if k in usable]
    unknown = [k for k in (kernels or ()) if k not in KERNELS]
    if unknown:
        raise ValueError(f"unknown kernels {unknown}; available: {', '.join(KERNELS)}")
    if not candidates:
        candidates = ["stock"]
    plans = {k: LinearPlan.uniform(k) for k in candidates}
    configs = {k: (lambda plan=plan: linear_kernels(model, plan)) for k, plan in plans.items()}
    with attention_kernel(model, attention):
        times = time_forwards(
            model,
            configs,
            ns,
            cache_tokens=cache_tokens,
            repeats=repeats,
            threads=threads,
            seed=seed,
            progress=progress,
            desc="selecting linear kernels",
            new_cache=new_cache,
        )
    timings = medians(times)
    plan = plan_from_timings(timings, candidates, tolerance=tolerance, above=above)
    if release:
        release_copies(model, keep=plan)
    return Selection(plan=plan, timings=timings, threads=threads, cache_tokens=cache_tokens, repeats=repeats)
