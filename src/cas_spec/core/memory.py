"""What a pipeline holds in memory beyond the model: each level's own tensors (int8 twins, a
draft head's rows) and the KV cache, counted by storage so shared tensors count once."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn


def _storages(tensors: Iterable[torch.Tensor]) -> dict[int, int]:
    """{storage address: bytes} of `tensors`, each storage once."""
    out: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        out[storage.data_ptr()] = storage.nbytes()
    return out


def storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the storages behind `tensors`, each once."""
    return sum(_storages(tensors).values())


def module_tensors(modules: Iterable[nn.Module | None]) -> list[torch.Tensor]:
    """Every parameter and buffer of `modules` (None skipped)."""
    return [t for m in modules if m is not None for t in (*m.parameters(), *m.buffers())]


def owned_bytes(tensors: Iterable[torch.Tensor], shared_with: nn.Module) -> int:
    """Bytes of the storages behind `tensors` that `shared_with` (the target model) does not hold."""
    shared = _storages(module_tensors([shared_with]))
    return sum(size for address, size in _storages(tensors).items() if address not in shared)


@dataclass(frozen=True)
class MemoryReport:
    """Bytes a pipeline holds: the model's weights, the KV cache's buffers, each level's own."""

    model: int
    kv_cache: int
    levels: dict[str, int]  # level name -> bytes of its own tensors (0: it shares the model's)

    def format(self) -> str:
        mib = 2**20
        extra = ", ".join(f"level {name} +{size / mib:.1f}" for name, size in self.levels.items() if size)
        return f"memory              model {self.model / mib:.1f} MiB, KV cache {self.kv_cache / mib:.1f} MiB" + (
            f", {extra} MiB" if extra else ""
        )


__all__ = ["MemoryReport", "module_tensors", "owned_bytes", "storage_bytes"]
