"""Results: `results.json` and the Markdown table, both computed from the per-prompt records alone.

Per group and overall, for each method:

- speedup = (total new tokens / total seconds) of the method ÷ the same of the engine's
  `autoregressive` run on the same prompts (a ratio of totals, as Spec-Bench's per-method
  tokens/s; Spec-Bench averages tokens/s over questions first, which weighs short answers more);
  `hf:*` methods are also given relative to `hf:greedy`, transformers' own plain `generate`;
- mean acceptance length = new tokens / target forwards over the group, bonus token included
  (1.00 = autoregressive); transformers' methods do not report it (`–`);
- tokens/s over the whole call (prefill included), mismatches against the autoregressive output;
- for engine methods the time split: draft / verify (target forwards) / overhead as a share of
  the engine's own decoding time (prefill excluded).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from cas_spec.bench.run import FORMAT
from cas_spec.bench.runners import HF_GREEDY, REFERENCE
from cas_spec.core.errors import UserError

RESULTS = "results.json"
OVERALL = "overall"
DASH = "–"


class ResultsError(UserError):
    """A results folder without a readable results.json of this format."""


@dataclass(frozen=True)
class Row:
    group: str
    method: str
    kind: str
    prompts: int
    new_tokens: int
    seconds: float
    target_forwards: int | None
    draft: float | None  # seconds, engine methods only
    verify: float | None
    overhead: float | None
    decode: float | None
    mismatches: int
    scheduling: float | None = None  # seconds of the scheduler's own work (results since this field)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean_acceptance_length(self) -> float | None:
        return self.new_tokens / self.target_forwards if self.target_forwards else None

    def split(self) -> tuple[float, float, float] | None:
        """(draft, verify, overhead) as fractions of the engine's decoding time."""
        if not self.decode:
            return None
        assert self.draft is not None and self.verify is not None and self.overhead is not None  # set with decode
        return self.draft / self.decode, self.verify / self.decode, self.overhead / self.decode

    def scheduling_per_step(self) -> tuple[float, float] | None:
        """(milliseconds of scheduling per step, its share of the decoding time)."""
        if self.scheduling is None or not self.target_forwards or not self.decode:
            return None
        return 1e3 * self.scheduling / self.target_forwards, self.scheduling / self.decode


