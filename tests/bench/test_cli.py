"""`cas-spec bench` end to end on the stories260K fixture (a Llama without chat template), never SmolLM2.

One quick run (two groups, one prompt each, 16 new tokens) is shared by the checks of the table,
results.json and the plots; smaller runs cover YAML methods, early exit, sampling, prompts too
long for the context and the errors of the user's making.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys

import pytest

from cas_spec.bench import cli
from cas_spec.bench.cli import add_parser
from cas_spec.core.errors import UserError
from tests.helpers import STORIES

PNG = b"\x89PNG\r\n\x1a\n"
GROUPS = ["mt_bench", "translation"]
METHODS = ["autoregressive", "default", "hf:greedy", "hf:prompt_lookup"]  # bench's default methods
# the quick run's: the default (whose levels draft as DyTC decides) and prompt lookup alone (which drafts)
RUN = ["autoregressive", "default", "prompt-lookup", "hf:greedy", "hf:prompt_lookup"]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cas-spec")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


def bench(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.run(parse(*argv))
    return code, out.getvalue(), err.getvalue()


def table_rows(text: str, table: int = 0) -> list[list[str]]:
    """Rows of the report's `table`-th Markdown table (0: speed, 1: levels), without the header."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not line.startswith("|-"):  # the separator under the header
                current.append([c.strip() for c in line.strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables[table][1:] if table < len(tables) else []


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "run"
    code, stdout, stderr = bench(
        "--model",
        str(STORIES),
        "--methods",
        "default,prompt-lookup,hf:greedy,hf:prompt_lookup",
        "--groups",
        ",".join(GROUPS),
        "--quick",
        "--max-new-tokens",
        "16",
        "--out",
        str(out),
    )
    assert code == 0, stderr
    return out, stdout, stderr


def test_the_table_has_every_group_and_method(quick):
    _, stdout, stderr = quick
    rows = table_rows(stdout)
    assert [(r[0].strip("*"), r[1]) for r in rows] == [(g, m) for g in [*GROUPS, "overall"] for m in RUN]
    for row in rows:
        group, method, up, vs_hf, accept, tps, mismatches, *split, scheduling = row
        assert up.endswith("×") and float(tps) > 0
        if method == "autoregressive":
            assert up == "1.00×" and accept == "1.00" and mismatches == "–"
        else:
            assert mismatches == ("0/2" if group == "**overall**" else "0/1")  # greedy: identical outputs
        if method.startswith("hf:"):
            assert accept == "–" and split == ["–"] * 3 and scheduling == "–" and vs_hf.endswith("×")
        else:
            assert vs_hf == "–" and all(s.endswith("%") for s in split) and float(accept) >= 1.0
            milliseconds, share = scheduling.split(" ms (")
            assert float(milliseconds) >= 0.0 and share.endswith("%)")
    assert (
        "identity vs transformers: the engine's autoregressive output equals greedy `generate` "
        "token for token on 2/2 prompts" in stdout
    )
    assert "memory (MiB): autoregressive: model " in stdout and "; default: model " in stdout
    assert "bench" in stderr and "100%" in stderr  # the progress bar, on stderr
    assert "| group |" not in stderr


def test_the_level_table_gives_acceptance_and_cost_of_each_level(quick):
    _, stdout, _ = quick
    rows = table_rows(stdout, table=1)
    # engine methods only, one row per level of each (the default: the int8 twin and prompt lookup)
    assert [r[:2] for r in rows] == [["default", "int8"], ["default", "pld"], ["prompt-lookup", "pld"]]
    for _method, level, alpha, cost, proposed, drafted in rows[:2]:
        assert int(proposed) >= 0 and int(drafted) >= 0
        if int(drafted):  # which of the default's levels drafts how much is DyTC's (timing-dependent) choice
            assert 0.0 <= float(alpha) <= 1.0
        else:
            assert alpha == "–"
        if int(proposed):
            assert 0.0 <= float(cost) < (0.5 if level == "pld" else 10.0)  # lookup costs next to nothing
    _method, _level, alpha, cost, proposed, drafted = rows[2]  # prompt lookup alone always drafts
    assert 0.0 <= float(alpha) <= 1.0
    assert 0.0 <= float(cost) < 0.5  # prompt lookup costs next to nothing against a target forward
    assert int(proposed) >= int(drafted) > 0


def test_results_json_has_records_and_environment(quick):
    out, _, _ = quick
    results = json.loads((out / "results.json").read_text())
    records = results["records"]
    assert len(records) == len(GROUPS) * len(RUN)
    assert {(r["group"], r["method"]) for r in records} == {(g, m) for g in GROUPS for m in RUN}
    assert [r["question_id"] for r in records if r["method"] == "default"] == [81, 161]
    for r in records:
        assert r["mismatch"] is False and r["first_difference"] is None
        assert r["new_tokens"] == 16 and r["seconds"] > 0 and r["prompt_tokens"] > 0
        if r["kind"] == "engine":
            assert sum(r["acceptance_lengths"]) == r["new_tokens"]
            assert r["stats"]["target_forwards"] == len(r["acceptance_lengths"])
            assert r["stats"]["decode_seconds"] <= r["seconds"]
        else:
            assert r["stats"] is None and r["acceptance_lengths"] is None
    # interleaved: the second prompt runs the methods in reverse order
    assert [r["position"] for r in records if r["question_id"] == 161] == [4, 3, 2, 1, 0]
    memory = results["memory"]  # engine methods only: what each holds after its runs
    assert set(memory) == {"autoregressive", "default", "prompt-lookup"}
    assert memory["default"]["model"] > 0 and memory["default"]["kv_cache"] > 0
    levels = memory["default"]["levels"]  # the int8 twins hold memory, prompt lookup none
    assert set(levels) == {"int8", "pld"} and levels["int8"] > 0 and levels["pld"] == 0
    env = results["environment"]
    for key in (
        "python",
        "torch",
        "transformers",
        "cas_spec",
        "cpu",
        "threads",
        "load_average_start",
        "load_average_end",
        "command",
        "date",
    ):
        assert env[key] not in (None, ""), key
    assert env["threads"] == 1 and env["torch_threads"] == 1
    assert results["settings"]["chat_template"] is False and results["settings"]["max_new_tokens"] == 16


def test_plots_are_png_files(quick):
    out, _, stderr = quick
    for name in ("speedup.png", "time_split.png", "acceptance.png"):
        assert (out / name).read_bytes()[:8] == PNG
        assert str(out / name) in stderr


def test_report_redraws_the_table_and_plots_from_a_saved_folder(quick, tmp_path):
    out, stdout, _ = quick
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for png in copy.glob("*.png"):
        png.unlink()
    code, redrawn, _stderr = bench("--report", str(copy))
    assert code == 0 and redrawn == stdout
    assert sorted(p.name for p in copy.glob("*.png")) == ["acceptance.png", "speedup.png", "time_split.png"]
    code, again, _ = bench("--report", str(copy), "--no-plots")
    assert code == 0 and again == stdout


def test_report_without_matplotlib_says_so_and_still_prints_the_table(quick, tmp_path, monkeypatch):
    out, stdout, _ = quick
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    code, redrawn, stderr = bench("--report", str(copy))
    assert code == 0 and redrawn == stdout
    assert "plots skipped: matplotlib is not installed (pip install 'cas-spec[plot]')" in stderr


def test_report_of_a_folder_without_results(tmp_path):
    with pytest.raises(UserError, match="no results.json in"):
        bench("--report", str(tmp_path))
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(UserError, match="is not a cas-spec bench result"):
        bench("--report", str(tmp_path))


def test_yaml_method_and_early_exit_are_identical_to_autoregressive(tmp_path):
    pipeline = tmp_path / "pld3.yaml"
    pipeline.write_text("extends: prompt-lookup\nscheduler: {options: {k: 3}}\n")
    code, stdout, _ = bench(
        "--model",
        str(STORIES),
        "--methods",
        f"{pipeline},hf:early_exit:2",
        "--groups",
        "qa",
        "--prompts-per-group",
        "2",
        "-n",
        "12",
        "--out",
        str(tmp_path / "o"),
        "--no-plots",
    )
    assert code == 0
    rows = {(r[0].strip("*"), r[1]): r for r in table_rows(stdout)}
    assert set(rows) == {
        (g, m) for g in ("qa", "overall") for m in ("autoregressive", "pld3", "hf:greedy", "hf:early_exit:2")
    }
    assert rows["overall", "pld3"][6] == "0/2" and rows["overall", "hf:early_exit:2"][6] == "0/2"
    assert not list((tmp_path / "o").glob("*.png"))


def test_sampling_reports_without_expecting_identity(tmp_path):
    code, stdout, _ = bench(
        "--model",
        str(STORIES),
        "--methods",
        "default",
        "--groups",
        "qa",
        "--quick",
        "-n",
        "8",
        "--temperature",
        "0.8",
        "--seed",
        "3",
        "--out",
        str(tmp_path),
        "--no-plots",
    )
    assert code == 0
    assert "temperature 0.8: sampled outputs are not expected to be identical" in stdout
    assert "temperature 0.8, seed 3" in stdout
    assert "identity vs transformers: not measured" in stdout


def test_prompts_too_long_for_the_context_are_passed_over(tmp_path):
    questions = tmp_path / "q.jsonl"
    long = "Once upon a time there was a little girl. " * 80
    questions.write_text(
        "\n".join(
            json.dumps({"question_id": i, "category": "story", "turns": [t]})
            for i, t in enumerate([long, "Once upon a time", "Lily and Tom"])
        )
        + "\n"
    )
    code, stdout, _ = bench(
        "--model",
        str(STORIES),
        "--questions",
        str(questions),
        "--methods",
        "default",
        "--prompts-per-group",
        "2",
        "-n",
        "8",
        "--out",
        str(tmp_path / "o"),
        "--no-plots",
    )
    assert code == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["question_id"] for r in results["records"] if r["method"] == "default"] == [1, 2]
    assert [q["question_id"] for q in results["skipped"]] == [0]
    assert "passed over (prompt + new tokens exceed the context of 512): story 1" in stdout


def test_a_group_with_no_prompt_that_fits_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no question of group rag fits the model's context of 512 tokens"):
        bench(
            "--model",
            str(STORIES),
            "--groups",
            "rag",
            "--methods",
            "default",
            "--quick",
            "--out",
            str(tmp_path),
            "--no-plots",
        )


def test_an_early_exit_beyond_the_model_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"'hf:early_exit:5': the model has 5 layers"):
        bench("--model", str(STORIES), "--methods", "hf:early_exit:5", "--quick", "--out", str(tmp_path))


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--methods", "default,nosuchpreset"], "--methods entry 'nosuchpreset'"),
        (["--methods", "hf:early_exit:two"], "--methods entry 'hf:early_exit:two'"),
        (["--groups", "qa,poetry"], "unknown group 'poetry'"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
        (["--prompts-per-group", "-1"], "--prompts-per-group must be at least 1, got -1"),
        (["--temperature", "-0.5"], "--temperature must be 0 or more"),
        (["--questions", "nope.jsonl"], "no question file 'nope.jsonl'"),
    ],
)
def test_user_errors_before_any_model_loads(argv, fragment, tmp_path):
    with pytest.raises(UserError) as info:
        bench("--model", "no-such-model", "--out", str(tmp_path), *argv)
    assert fragment in str(info.value)


