"""The `cas-spec` command, in-process with `main([...])` and once as a real subprocess.

Every generation uses the stories260K fixture (512 positions, no chat template), never SmolLM2.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cas_spec.cli import main
from cas_spec.pipeline import load_pipeline
from tests.helpers import STORIES

MODEL = ["--model", str(STORIES)]
REPETITIVE = (
    "Lily liked to play with her ball. Lily liked to play with her ball. Lily liked to play with her ball. Lily liked"
)
PROGRESS = re.compile(r"^Loading weights")  # transformers' progress bar while the model loads


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    """stderr without the model-loading progress bar, split on both kinds of line ends."""
    return [line for line in re.split(r"[\r\n]", err) if line.strip() and not PROGRESS.match(line)]


def stat(err: str, label: str) -> str:
    (line,) = [line for line in err.splitlines() if line.startswith(label)]
    return line[len(label) :].strip()


# -- generate -------------------------------------------------------------------------------------


def test_generate_prints_only_text_on_stdout_and_stats_on_stderr(capsys, stories):
    code, out, err = run(capsys, "generate", *MODEL, "-n", "24", "--stats", REPETITIVE)
    assert code == 0
    model, tokenizer = stories
    expected = load_pipeline("default", model=model, tokenizer=tokenizer).generate(REPETITIVE, max_new_tokens=24)
    assert out == expected.text + "\n"  # the text and nothing else
    assert expected.text.strip()
    assert re.fullmatch(r"\d+\.\d\d tokens per target forward", stat(err, "mean acceptance"))
    assert stat(err, "new tokens").startswith("24 (prompt ")
    assert "level int8" in err and "level pld" in err
    # the int8 twins hold memory; prompt lookup holds no tensors, so it has no entry
    assert re.fullmatch(r"model \d+\.\d MiB, KV cache \d+\.\d MiB, level int8 \+\d+\.\d MiB", stat(err, "memory"))
    assert expected.text not in err


def test_generate_without_stats_prints_no_stats(capsys):
    code, out, err = run(capsys, "generate", *MODEL, "-n", "5", "Once upon a time")
    assert code == 0 and out.strip()
    assert "mean acceptance" not in err and "cas-spec: error" not in err


def test_default_pipeline_equals_autoregressive_on_a_repetitive_prompt(capsys):
    code, fast, fast_err = run(capsys, "generate", *MODEL, "-n", "48", "--stats", REPETITIVE)
    assert code == 0
    code, plain, plain_err = run(
        capsys, "generate", *MODEL, "-n", "48", "--stats", "--pipeline", "autoregressive", REPETITIVE
    )
    assert code == 0
    assert fast == plain and len(fast.split()) > 10
    # the comparison means something: prompt lookup did accept tokens on the default pipeline
    assert float(stat(fast_err, "mean acceptance").split()[0]) > 1.2
    assert float(stat(plain_err, "mean acceptance").split()[0]) == 1.0


def test_prompt_from_stdin(capsys, monkeypatch):
    code, from_arg, _ = run(capsys, "generate", *MODEL, "-n", "12", "--no-chat", REPETITIVE)
    assert code == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO(REPETITIVE))
    code, from_stdin, _ = run(capsys, "generate", *MODEL, "-n", "12", "--no-chat", "-")
    assert code == 0
    assert from_stdin == from_arg


def test_generate_with_overrides_and_sampling(capsys):
    argv = [
        "generate",
        *MODEL,
        "-n",
        "16",
        "--temperature",
        "0.8",
        "--top-k",
        "40",
        "--seed",
        "3",
        "--set",
        "levels.1.options.num_tokens=3",
        "--set",
        "scheduler.options.max_draft=3",
        "Once upon a time",
    ]
    code, first, _ = run(capsys, *argv)
    assert code == 0
    code, second, _ = run(capsys, *argv)
    assert code == 0 and first == second  # a seeded sampled run is reproducible


# -- errors of the user's making: exit 2, one line, no traceback ----------------------------------


def assert_user_error(code: int, out: str, err: str, *fragments: str) -> str:
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err
    (line,) = lines
    assert line.startswith("cas-spec: error: ")
    for fragment in fragments:
        assert fragment in line
    return line


def test_empty_prompt(capsys):
    code, out, err = run(capsys, "generate", *MODEL, "   ")
    assert err == "cas-spec: error: the prompt is empty\n"
    assert_user_error(code, out, err)


def test_empty_prompt_from_stdin(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    code, out, err = run(capsys, "generate", *MODEL, "-")
    assert_user_error(code, out, err, "the prompt is empty")


@pytest.mark.parametrize("value", ["0", "-3"])
def test_max_new_tokens_below_one(capsys, value):
    code, out, err = run(capsys, "generate", *MODEL, "--max-new-tokens", value, "Once upon a time")
    assert err == f"cas-spec: error: --max-new-tokens must be at least 1, got {value}\n"
    assert_user_error(code, out, err)


def test_prompt_longer_than_the_context(capsys):
    code, out, err = run(capsys, "generate", *MODEL, "-n", "4", "The cat sat on the mat. " * 120)
    line = assert_user_error(code, out, err, "the prompt has ", "tokens; the model's context holds 512")
    assert int(re.search(r"has (\d+) tokens", line).group(1)) >= 512


def test_bad_yaml_file(capsys, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: x\nlevels: [1\n  x: : y\n")
    code, out, err = run(capsys, "generate", *MODEL, "--pipeline", str(path), "Once upon a time")
    assert_user_error(code, out, err, f"invalid pipeline {path}: <yaml> line 3:")


def test_missing_pipeline_file(capsys, tmp_path):
    code, out, err = run(capsys, "generate", *MODEL, "-p", str(tmp_path / "nope.yaml"), "Once upon a time")
    assert_user_error(code, out, err, "no such pipeline file")


def test_unknown_plugin_kind(capsys):
    code, out, err = run(capsys, "generate", *MODEL, "--set", "levels.0.kind=prompt_lookpu", "Once upon a time")
    assert_user_error(
        code,
        out,
        err,
        "levels.0.kind: unknown strategy 'prompt_lookpu'; available: early_exit, layer_sparsity, max_gram, prompt_lookup, quanto_activation",
    )


def test_unknown_model_alias_names_the_known_aliases(capsys):
    code, out, err = run(capsys, "generate", "--model", "smollm9-1t", "Once upon a time")
    assert_user_error(code, out, err, "unknown model 'smollm9-1t'", "known aliases: gemma3-270m, smollm2-135m")


def test_model_folder_without_config(capsys, tmp_path):
    code, out, err = run(capsys, "generate", "--model", str(tmp_path), "Once upon a time")
    assert_user_error(code, out, err, "has no config.json", "known aliases: gemma3-270m, smollm2-135m")


def test_chat_on_a_model_without_chat_template(capsys):
    code, out, err = run(capsys, "generate", *MODEL, "--chat", "Once upon a time")
    assert_user_error(code, out, err, "no chat template", "--no-chat")


def test_chat_and_no_chat_are_exclusive(capsys):
    with pytest.raises(SystemExit) as info:
        main(["generate", "--chat", "--no-chat", "hi"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# -- validate ----------------------------------------------------------------------------------


def test_validate_good_file(capsys, tmp_path):
    path = tmp_path / "good.yaml"
    path.write_text("extends: prompt-lookup\nlevels:\n  - {name: pld, kind: prompt_lookup, options: {num_tokens: 4}}\n")
    code, out, err = run(capsys, "validate", str(path))
    assert (code, err) == (0, "")
    assert out == f"{path}: valid; model smollm2-135m, scheduler chain, levels: pld (prompt_lookup)\n"


def test_validate_presets_with_overrides(capsys):
    code, out, _ = run(capsys, "validate", "autoregressive")
    assert code == 0 and "levels: none" in out
    code, out, _ = run(capsys, "validate", "default", "--set", "levels.1.options.num_tokens=5")
    assert code == 0 and out.startswith("default: valid")


def test_validate_bad_file_lists_every_problem(capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("""\
max_new_tokens: 0
scheduler: {kind: chain, options: {k: 4, depth: 2}}
levels:
  - {name: a, kind: prompt_lookpu}
  - {name: b, kind: prompt_lookup, options: {num_tokenz: 3}}
