"""On-the-fly search for a layer-sparsity skip set, and its cache on disk.

SWIFT-style (`notes/papers.md` §1.2): a candidate skip set is scored by its *matchness*, the
fraction of the last `window` committed positions where the skipping model's argmax equals the
target's, computed in one parallel forward pass over tokens already verified (the pass reads the
committed KV through a view and writes into a throw-away cache). SWIFT compares with the tokens
that followed; we compare with the target's argmax (the same thing for greedily generated text,
and what drafting is judged on), which makes a set that changes nothing score exactly 1. Candidates come from random search (`explore` of the time) and from a
cheap local optimiser otherwise: swap one skipped sublayer of the best set for a kept one. The
search stops at `target_score`, after `budget` scored candidates or after `patience` candidates
without improvement. Scores of different candidates are taken on different windows (the window
moves as text is generated), as in SWIFT; that noise is the price of a search that costs one
forward per step.

Found sets are saved per model (a fingerprint of its configuration and a sample of its weights,
so a different or changed model never reuses them) and per sparsity under
`$CAS_SPEC_CACHE/skip_sets/`, so the next run starts from the best set found so far.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from filelock import FileLock

from cas_spec.paths import cache_dir, write_text_atomically
from cas_spec.strategies.dsia.variants import Sublayer

if TYPE_CHECKING:
    from transformers import PreTrainedConfig


def model_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the model's configuration and of a strided sample of every parameter."""
    config = cast("PreTrainedConfig", model.config)
    digest = hashlib.sha256(config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.detach().reshape(-1)
            step = max(1, flat.numel() // 64)
            digest.update(name.encode())
            digest.update(str(tuple(param.shape)).encode())
            digest.update(flat[::step][:64].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:20]


def cache_file(fingerprint: str) -> Path:
    return cache_dir() / "skip_sets" / f"{fingerprint}.json"


def load_cached(fingerprint: str, sparsity: float) -> dict | None:
    """The cached entry {skip, score, evaluations, done} for this model and sparsity, or None."""
    path = cache_file(fingerprint)
    try:
        entry = json.loads(path.read_text()).get(f"{sparsity:.4f}")
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("skip"), list):
        return None
    return entry


def save_cached(fingerprint: str, sparsity: float, entry: dict) -> None:
    path = cache_file(fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[f"{sparsity:.4f}"] = entry
        write_text_atomically(path, json.dumps(data, indent=1))


@dataclass
class SkipSearch:
    """Random search plus a swap-one local optimiser over skip sets of a fixed size."""

    candidates: tuple[Sublayer, ...]  # sublayers that may be skipped
    count: int  # sublayers skipped by every candidate
    budget: int = 200
    target_score: float = 0.9
    patience: int = 60
    explore: float = 0.2
    seed: int = 0
    best: frozenset[Sublayer] = frozenset()
    best_score: float = -1.0  # -1: `best` not scored yet
    evaluations: int = 0
    since_improvement: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.count = min(self.count, len(self.candidates))
        if len(self.best) != self.count or not self.best <= set(self.candidates):
            self.best = self.random_set()

    @property
    def done(self) -> bool:
        return (
            self.evaluations >= self.budget
            or self.best_score >= self.target_score
            or self.since_improvement >= self.patience
        )

    def random_set(self) -> frozenset[Sublayer]:
        return frozenset(self.rng.sample(self.candidates, self.count))

    def propose(self) -> frozenset[Sublayer]:
        """The next candidate to score (the starting set first)."""
        if self.best_score < 0:
            return self.best
        if self.rng.random() < self.explore:
            return self.random_set()
        kept = [s for s in self.candidates if s not in self.best]
        if not kept or not self.best:
            return self.random_set()
        out, into = self.rng.choice(sorted(self.best)), self.rng.choice(kept)
        return (self.best - {out}) | {into}

    def report(self, candidate: frozenset[Sublayer], score: float) -> bool:
        """Record a scored candidate; True when it became the best."""
        self.evaluations += 1
        if score > self.best_score:
            self.best, self.best_score, self.since_improvement = candidate, score, 0
            return True
        self.since_improvement += 1
        return False

    def to_entry(self) -> dict:
        return {
            "skip": sorted(str(s) for s in self.best),
            "score": round(self.best_score, 4),
            "evaluations": self.evaluations,
            "done": self.done,
        }


__all__ = ["SkipSearch", "cache_file", "load_cached", "model_fingerprint", "save_cached"]
