"""`threads(k)`: run a block with `torch.set_num_threads(k)`, restoring the previous count.

Setting the count costs ~0.2 µs; the first parallel op after going from 1 to 2 threads pays a
wake-up (~0.6 ms measured). Measured on the 2-core dev box (SmolLM2-135M, 300 cached tokens,
fast linear kernels + `cas_sdpa`): see the `cas_spec.kernels` module docstring. Two threads only
help when the second core is idle; with a competing process they can make a forward several times
slower, so the library default stays at one thread.
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
