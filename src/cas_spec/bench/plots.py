"""PNG plots of a benchmark's results (matplotlib, the optional extra `plot`), drawn from the records.

- `speedup.png`: speedup per group per method (grouped bars), relative to the engine's
  autoregressive decoding; the dashed line at 1.0 is autoregressive itself.
- `time_split.png`: per engine method, milliseconds per new token over all prompts, stacked as
  draft / verify (target forwards) / overhead of the engine's decoding time (prefill excluded).
- `acceptance.png`: tokens committed by each target forward along one prompt, one panel per
  engine method. The prompt is the median one (by mean acceptance length) of the first
  speculative engine method, so the picture is typical rather than the best case.

matplotlib is imported lazily and drawn through `matplotlib.figure.Figure` (no pyplot, no GUI
backend, no global state).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cas_spec.bench.report import OVERALL, groups_of, methods_of, speedup, summarize
from cas_spec.bench.runners import REFERENCE


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


MISSING = "plots skipped: matplotlib is not installed (pip install 'cas-spec[plot]')"


def _figure(**kwargs: Any):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotsUnavailable(MISSING) from None
    return Figure(**kwargs)


def plot_all(results: dict, out: Path) -> list[Path]:
    """Draw every plot into `out`; returns the files written. Raises `PlotsUnavailable`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_speedup(results, out / "speedup.png"), plot_time_split(results, out / "time_split.png")]
    acceptance = plot_acceptance(results, out / "acceptance.png")
    if acceptance is not None:
        paths.append(acceptance)
    return paths


def plot_speedup(results: dict, path: Path) -> Path:
    table = summarize(results)
    groups = [*groups_of(results), OVERALL]
    methods = [name for name, _ in methods_of(results) if name != REFERENCE] or [REFERENCE]
    fig = _figure(figsize=(min(12.0, max(6.0, 2.0 + 0.35 * len(groups) * len(methods))), 4.2), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(methods))
    for i, name in enumerate(methods):
        values = [speedup(table[g][name], table[g][REFERENCE]) or 0.0 for g in groups]
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(groups))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set_ylabel("speedup vs autoregressive (×)")
    ax.set_title(_title(results, "Speedup per group"))
    fig.legend(loc="outside right upper", fontsize=8)
    fig.savefig(path, dpi=120)
    return path


def plot_time_split(results: dict, path: Path) -> Path:
    rows = summarize(results)[OVERALL]
    engine = [row for row in rows.values() if row.kind == "engine" and row.decode]
    fig = _figure(figsize=(max(6.0, 1.3 * len(engine) + 2), 4.2), layout="constrained")
    ax = fig.add_subplot()
    names = [row.method for row in engine]
    bottom = [0.0] * len(engine)
    for part, color in (("draft", "tab:orange"), ("verify", "tab:blue"), ("overhead", "tab:gray")):
        values = [1000 * getattr(row, part) / max(row.new_tokens, 1) for row in engine]
        ax.bar(names, values, 0.6, bottom=bottom, label=part, color=color)
        bottom = [b + v for b, v in zip(bottom, values)]
    for x, (row, height) in enumerate(zip(engine, bottom)):
        split = row.split()
        if split:
            ax.annotate(" / ".join(f"{s:.0%}" for s in split), (x, height), ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("ms per new token (engine decoding)")
    ax.set_title(_title(results, "Time split: draft / verify / overhead"))
    fig.legend(loc="outside right upper", fontsize=8)
    fig.savefig(path, dpi=120)
    return path


def pick_prompt(results: dict) -> tuple[str, object] | None:
    """(group, question_id) of the median prompt by mean acceptance of the first speculative engine method."""
    engine = [name for name, kind in methods_of(results) if kind == "engine"]
    if not engine:
        return None
    probe = next((n for n in engine if n != REFERENCE), engine[0])
    recs = [r for r in results["records"] if r["method"] == probe and r.get("acceptance_lengths")]
    if not recs:
        return None
    recs.sort(key=lambda r: (sum(r["acceptance_lengths"]) / len(r["acceptance_lengths"]), str(r["question_id"])))
    median = recs[(len(recs) - 1) // 2]
    return median["group"], median["question_id"]


def plot_acceptance(results: dict, path: Path) -> Path | None:
    picked = pick_prompt(results)
    if picked is None:
        return None
    group, qid = picked
    engine = [name for name, kind in methods_of(results) if kind == "engine"]
    recs = {
        r["method"]: r
        for r in results["records"]
        if r["group"] == group and r["question_id"] == qid and r["method"] in engine
    }
    fig = _figure(figsize=(7.0, 1.0 + 1.4 * len(engine)), layout="constrained")
    axes = fig.subplots(len(engine), 1, sharex=True, squeeze=False)[:, 0]
    top = max(max(r["acceptance_lengths"] or [1]) for r in recs.values())
    for ax, name in zip(axes, engine):
        lengths = recs[name]["acceptance_lengths"] or []
        steps = range(1, len(lengths) + 1)
        ax.bar(steps, lengths, width=0.9, color="tab:blue" if name != REFERENCE else "tab:gray")
        mean = sum(lengths) / len(lengths) if lengths else 0.0
        ax.set_ylabel("tokens", fontsize=8)
        ax.set_ylim(0, top + 0.5)
        ax.set_title(f"{name}: {len(lengths)} target forwards, mean {mean:.2f} tokens each", fontsize=9, loc="left")
    axes[-1].set_xlabel("decoding step (target forward)")
    fig.suptitle(_title(results, f"Acceptance length along {group} #{qid} (median prompt)"), fontsize=10)
    fig.savefig(path, dpi=120)
    return path


def _title(results: dict, text: str) -> str:
    s = results["settings"]
    threads = f"{s['threads']} thread{'s' if s['threads'] != 1 else ''}"
    return f"{text}\n{Path(s['model']).name}, ≤{s['max_new_tokens']} new tokens, {threads}"
