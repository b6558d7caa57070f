"""The `cas-spec` command: generate, plugins, validate, calibrate, bench, fetch.

Generated text goes to stdout; statistics, progress and errors to stderr. Progress bars (model
download and conversion, loading, calibration) show only when stderr is a terminal. A mistake of
the user's making exits with status 2 and a one-line cause; any other failure exits with 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence

from cas_spec.bench import cli as bench_cli
from cas_spec.core.config import load_config
from cas_spec.core.errors import InputError, UserError
from cas_spec.core.plugins import get_plugins
from cas_spec.core.stats import format_stats
from cas_spec.costs.draft_costs import format_draft_costs
from cas_spec.hub import ALIASES, resolve_model_path
from cas_spec.kernels import extra_memory_bytes
from cas_spec.pipeline import load_pipeline

EXAMPLES = {
    "generate": """examples:
  cas-spec generate "What is the capital of France?"
  cas-spec generate --pipeline autoregressive --stats "Summarize: ..."
  echo "def fibonacci(n):" | cas-spec generate --no-chat --max-new-tokens 64 -
  cas-spec generate --model gemma3-270m --no-chat "def fibonacci(n):"
  cas-spec generate --set scheduler.options.k=5 --temperature 0.7 --seed 1 "Tell me a story" """,
    "plugins": """examples:
  cas-spec plugins
  cas-spec plugins --json""",
    "validate": """examples:
  cas-spec validate my-pipeline.yaml
  cas-spec validate default --set levels.0.options.num_tokens=5

Every problem is listed with its dotted location; the exit status is 2 if there is any.""",
    "calibrate": """examples:
  cas-spec calibrate                       # the default pipeline's model, machine and threads
  cas-spec calibrate --model tests/fixtures/stories260K --show""",
    "fetch": """examples:
  cas-spec fetch smollm2-135m
  cas-spec fetch gemma3-270m     # Gemma 3 270M, under the Gemma Terms of Use""",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cas-spec",
        description="Lossless speculative decoding with self-speculative cascades.",
        epilog="Run 'cas-spec COMMAND --help' for a command's options and examples.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    gen = commands.add_parser(
        "generate", help="generate text with a pipeline", epilog=EXAMPLES["generate"], formatter_class=fmt
    )
    gen.add_argument("prompt", help="the prompt, or - to read it from standard input")
    gen.add_argument("-p", "--pipeline", default="default", help="preset name or YAML file (default: default)")
    gen.add_argument("--model", help="model alias or local folder (overrides the pipeline's)")
    gen.add_argument("-n", "--max-new-tokens", type=int, help="most tokens to generate")
    gen.add_argument("--temperature", type=float, help="0 = greedy")
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--seed", type=int, help="makes a sampled run reproducible")
    gen.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override one pipeline value (repeatable)",
    )
    gen.add_argument("--stats", action="store_true", help="print statistics on stderr")
    gen.add_argument("-v", "--verbose", action="store_true", help="also show transformers' weight-loading bar")
    chat = gen.add_mutually_exclusive_group()
    chat.add_argument(
        "--chat",
        dest="chat",
        action="store_true",
        default=None,
        help="apply the chat template (default for chat models)",
    )
    chat.add_argument("--no-chat", dest="chat", action="store_false", help="raw completion")

    plugins = commands.add_parser(
        "plugins", help="list plugins and what they register", epilog=EXAMPLES["plugins"], formatter_class=fmt
    )
    plugins.add_argument("--json", action="store_true", help="machine-readable output")

    validate = commands.add_parser(
        "validate", help="check a pipeline file", epilog=EXAMPLES["validate"], formatter_class=fmt
    )
    validate.add_argument("pipeline", help="YAML file or preset name")
    validate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")

    calibrate = commands.add_parser(
        "calibrate",
        help="measure the cost of target forwards by number of tokens and of each level's drafts (cached)",
        epilog=EXAMPLES["calibrate"],
        formatter_class=fmt,
    )
    calibrate.add_argument("-p", "--pipeline", default="default", help="preset name or YAML file")
    calibrate.add_argument("--model", help="model alias or local folder (overrides the pipeline's)")
    calibrate.add_argument("--threads", type=int, help="CPU threads (overrides the pipeline's)")
    calibrate.add_argument("--show", action="store_true", help="show the cached table; measure only if none")
    calibrate.add_argument("-v", "--verbose", action="store_true", help="also show transformers' weight-loading bar")

    bench_cli.add_parser(commands)

    fetch = commands.add_parser(
        "fetch", help="download and convert a model alias into the cache", epilog=EXAMPLES["fetch"], formatter_class=fmt
    )
    fetch.add_argument("model", help="model alias")
    return parser


