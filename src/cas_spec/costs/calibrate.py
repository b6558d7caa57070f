"""Measuring a `CostTable` on the model and machine at hand.

For each context length, a KV cache of that many random tokens is prefilled once; then forwards
over n new tokens run in a shuffled order per repeat (interleaved, so drift in machine load hits
every size alike), each rolled back afterwards. The median of the repeats is robust to the
outliers of a shared machine.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from cas_spec.costs.table import CostTable

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

    from cas_spec.core.adapter import ModelAdapter
    from cas_spec.core.kvcache import KVCache
    from cas_spec.core.target import Target

FULL_SIZES = tuple(range(1, 17)) + (20, 24, 32)
QUICK_SIZES = tuple(range(1, 13)) + (16,)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure(
    target: Target,
    sizes: Sequence[int] = FULL_SIZES,
    context_lengths: Sequence[int] = (64, 300, 1000),
    repeats: int = 7,
    key: str = "",
    quick: bool = False,
    progress: bool = True,
    seed: int = 0,
) -> CostTable:
    """Measure relative forward costs with the model as it is configured now (kernels included)."""
    from tqdm import tqdm

    model, adapter = target.model, target.adapter
    device = target.device
    vocab: int = cast("PreTrainedConfig", model.config).vocab_size
    limit = adapter.context_length
    contexts = tuple(sorted({c for c in context_lengths if c + max(sizes) < limit})) or (max(1, limit // 4),)
    rng = random.Random(seed)
    relative, step_seconds = [], []
    bar = tqdm(
        total=len(contexts) * repeats * len(sizes),
        desc="calibrating forward costs",
        unit="fwd",
        disable=not progress,
        file=sys.stderr,
        leave=False,
    )
    try:
        for context in contexts:
            cache = adapter.new_cache()
            prompt = torch.randint(0, vocab, (1, context), generator=torch.Generator().manual_seed(seed))
            model(input_ids=prompt.to(device), past_key_values=cache, use_cache=True, logits_to_keep=1)
            tokens = torch.randint(0, vocab, (1, max(sizes)), generator=torch.Generator().manual_seed(seed + 1))
            tokens = tokens.to(device)
            for n in sizes[:3]:  # warm-up: first calls of a shape pay allocation and kernel set-up
                _forward(model, adapter, cache, tokens[:, :n], context)
            timings: dict[int, list[float]] = {n: [] for n in sizes}
            for _ in range(repeats):
                order = list(sizes)
                rng.shuffle(order)
                for n in order:
                    timings[n].append(_forward(model, adapter, cache, tokens[:, :n], context))
                    bar.update()
            medians = [statistics.median(timings[n]) for n in sizes]
            step_seconds.append(medians[0])
            relative.append(tuple(m / medians[0] for m in medians))
    finally:
        bar.close()
    return CostTable(
        sizes=tuple(sizes),
        context_lengths=contexts,
        relative=tuple(relative),
        step_seconds=tuple(step_seconds),
        key=key,
        quick=quick,
    )


def _forward(model: nn.Module, adapter: ModelAdapter, cache: KVCache, ids: torch.Tensor, context: int) -> float:
    n = ids.shape[1]
    positions = torch.arange(context, context + n, device=ids.device)[None]
    _sync(ids.device)
    start = time.perf_counter()
    model(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True)
    _sync(ids.device)
    elapsed = time.perf_counter() - start
    adapter.rollback(cache, context)
    return elapsed
