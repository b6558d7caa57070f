"""The benchmark loop: one model, every method, interleaved per prompt; per-prompt records.

Methodology (Spec-Bench's conventions, DESIGN §8):

- batch 1, one process, one model load shared by every method; CPU threads pinned with
  `torch.set_num_threads` (after the pipelines are built, since a pipeline sets its own);
- each prompt is the first turn of a question, through the model's chat template when it has
  one (`Pipeline.encode`), tokenised once; questions whose prompt plus `max_new_tokens` do not fit
  the model's context are passed over and listed in the results;
- one warm-up generation per method (the first prompt, at most 16 new tokens) before any timing;
- methods interleaved per prompt, the order reversed on every other prompt, so that slow drifts
  of the machine (load, thermals) spread over all methods alike;
- each call timed with `time.perf_counter` around the generation call alone (prefill and decoding;
  no tokenisation); engine methods also record their `GenerationStats`;
- every output compared token for token with the engine's autoregressive output of the same
  prompt; at temperature 0 any difference is a bug (a `mismatch`); above 0 identity is not
  expected and the flag only reports a difference. The `hf:greedy` record's flag is the identity
  of the engine against transformers' own `generate`.

Speedups and tables are computed from the records alone (`cas_spec.bench.report`), so a saved
`results.json` can be redrawn without running anything.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import transformers

import cas_spec
from cas_spec.bench.runners import REFERENCE, EngineRunner, MethodSpec, Output, Runner, build_runners
from cas_spec.data.questions import GroupError, Question, group_questions, load_questions, parse_groups, select
from cas_spec.hub import load_model

FORMAT = "cas-spec-bench/1"
WARMUP_TOKENS = 16


@dataclass(frozen=True)
class BenchSettings:
    questions: str | None  # shipped name or path; None = Spec-Bench's
    groups: str | None  # comma list; None = every group of the file
    prompts_per_group: int
    max_new_tokens: int
    threads: int
    model: str
    methods: Sequence[MethodSpec]
    temperature: float = 0.0
    seed: int = 0


def run_bench(settings: BenchSettings, progress: bool = True) -> dict:
    """Run every method on the selected prompts; returns the results (see `report.save_results`)."""
    started = _loadavg()
    label, questions = load_questions(settings.questions)
    grouped = group_questions(questions)
    names = parse_groups(settings.groups, list(grouped))

    torch.set_num_threads(settings.threads)
    model, tokenizer = load_model(settings.model, "cpu", "float32", progress=progress)
    runners = build_runners(settings.methods, model, tokenizer, settings.threads)
    torch.set_num_threads(settings.threads)
    reference_pipe = cast(EngineRunner, runners[0]).pipe  # autoregressive, always first
    context = reference_pipe.adapter.context_length
    chat = reference_pipe.wants_chat(None)

    encoded: dict[int, list[int]] = {}

    def fits(question: Question) -> bool:
        ids = reference_pipe.encode(question.prompt)
        encoded[question.line] = ids
        return len(ids) + settings.max_new_tokens <= context

    chosen, skipped = select(grouped, names, settings.prompts_per_group, fits)
    if not chosen:
        raise GroupError(
            f"no question of group{'s' if len(names) > 1 else ''} {', '.join(names)} fits the "
            f"model's context of {context} tokens with {settings.max_new_tokens} new tokens"
        )

    warm_ids = encoded[chosen[0].line]
    for runner in runners:
        runner.prepare(warm_ids, min(WARMUP_TOKENS, settings.max_new_tokens), settings.temperature, settings.seed)()

    records = _loop(runners, chosen, encoded, settings, progress)
    groups = [name for name in names if any(q.group == name for q in chosen)]
    return {
        "format": FORMAT,
        "environment": environment(settings.threads, started, _loadavg()),
        "settings": {
            "questions": label,
            "groups": groups,
            "prompts_per_group": settings.prompts_per_group,
            "max_new_tokens": settings.max_new_tokens,
            "threads": settings.threads,
            "model": settings.model,
            "temperature": settings.temperature,
            "seed": settings.seed,
            "chat_template": chat,
            "context_length": context,
            "warmup_tokens": min(WARMUP_TOKENS, settings.max_new_tokens),
        },
        "methods": [
            {"name": s.name, "kind": s.kind, "source": s.source, "hf_kwargs": s.hf_kwargs} for s in settings.methods
        ],
        "skipped": [
            {"group": q.group, "question_id": q.question_id, "prompt_tokens": len(encoded[q.line])} for q in skipped
        ],
        "records": records,
        # bytes each engine method holds after its runs: the model, its KV cache, each level's own
        "memory": {r.name: dataclasses.asdict(r.pipe.memory()) for r in runners if isinstance(r, EngineRunner)},
    }


def _loop(
    runners: Sequence[Runner],
    chosen: Sequence[Question],
    encoded: dict[int, list[int]],
    settings: BenchSettings,
    progress: bool,
) -> list[dict]:
    from tqdm import tqdm

    records: list[dict] = []
    bar = tqdm(
        total=len(chosen) * len(runners),
        desc="bench",
        unit="run",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for index, question in enumerate(chosen):
            ids = encoded[question.line]
            order = list(runners) if index % 2 == 0 else list(reversed(runners))
            seed = settings.seed + index
            outputs: dict[str, tuple[Output, float, int]] = {}
            for position, runner in enumerate(order):
                bar.set_postfix_str(f"{question.group} #{question.question_id} {runner.name}", refresh=False)
                call = runner.prepare(ids, settings.max_new_tokens, settings.temperature, seed)
                start = time.perf_counter()
                output = call()
                seconds = time.perf_counter() - start
                outputs[runner.name] = (output, seconds, position)
                bar.update(1)
            reference = outputs[REFERENCE][0].token_ids
            for runner in runners:
                output, seconds, position = outputs[runner.name]
                records.append(_record(question, runner, len(ids), output, seconds, position, reference))
    finally:
        bar.close()
    return records


def _record(
    question: Question,
    runner: Runner,
    prompt_tokens: int,
    output: Output,
    seconds: float,
    position: int,
    reference: list[int],
) -> dict:
    tokens = output.token_ids
    first_difference = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), None)
    if first_difference is None and len(tokens) != len(reference):
        first_difference = min(len(tokens), len(reference))
    record: dict[str, object] = {
        "group": question.group,
        "category": question.category,
        "question_id": question.question_id,
        "method": runner.name,
        "kind": runner.kind,
        "position": position,
        "prompt_tokens": prompt_tokens,
        "new_tokens": len(tokens),
        "seconds": seconds,
        "mismatch": first_difference is not None,
        "first_difference": first_difference,
        "acceptance_lengths": None,
        "stats": None,
    }
    stats = output.stats
    if stats is not None:
        record["acceptance_lengths"] = list(stats.acceptance_lengths)
        record["stats"] = {
            "target_forwards": stats.target_forwards,
            "mean_acceptance_length": stats.mean_acceptance_length,
            "prefill_seconds": stats.prefill_seconds,
            "draft_seconds": stats.draft_seconds,
            "verify_seconds": stats.verify_seconds,
            "overhead_seconds": stats.overhead_seconds,
            "decode_seconds": stats.decode_seconds,
            "stop_reason": stats.stop_reason,
            "scheduling_seconds": stats.scheduling_seconds,
            "levels": {
                name: {
                    "drafted": lv.drafted,
                    "accepted": lv.accepted,
                    "calls": lv.calls,
                    "proposed": lv.proposed,
                    "seconds": lv.seconds,
                }
                for name, lv in stats.levels.items()
            },
        }
    return record


# -- environment --------------------------------------------------------------------------------


def environment(threads: int, load_start: list[float] | None, load_end: list[float] | None) -> dict:
    """Versions, machine and load: what a reader needs to judge the numbers."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cas_spec": cas_spec.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "load_average_start": load_start,
        "load_average_end": load_end,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: ")) and ":" in line:
                value = line.split(":", 1)[1].strip()
                if value and not value.isdigit():
                    return value
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None
