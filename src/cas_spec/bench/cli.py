"""`cas-spec bench`: the Spec-Bench harness on the command line.

`add_parser(subparsers)` adds the `bench` subcommand to the `cas-spec` parser; `run(args)` runs
it and returns the exit status. Mistakes of the user's making raise `UserError` subclasses.
The Markdown table goes to stdout; the progress bar and messages to stderr; `results.json` and
the plots to `--out`. See `cas_spec.bench.run` for the methodology.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Sequence
from pathlib import Path

from cas_spec.bench.plots import PlotsUnavailable, plot_all
from cas_spec.bench.report import load_results, render, save_results
from cas_spec.bench.run import BenchSettings, run_bench
from cas_spec.bench.runners import DEFAULT_METHODS, parse_methods
from cas_spec.core.errors import UserError
from cas_spec.data.questions import group_questions, load_questions, parse_groups

EPILOG = """examples:
  cas-spec bench --quick
  cas-spec bench --groups summarization,qa --prompts-per-group 8 --max-new-tokens 256
  cas-spec bench --methods default,my-pipeline.yaml,hf:prompt_lookup,hf:early_exit:12 --threads 2
  cas-spec bench --methods ablation --prompts-per-group 4
  cas-spec bench --questions mt_bench --temperature 0.7 --seed 1 --out bench-out/sampled
  cas-spec bench --report bench-out/20250101-120000

methods: pipeline presets or YAML files run through the engine; hf:greedy, hf:prompt_lookup and
hf:early_exit:E run transformers' generate; `ablation` stands for CAS-Spec's scheduler ablation
(ls, vc, hc, vc-hc, tr, tr-vc, dytc over one hierarchy of drafters). autoregressive (the engine's
plain decoding) always runs as the reference for speed and for token-for-token identity."""

QUICK_PROMPTS, QUICK_TOKENS = 1, 32
DEFAULT_PROMPTS, DEFAULT_TOKENS = 4, 128
DEFAULT_MODEL = "smollm2-135m"


class BenchArgumentError(UserError):
    """An option value out of range."""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `bench` subcommand to an argparse subparsers object; returns its parser."""

    bench = subparsers.add_parser(
        "bench",
        help="measure speed and identity on Spec-Bench questions",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Speedup of pipelines and transformers baselines over autoregressive decoding, "
        "per Spec-Bench task group, with every output checked against plain decoding.",
    )
    bench.add_argument(
        "--questions", metavar="FILE", help="question JSONL file, or a shipped one: spec_bench (default), mt_bench"
    )
    bench.add_argument("--groups", metavar="G1,G2", help="task groups to run (default: all of the file)")
    bench.add_argument(
        "--prompts-per-group",
        type=int,
        metavar="N",
        help=f"questions per group (default {DEFAULT_PROMPTS}; --quick: {QUICK_PROMPTS})",
    )
    bench.add_argument(
        "-n",
        "--max-new-tokens",
        type=int,
        metavar="N",
        help=f"most new tokens per prompt (default {DEFAULT_TOKENS}; --quick: {QUICK_TOKENS})",
    )
    bench.add_argument("--threads", type=int, default=1, help="CPU threads, pinned (default 1)")
    bench.add_argument("--model", default=DEFAULT_MODEL, help=f"model alias or folder (default {DEFAULT_MODEL})")
    bench.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        metavar="M1,M2",
        help=f"comma list of presets, YAML files and hf: baselines (default {DEFAULT_METHODS})",
    )
    bench.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    bench.add_argument("--seed", type=int, default=0, help="base seed of sampled runs (prompt i uses seed+i)")
    bench.add_argument("--out", type=Path, metavar="DIR", help="output folder (default bench-out/<timestamp>)")
    bench.add_argument(
        "--quick", action="store_true", help=f"{QUICK_PROMPTS} prompt per group, {QUICK_TOKENS} new tokens"
    )
    bench.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="redraw the table and plots from DIR/results.json without running anything",
    )
    bench.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    return bench


def run(args: argparse.Namespace) -> int:
    """Run `cas-spec bench` (or redraw with --report); returns the exit status."""

    if args.report is not None:
        results = load_results(args.report)
        sys.stdout.write(render(results))
        _plots(results, args.report if args.report.is_dir() else args.report.parent, args.no_plots)
        return 0

    settings = settings_from(args)
    out = args.out or Path("bench-out") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    if out.exists() and not out.is_dir():
        raise BenchArgumentError(f"--out '{out}' exists and is not a folder")

    results = run_bench(settings)
    path = save_results(results, out)
    sys.stdout.write(render(results))
    sys.stdout.flush()
    print(f"cas-spec: results in {path}", file=sys.stderr)
    _plots(results, out, args.no_plots)
    return 0


def settings_from(args: argparse.Namespace):
    """Validated `BenchSettings` from parsed arguments (methods are checked before any model loads)."""

    prompts = (
        args.prompts_per_group
        if args.prompts_per_group is not None
        else (QUICK_PROMPTS if args.quick else DEFAULT_PROMPTS)
    )
    tokens = (
        args.max_new_tokens if args.max_new_tokens is not None else (QUICK_TOKENS if args.quick else DEFAULT_TOKENS)
    )
    for option, value in (("--prompts-per-group", prompts), ("--max-new-tokens", tokens), ("--threads", args.threads)):
        if value < 1:
            raise BenchArgumentError(f"{option} must be at least 1, got {value}")
    if not args.temperature >= 0:
        raise BenchArgumentError(f"--temperature must be 0 or more, got {args.temperature}")
    methods = parse_methods(args.methods)
    _, questions = load_questions(args.questions)  # fail on a bad file or group before loading a model
    parse_groups(args.groups, list(group_questions(questions)))
    return BenchSettings(
        questions=args.questions,
        groups=args.groups,
        prompts_per_group=prompts,
        max_new_tokens=tokens,
        threads=args.threads,
        model=args.model,
        methods=methods,
        temperature=args.temperature,
        seed=args.seed,
    )


def _plots(results: dict, out: Path, disabled: bool) -> None:
    if disabled:
        return

    try:
        paths = plot_all(results, out)
    except PlotsUnavailable as exc:
        print(f"cas-spec: {exc}", file=sys.stderr)
        return
    print(f"cas-spec: plots {', '.join(str(p) for p in paths)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (`python -m cas_spec.bench.cli ...`) until `cas-spec bench` is wired in."""
    parser = argparse.ArgumentParser(prog="cas-spec")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except UserError as exc:
        print(f"cas-spec: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