sampling: {temperature: -0.5}
""")
    code, out, err = run(capsys, "validate", str(path))
    assert code == 2 and out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert lines[0] == f"cas-spec: error: invalid pipeline {path}:"
    assert sorted(lines[1:]) == sorted(
        [
            "  max_new_tokens: Input should be greater than or equal to 1",
            "  sampling.temperature: Input should be greater than or equal to 0",
            "  levels.0.kind: unknown strategy 'prompt_lookpu'; available: early_exit, layer_sparsity, max_gram, prompt_lookup, quanto_activation",
            "  levels.1.options.num_tokenz: Extra inputs are not permitted",
            "  scheduler.options.depth: Extra inputs are not permitted",
        ]
    )


def test_validate_unknown_preset(capsys):
    code, out, err = run(capsys, "validate", "nonesuch")
    from cas_spec.core.config import preset_names

    assert {"autoregressive", "default", "cas-spec", "quanto-activation"} <= set(preset_names())
    assert_user_error(code, out, err, f"no file or preset named 'nonesuch'; presets: {', '.join(preset_names())}")


# -- plugins ------------------------------------------------------------------------------------


def test_plugins_lists_the_builtins(capsys):
    code, out, err = run(capsys, "plugins")
    assert (code, err) == (0, "")
    for kind, name, owner in [
        ("strategies", "prompt_lookup", "cas_spec.strategies"),
        ("schedulers", "chain", "cas_spec.schedulers"),
        ("schedulers", "autoregressive", "cas_spec.schedulers"),
        ("verifiers", "greedy", "cas_spec.verifiers"),
        ("verifiers", "sampling", "cas_spec.verifiers"),
        ("adapters", "llama", "cas_spec.adapters"),
    ]:
        assert f"{kind}:" in out
        assert re.search(rf"^  {name} +\({re.escape(owner)}\)$", out, re.M), name
    assert "broken plugins" not in out


def test_plugins_json(capsys):
    code, out, _ = run(capsys, "plugins", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["strategies"] == dict.fromkeys(
        ("early_exit", "layer_sparsity", "max_gram", "prompt_lookup", "quanto_activation"), "cas_spec.strategies"
    )
    assert data["schedulers"] == dict.fromkeys(
        ("autoregressive", "chain", "cs_drafting", "dytc", "lookup_tree", "static_tree"), "cas_spec.schedulers"
    )
    assert data["verifiers"] == {"greedy": "cas_spec.verifiers", "sampling": "cas_spec.verifiers"}
    assert data["adapters"] == {
        "llama": "cas_spec.adapters",
        "phi3": "cas_spec.adapters",
        "gemma3": "cas_spec.adapters",
    }
    assert data["plugins"][:4] == [
        "cas_spec.strategies",
        "cas_spec.schedulers",
        "cas_spec.verifiers",
        "cas_spec.adapters",
    ]
    assert data["broken"] == {}


@pytest.fixture
def with_a_broken_plugin(monkeypatch):
    """The process-wide plugin set, plus a third-party plugin that failed to import."""
    import importlib.metadata

    from cas_spec import cli
    from cas_spec.core.plugins import build_plugins

    broken = importlib.metadata.EntryPoint(name="shiny", value="cas_spec_no_such_module_xyz:plugin", group="cas_spec")
    plugins = build_plugins([broken])
    monkeypatch.setattr(cli, "get_plugins", lambda: plugins)
    return plugins


def test_plugins_lists_broken_plugins(capsys, with_a_broken_plugin):
    code, out, _ = run(capsys, "plugins")
    assert code == 0
    assert out.endswith(
        "broken plugins:\n  shiny                ModuleNotFoundError: No module named 'cas_spec_no_such_module_xyz'\n"
    )
    code, out, _ = run(capsys, "plugins", "--json")
    data = json.loads(out)
    assert data["broken"] == {"shiny": "ModuleNotFoundError: No module named 'cas_spec_no_such_module_xyz'"}
    assert "shiny" not in data["plugins"] and data["strategies"]["prompt_lookup"] == "cas_spec.strategies"


# -- help ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["generate", "plugins", "validate", "calibrate", "bench", "fetch"])
def test_each_subcommand_help_shows_examples(capsys, command):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "\nexamples:\n" in out
    examples = out.split("\nexamples:\n", 1)[1]
    assert f"cas-spec {command}" in examples


def test_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("generate", "plugins", "validate", "calibrate", "bench", "fetch"):
        assert command in out


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage: cas-spec" in capsys.readouterr().err


# -- progress bars ------------------------------------------------------------------------------

BAR = re.compile(r"\r|it/s|\d+%\|")  # what a tqdm bar leaves on a stream


def test_no_progress_bars_when_stderr_is_not_a_terminal(capsys):
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    code, out, err = run(capsys, "generate", *MODEL, "-n", "4", "--no-chat", "Once upon a time")
    assert code == 0 and out.strip()
    assert not BAR.search(err), err
    assert hf_logging.is_progress_bar_enabled() == enabled  # transformers' setting is restored


def test_the_weight_loading_bar_only_with_verbose(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    code, _, err = run(capsys, "generate", *MODEL, "-n", "4", "--no-chat", "Once upon a time")
    assert code == 0 and "Loading weights" not in err  # every run, a second: not worth a bar
    code, _, err = run(capsys, "generate", *MODEL, "-n", "4", "--no-chat", "--verbose", "Once upon a time")
    assert code == 0 and "Loading weights" in err  # transformers' bar, asked for


def test_calibrate_prints_its_tables_and_no_progress_bars_off_a_terminal(capsys):
    code, out, err = run(capsys, "calibrate", *MODEL, "--threads", "1")
    assert code == 0
    assert out.startswith(f"model {STORIES}, threads 1, key ") and "draft cost of a level" in out
    assert not BAR.search(err), err


# -- a real process -----------------------------------------------------------------------------


def cas_spec_command() -> list[str]:
    script = Path(sys.executable).with_name("cas-spec")
    assert script.exists(), f"the console script is not installed next to {sys.executable}"
    return [str(script)]


def test_console_script_in_a_subprocess(tmp_path):
    env = {**os.environ, "CAS_SPEC_CACHE": str(tmp_path / "cache")}
    env.pop("CAS_SPEC_DEBUG", None)
    done = subprocess.run(
        [*cas_spec_command(), "generate", *MODEL, "-n", "12", "--stats", "-"],
        input=REPETITIVE,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() and "mean acceptance" not in done.stdout
    # stderr holds the statistics and nothing else: no warning, no bar, no log line
    labels = ("new tokens", "target forwards", "mean acceptance", "speed", "time", "level ", "memory")
    assert [line for line in done.stderr.splitlines() if not line.startswith(labels)] == [], done.stderr

    done = subprocess.run(
        [*cas_spec_command(), "generate", *MODEL, "-n", "12", "--no-chat", "Once upon a time"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.strip()
    assert done.stderr == ""  # without --stats, a quiet console

    done = subprocess.run(
        [*cas_spec_command(), "generate", "--model", "smollm9-1t", "hi"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (
        "cas-spec: error: unknown model 'smollm9-1t': not an alias or an existing folder; "
        "known aliases: gemma3-270m, smollm2-135m\n"
    )
