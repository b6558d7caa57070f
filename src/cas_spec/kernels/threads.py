"""`threads(k)`: run a block with `torch.set_num_threads(k)`, restoring the previous count.

Setting the count costs ~0.2 µs; the first parallel op after going from 1 to 2 threads pays a
wake-up (~0.6 ms measured on another box). Measured here (AMD EPYC Zen 3, 2 vCPUs; SmolLM2-135M,
300 cached tokens, `benchmarks/kernel_costs.py --threads-compare`, 2 threads entered around each
forward), in ms per forward:

| configuration                      | n = 1 | n = 4 | n = 8 | n = 16 |
| ---------------------------------- | ----- | ----- | ----- | ------ |
| stock, 1 thread                    | 83    | 159   | 195   | 212    |
| stock, 2 threads, second core idle | 76    | 154   | 155   | 191    |
| native + cas_sdpa, 1 thread        | 79    | 92    | 94    | 140    |
| native + cas_sdpa, 2 threads, idle | 78    | 93    | 98    | 130    |
| torch kernels + cas_sdpa, 2 threads, idle | 83 | 93 | 111 | 149  |
| any of them, 2 threads, second core busy with another process | 735-4600 | | | |

So two threads do not help the native plan (its linear kernel is single-threaded and the rest is
too small to split); they give the stock kernels 3-20% and bring the torch-kernel plan to about
the native plan's 1-thread cost at n ≤ 4, only with the second core idle. When another process
holds the second core, every 2-thread forward becomes 8-50 times slower (OpenMP regions wait for
the descheduled thread), so the default stays at one thread; use `threads(2)` only on a machine
known to be otherwise idle.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def threads(k: int | None) -> Iterator[int]:
    """Within the block torch uses `k` intra-op threads (`None`: leave the count as it is)."""
    previous = torch.get_num_threads()
    if k is not None:
        if k < 1:
            raise ValueError(f"thread count must be at least 1, got {k}")
        if k != previous:
            torch.set_num_threads(k)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