def save_results(results: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_results(folder: Path) -> dict:
    path = folder / RESULTS if folder.is_dir() else folder
    if not path.is_file():
        raise ResultsError(f"no {RESULTS} in '{folder}'")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultsError(f"cannot read '{path}': {exc}") from None
    if not isinstance(results, dict) or results.get("format") != FORMAT or not results.get("records"):
        raise ResultsError(f"'{path}' is not a cas-spec bench result ({FORMAT}) with records")
    return results


def methods_of(results: dict) -> list[tuple[str, str]]:
    return [(m["name"], m["kind"]) for m in results["methods"]]


def groups_of(results: dict) -> list[str]:
    return list(results["settings"]["groups"])


def summarize(results: dict) -> dict[str, dict[str, Row]]:
    """{group or 'overall': {method: Row}}."""
    table: dict[str, dict[str, Row]] = {}
    for group in [*groups_of(results), OVERALL]:
        table[group] = {}
        for name, kind in methods_of(results):
            recs = [r for r in results["records"] if r["method"] == name and group in (OVERALL, r["group"])]
            table[group][name] = _row(group, name, kind, recs)
    return table


def _row(group: str, name: str, kind: str, recs: Sequence[dict]) -> Row:
    stats = [r["stats"] for r in recs if r.get("stats")]
    engine = kind == "engine" and len(stats) == len(recs) and recs

    def total(key: str) -> float | None:
        return sum(s[key] for s in stats) if engine else None

    scheduling = total("scheduling_seconds") if engine and all("scheduling_seconds" in s for s in stats) else None

    return Row(
        group=group,
        method=name,
        kind=kind,
        prompts=len(recs),
        new_tokens=sum(r["new_tokens"] for r in recs),
        seconds=sum(r["seconds"] for r in recs),
        target_forwards=cast("int | None", total("target_forwards")),  # a sum of counts
        draft=total("draft_seconds"),
        verify=total("verify_seconds"),
        overhead=total("overhead_seconds"),
        decode=total("decode_seconds"),
        mismatches=sum(bool(r["mismatch"]) for r in recs),
        scheduling=scheduling,
    )


def speedup(row: Row, base: Row | None) -> float | None:
    if base is None or not base.tokens_per_second or not row.seconds:
        return None
    return row.tokens_per_second / base.tokens_per_second


def render(results: dict) -> str:
    """The Markdown report: a heading, the table, identity against transformers, the environment."""
    s, env = results["settings"], results["environment"]
    table = summarize(results)
    greedy = s["temperature"] == 0
    names = [name for name, _ in methods_of(results)]
    has_hf = HF_GREEDY in names
    sampling = "greedy" if greedy else f"temperature {s['temperature']:g}, seed {s['seed']}"
    prompts = len({(r["group"], r["question_id"]) for r in results["records"]})
    lines = [
        f"## cas-spec bench: {s['model']}, {prompts} prompts in {len(s['groups'])} groups "
        f"(≤{s['prompts_per_group']} each), ≤{s['max_new_tokens']} new tokens, {sampling}, "
        f"{s['threads']} thread{'s' if s['threads'] != 1 else ''}",
        "",
        "| group | method | speedup | vs hf:greedy | mean acceptance | tokens/s | mismatches "
        "| draft | verify | overhead | scheduling per step |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for group, rows in table.items():
        for name, row in rows.items():
            up = speedup(row, rows[REFERENCE])
            hf_up = speedup(row, rows.get(HF_GREEDY)) if row.kind == "hf" else None
            accept = row.mean_acceptance_length
            split = row.split()
            cells = [
                f"**{group}**" if group == OVERALL else group,
                name,
                f"{up:.2f}×" if up is not None else DASH,
                f"{hf_up:.2f}×" if hf_up is not None else DASH,
                f"{accept:.2f}" if accept is not None else DASH,
                f"{row.tokens_per_second:.1f}",
                f"{row.mismatches}/{row.prompts}" if name != REFERENCE else DASH,
                *([f"{x:.0%}" for x in split] if split else [DASH] * 3),
                _scheduling(row),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines.extend(level_table(results))
    lines.append("")
    lines.append(
        "speedup: tokens/s relative to `autoregressive` (the engine's plain decoding) on the same prompts; "
        "draft/verify/overhead: share of the engine's decoding time; scheduling: the scheduler's "
        "own work per step (drafting time outside the levels' draft calls), and its share."
    )
    if not greedy:
        lines.append(
            f"temperature {s['temperature']:g}: sampled outputs are not expected to be identical; "
            "mismatches only count outputs that differ from the engine's autoregressive one."
        )
    lines.append(identity_line(results, has_hf, greedy))
    if results.get("skipped"):
        by_group: dict[str, int] = {}
        for q in results["skipped"]:
            by_group[q["group"]] = by_group.get(q["group"], 0) + 1
        lines.append(
            "passed over (prompt + new tokens exceed the context of "
            f"{s['context_length']}): " + ", ".join(f"{g} {n}" for g, n in by_group.items())
        )
    if results.get("memory"):
        lines.append("memory (MiB): " + "; ".join(_memory(name, m) for name, m in results["memory"].items()))
    load = f"load average (1/5/15 min) {_load(env.get('load_average_start'))} → {_load(env.get('load_average_end'))}"
    lines.append(
        f"environment: {env['cpu']} ({env['cpu_count']} CPUs), torch {env['torch']}, "
        f"transformers {env['transformers']}, cas-spec {env['cas_spec']}, python {env['python']}, "
        f"{load}, {env['date']}"
    )
    return "\n".join(lines) + "\n"


def _memory(name: str, memory: dict) -> str:
    mib = 2**20
    levels = "".join(f", {level} +{size / mib:.1f}" for level, size in memory["levels"].items() if size)
    return f"{name}: model {memory['model'] / mib:.1f}, KV cache {memory['kv_cache'] / mib:.1f}{levels}"


def level_table(results: dict) -> list[str]:
    """Per level of each engine method, over every prompt: acceptance rate α (accepted / drafted
    tokens put into trees) and cost c of one proposed token relative to one target forward."""
    rows = []
    for name, kind in methods_of(results):
        stats = [r["stats"] for r in results["records"] if r["method"] == name and r.get("stats")]
        if kind != "engine" or not stats:
            continue
        forwards = sum(s["target_forwards"] for s in stats)
        verify = sum(s["verify_seconds"] for s in stats)
        for level in stats[0].get("levels", {}):
            totals = {
                key: sum(s["levels"][level].get(key, 0) for s in stats)
                for key in ("drafted", "accepted", "proposed", "seconds")
            }
            alpha = totals["accepted"] / totals["drafted"] if totals["drafted"] else None
            forward_seconds = verify / forwards if forwards else None
            cost = (
                totals["seconds"] / totals["proposed"] / forward_seconds
                if totals["proposed"] and forward_seconds
                else None
            )
            cells = [name, level, _fmt(alpha), _fmt(cost), str(totals["proposed"]), str(totals["drafted"])]
            rows.append("| " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "",
        "| method | level | α (accepted / drafted) | c (per proposed token, target forward = 1) | proposed | drafted |",
        "|---|---|--:|--:|--:|--:|",
        *rows,
    ]


def _scheduling(row: Row) -> str:
    per_step = row.scheduling_per_step()
    return DASH if per_step is None else f"{per_step[0]:.2f} ms ({per_step[1]:.1%})"


def _fmt(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}"


def _load(values: Sequence[float] | None) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "unknown"


def identity_line(results: dict, has_hf: bool, greedy: bool) -> str:
    """The engine's autoregressive output against transformers' own `generate`, prompt by prompt."""
    if not has_hf:
        return "identity vs transformers: not measured (no hf: method ran)"
    recs = [r for r in results["records"] if r["method"] == HF_GREEDY]
    differ = [r for r in recs if r["mismatch"]]
    what = "greedy" if greedy else "sampled"
    if not differ:
        return (
            f"identity vs transformers: the engine's autoregressive output equals {what} `generate` "
            f"token for token on {len(recs)}/{len(recs)} prompts"
        )
    where = ", ".join(f"{r['group']} #{r['question_id']} (from token {r['first_difference']})" for r in differ[:8])
    more = f" and {len(differ) - 8} more" if len(differ) > 8 else ""
    return (
        f"identity vs transformers: the engine's autoregressive output differs from {what} `generate` on "
        f"{len(differ)}/{len(recs)} prompts: {where}{more}"
    )