def test_quick_and_defaults():
    args = parse("--quick")
    settings = cli.settings_from(args)
    assert (settings.prompts_per_group, settings.max_new_tokens, settings.threads) == (1, 32, 1)
    assert settings.model == "smollm2-135m" and [m.name for m in settings.methods] == METHODS
    settings = cli.settings_from(parse("--quick", "-n", "64"))
    assert (settings.prompts_per_group, settings.max_new_tokens) == (1, 64)
    settings = cli.settings_from(parse())
    assert (settings.prompts_per_group, settings.max_new_tokens, settings.temperature) == (4, 128, 0.0)


def test_help_has_examples():
    parser = argparse.ArgumentParser(prog="cas-spec")
    bench_parser = add_parser(parser.add_subparsers(dest="command"))
    text = bench_parser.format_help()
    assert "examples:\n  cas-spec bench --quick" in text and "--report DIR" in text


def test_autoregressive_alone_still_plots(tmp_path):
    code, stdout, _ = bench(
        "--model",
        str(STORIES),
        "--methods",
        "autoregressive",
        "--groups",
        "qa",
        "--quick",
        "-n",
        "6",
        "--out",
        str(tmp_path),
    )
    assert code == 0
    assert [r[1] for r in table_rows(stdout)] == ["autoregressive", "autoregressive"]
    for name in ("speedup.png", "time_split.png", "acceptance.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