def _show_progress() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


@contextlib.contextmanager
def _progress_bars(show: bool) -> Iterator[None]:
    """transformers' own bars (loading weights: a second or two, every run) only with --verbose;
    ours (fetching, calibrating: long, first use only) show whenever stderr is a terminal."""
    if show:
        yield
        return
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _generate(args: argparse.Namespace) -> int:

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise InputError("the prompt is empty")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"model={args.model}")
    pipe = load_pipeline(args.pipeline, overrides=overrides)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    result = pipe.generate(
        prompt,
        max_new_tokens=args.max_new_tokens,
        chat=args.chat,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        on_text=write,
    )
    sys.stdout.write("\n")
    if args.stats:
        print(format_stats(result.stats), file=sys.stderr)
        print(pipe.memory().format(), file=sys.stderr)
    return 0


def _plugins(args: argparse.Namespace) -> int:

    plugins = get_plugins()
    kinds = {
        "strategies": plugins.strategies,
        "schedulers": plugins.schedulers,
        "verifiers": plugins.verifiers,
        "adapters": plugins.adapters,
    }
    if args.json:
        data: dict[str, object] = {kind: {name: reg.owner(name) for name in reg.names()} for kind, reg in kinds.items()}
        data["plugins"] = plugins.loaded
        data["broken"] = plugins.broken
        print(json.dumps(data, indent=2))
        return 0
    for kind, reg in kinds.items():
        print(f"{kind}:")
        for name in reg.names():
            print(f"  {name:<20} ({reg.owner(name)})")
    if plugins.broken:
        print("broken plugins:")
        for name, error in plugins.broken.items():
            print(f"  {name:<20} {error}")
    return 0


def _validate(args: argparse.Namespace) -> int:

    config = load_config(args.pipeline, args.overrides)
    levels = ", ".join(f"{lv.name} ({lv.kind})" for lv in config.levels) or "none"
    print(f"{args.pipeline}: valid; model {config.model}, scheduler {config.scheduler.kind}, levels: {levels}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:

    overrides = []
    if args.model:
        overrides.append(f"model={args.model}")
    if args.threads:
        overrides.append(f"threads={args.threads}")
    # --show: the cached full calibration, measured only if there is none; else measured afresh
    pipe = load_pipeline(
        args.pipeline, overrides=overrides, progress=_show_progress(), calibration="full" if args.show else "fresh"
    )
    calibration = pipe.calibration
    assert calibration is not None
    table = calibration.costs
    print(
        f"model {pipe.config.model}, threads {pipe.config.threads}, key {table.key}{' (quick)' if table.quick else ''}"
    )
    if calibration.linear_plan is not None:
        extra = extra_memory_bytes(pipe.model, calibration.linear_plan) / 2**20
        print(f"linear kernels by rows: {calibration.linear_plan.describe()} (weight copies: {extra:.0f} MiB)")
    print(f"attention: {calibration.attention or 'as loaded'}")
    print(table.format())
    print()
    print(format_draft_costs(dict(calibration.drafts), {lc.name: lc.kind for lc in pipe.config.levels}))
    return 0


def _bench(args: argparse.Namespace) -> int:

    return bench_cli.run(args)


def _fetch(args: argparse.Namespace) -> int:

    print(resolve_model_path(args.model, progress=_show_progress()))
    source = ALIASES.get(args.model)
    if source is not None:
        print(f"{source.alias}: {source.description}; licence: {source.licence}", file=sys.stderr)
        if source.notice:
            print(source.notice, file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    command = {
        "generate": _generate,
        "plugins": _plugins,
        "validate": _validate,
        "calibrate": _calibrate,
        "fetch": _fetch,
        "bench": _bench,
    }[args.command]
    loads_models = args.command in ("generate", "calibrate", "fetch", "bench")
    try:
        with _progress_bars(getattr(args, "verbose", False)) if loads_models else contextlib.nullcontext():
            return command(args)
    except UserError as exc:
        print(f"cas-spec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # not the user's mistake: a short message, exit 1 (CAS_SPEC_DEBUG=1 re-raises)
        if os.environ.get("CAS_SPEC_DEBUG"):
            raise
        print(f"cas-spec: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
