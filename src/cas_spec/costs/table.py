"""`CostTable`: relative cost of one target forward over n new tokens, and its on-disk cache.

cost(n) is the time of a forward over n new tokens on a KV cache of a given length, divided by
the time of a one-token forward on the same cache. The table is measured (`calibrate.py`), never
assumed: on CPUs it is a step function with odd-size penalties, not a line.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from cas_spec.paths import cache_dir, write_text_atomically

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedConfig

FORMAT_VERSION = 1


@dataclass(frozen=True)
class CostTable:
    sizes: tuple[int, ...]  # measured numbers of new tokens, ascending, starting at 1
    context_lengths: tuple[int, ...]  # cached tokens the forwards were measured on, ascending
    relative: tuple[tuple[float, ...], ...]  # [context][size]: seconds(n) / seconds(1) at that context
    step_seconds: tuple[float, ...]  # [context]: seconds of a one-token forward
    key: str = ""  # what it was measured for (see `calibration_key`)
    quick: bool = False  # measured with fewer repeats at first use; `cas-spec calibrate` refines it
    extra: dict = field(default_factory=dict)  # e.g. the kernel plan and raw timings

    def _context_weights(self, context: int) -> list[tuple[int, float]]:
        return context_weights(self.context_lengths, context)

    def _size_cost(self, row: tuple[float, ...], n: int) -> float:
        sizes = self.sizes
        if n <= sizes[0]:
            return row[0]
        if n >= sizes[-1]:  # beyond the table: extrapolate along the last measured slope
            slope = (row[-1] - row[-2]) / (sizes[-1] - sizes[-2]) if len(sizes) > 1 else 0.0
            return row[-1] + max(slope, 0.0) * (n - sizes[-1])
        hi = bisect.bisect_left(sizes, n)
        if sizes[hi] == n:
            return row[hi]
        lo = hi - 1
        t = (n - sizes[lo]) / (sizes[hi] - sizes[lo])
        return row[lo] * (1 - t) + row[hi] * t

    def cost(self, n: int, context: int = 0) -> float:
        """Cost of a forward over n new tokens relative to a one-token forward (n ≥ 1)."""
        return sum(w * self._size_cost(self.relative[i], n) for i, w in self._context_weights(context))

    def seconds(self, n: int, context: int = 0) -> float:
        """Predicted seconds of a forward over n new tokens on `context` cached tokens."""
        step = sum(w * self.step_seconds[i] for i, w in self._context_weights(context))
        return step * self.cost(n, context)

    def to_json(self) -> dict:
        data = asdict(self)
        data["format"] = FORMAT_VERSION
        return data

    @classmethod
    def from_json(cls, data: dict) -> CostTable:
        data = dict(data)
        if data.pop("format", None) != FORMAT_VERSION:
            raise ValueError("cost table of another format version")
        return cls(
            sizes=tuple(data["sizes"]),
            context_lengths=tuple(data["context_lengths"]),
            relative=tuple(tuple(r) for r in data["relative"]),
            step_seconds=tuple(data["step_seconds"]),
            key=data.get("key", ""),
            quick=data.get("quick", False),
            extra=data.get("extra", {}),
        )

    def format(self) -> str:
        """The table as text (what `cas-spec calibrate` shows)."""
        head = "n".rjust(6) + "".join(f"{c:>10}" for c in self.context_lengths)
        lines = ["cost of a forward over n new tokens / cost of one (columns: cached tokens)", head]
        for j, n in enumerate(self.sizes):
            lines.append(f"{n:>6}" + "".join(f"{self.relative[i][j]:>10.2f}" for i in range(len(self.context_lengths))))
        lines.append("1-token step".rjust(6) + "".join(f"{s * 1e3:>8.1f}ms" for s in self.step_seconds))
        return "\n".join(lines)


def context_weights(contexts: tuple[int, ...], context: int) -> list[tuple[int, float]]:
    """(index, weight) pairs interpolating linearly between the measured context lengths
    (ascending) at `context`; the nearest one outside their range."""
    if len(contexts) == 1 or context <= contexts[0]:
        return [(0, 1.0)]
    if context >= contexts[-1]:
        return [(len(contexts) - 1, 1.0)]
    hi = bisect.bisect_left(contexts, context)
    lo = hi - 1
    t = (context - contexts[lo]) / (contexts[hi] - contexts[lo])
    return [(lo, 1.0 - t), (hi, t)]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device | str) -> str:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{_cpu_name()}"


def calibration_key(model: nn.Module, threads: int | None, kernels: str = "stock") -> str:
    """What a table depends on: architecture shapes, dtype, device, machine, threads, kernels.
    Not the weights: two models of the same shape cost the same."""
    import torch

    param = next(model.parameters())
    config = cast("PreTrainedConfig", model.config).to_dict()
    shape = {
        k: config.get(k)
        for k in sorted(config)
        if k
        in (
            "model_type",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "vocab_size",
            "tie_word_embeddings",
            "sliding_window",
            "layer_types",
        )
    }
    description = json.dumps(
        {
            "shape": shape,
            "dtype": str(param.dtype),
            "machine": machine_description(param.device),
            "threads": threads if threads is not None else torch.get_num_threads(),
            "torch": torch.__version__.split("+")[0],
            "kernels": kernels,
            "attn": getattr(model.config, "_attn_implementation", None),
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(description.encode()).hexdigest()[:16]
    return f"{config.get('model_type', 'model')}-{digest}"


def costs_dir() -> Path:
    return cache_dir() / "costs"


def load_cached(key: str) -> CostTable | None:
    path = costs_dir() / f"{key}.json"
    try:
        return CostTable.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(table: CostTable) -> Path:
    return write_text_atomically(costs_dir() / f"{table.key}.json", json.dumps(table.to_json(), indent=1))
