"""Accumulating per-step statistics into `GenerationStats`."""

from __future__ import annotations

from collections.abc import Sequence

from cas_spec.core.levels import Level
from cas_spec.core.types import GenerationStats, LevelStats, StepTimings, TokenTree, Verdict


class StatsRecorder:
    def __init__(self, levels: Sequence[Level]):
        self.levels = list(levels)
        self.drafted = {level.name: 0 for level in self.levels}
        self.accepted = {level.name: 0 for level in self.levels}
        self.acceptance_lengths: list[int] = []
        self.draft = self.verify = self.total = 0.0

    def record_step(self, tree: TokenTree, verdict: Verdict, timings: StepTimings, committed: int) -> None:
        for name in tree.levels[1:]:
            if name is not None:
                self.drafted[name] = self.drafted.get(name, 0) + 1
        for node in verdict.accepted_nodes:
            name = tree.levels[node]
            if name is not None:
                self.accepted[name] = self.accepted.get(name, 0) + 1
        self.acceptance_lengths.append(committed)
        self.draft += timings.draft
        self.verify += timings.verify
        self.total += timings.total

    def finish(
        self, *, prompt_tokens: int, new_tokens: int, prefill_seconds: float, decode_seconds: float, stop_reason: str
    ) -> GenerationStats:
        levels = {
            level.name: LevelStats(
                self.drafted.get(level.name, 0),
                self.accepted.get(level.name, 0),
                level.calls,
                level.proposed,
                level.seconds,
                level.adapt_seconds,
            )
            for level in self.levels
        }
        adapt = sum(level.adapt_seconds for level in self.levels)
        return GenerationStats(
            prompt_tokens=prompt_tokens,
            new_tokens=new_tokens,
            target_forwards=len(self.acceptance_lengths),
            levels=levels,
            prefill_seconds=prefill_seconds,
            draft_seconds=self.draft,
            verify_seconds=self.verify,
            overhead_seconds=max(decode_seconds - self.draft - self.verify - adapt, 0.0),
            decode_seconds=decode_seconds,
            stop_reason=stop_reason,
            acceptance_lengths=tuple(self.acceptance_lengths),
            scheduling_seconds=max(self.draft - sum(level.seconds for level in self.levels), 0.0),
            adapt_seconds=adapt,
        )


def format_stats(stats: GenerationStats) -> str:
    """Human-readable statistics (the CLI prints this on stderr)."""
    lines = [
        f"new tokens          {stats.new_tokens} (prompt {stats.prompt_tokens}, stop: {stats.stop_reason})",
        f"target forwards     {stats.target_forwards}",
        f"mean acceptance     {stats.mean_acceptance_length:.2f} tokens per target forward",
        f"speed               {stats.tokens_per_second:.1f} tokens/s",
        f"time                prefill {stats.prefill_seconds:.3f}s, decode {stats.decode_seconds:.3f}s "
        f"(draft {stats.draft_seconds:.3f}s, verify {stats.verify_seconds:.3f}s, "
        f"overhead {stats.overhead_seconds:.3f}s; scheduling {stats.scheduling_seconds:.3f}s of the draft time"
        + (f"; adaptation {stats.adapt_seconds:.3f}s" if stats.adapt_seconds else "")
        + ")",
    ]
    for name, level in stats.levels.items():
        rate = level.accepted / level.drafted if level.drafted else 0.0
        lines.append(
            f"level {name:<13} drafted {level.drafted}, accepted {level.accepted} ({rate:.0%}), calls {level.calls}"
        )
    return "\n".join(lines)
