"""Pipelines in YAML: presets, `extends`, `--set` overrides, and errors that list every problem."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from cas_spec.core.config import (
    PipelineConfig,
    apply_overrides,
    load_config,
    load_raw,
    parse_override,
    preset_names,
    validate,
)
from cas_spec.core.errors import ConfigError, UserError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def problems_of(source, overrides=()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(source, overrides)
    return info.value.problems


# -- presets --------------------------------------------------------------------------------------


def test_presets_are_shipped():
    assert {"default", "autoregressive"} <= set(preset_names())


def test_default_preset_validates():
    config = load_config("default")
    assert isinstance(config, PipelineConfig)
    assert (config.scheduler.kind, config.scheduler.gate) == ("dytc", True)
    assert [(lv.name, lv.kind) for lv in config.levels] == [("int8", "quanto_activation"), ("pld", "prompt_lookup")]
    assert config.levels[0].options == {"backend": "auto"}
    assert config.levels[1].options == {"max_ngram": 4, "min_ngram": 2, "num_tokens": 7}
    assert config.sampling.temperature == 0.0


def test_prompt_lookup_preset_validates():
    config = load_config("prompt-lookup")
    assert config.scheduler.kind == "chain"
    assert config.scheduler.options == {"level": "pld", "k": 7}
    assert [(lv.name, lv.kind) for lv in config.levels] == [("pld", "prompt_lookup")]
    assert config.levels[0].options == {"max_ngram": 4, "min_ngram": 2, "num_tokens": 7}
    assert config.sampling.temperature == 0.0


def test_autoregressive_preset_validates():
    config = load_config("autoregressive")
    assert config.scheduler.kind == "autoregressive"
    assert config.levels == []
    assert config.sampling.temperature == 0.0


@pytest.mark.parametrize("name", preset_names())
def test_each_preset_starts_with_a_comment_and_validates(name):
    text = resources.files("cas_spec.pipelines").joinpath(f"{name}.yaml").read_text()
    assert text.splitlines()[0].startswith(f"# {name}:")
    load_config(name)


def test_empty_mapping_has_defaults_but_the_default_chain_needs_a_level():
    config = PipelineConfig.model_validate({})  # structurally, every field has a default
    assert config.levels == [] and config.model == "smollm2-135m" and config.scheduler.kind == "chain"
    assert problems_of({}) == ["levels: the chain scheduler needs one level to draft with"]
    assert validate({"scheduler": {"kind": "autoregressive"}}).levels == []


def test_a_mapping_source_is_loaded_like_a_file():
    config = load_config({"extends": "default", "max_new_tokens": 9})
    assert config.max_new_tokens == 9 and [lv.kind for lv in config.levels] == ["quanto_activation", "prompt_lookup"]


# -- extends --------------------------------------------------------------------------------------


def test_extends_a_relative_file_with_deep_merge(tmp_path):
    write(
        tmp_path / "base" / "base.yaml",
        """\
model: tests/fixtures/stories260K
scheduler: {kind: chain, options: {level: pld, k: 4}}
levels:
  - {name: pld, kind: prompt_lookup, options: {max_ngram: 3}}
sampling: {temperature: 0.7, top_k: 20, seed: 1}
""",
    )
    child = write(
        tmp_path / "child.yaml",
        """\
extends: base/base.yaml
scheduler: {options: {k: 2}}
sampling: {temperature: 0.5}
""",
    )
    config = load_config(child)
    assert config.model == "tests/fixtures/stories260K"
    assert config.scheduler.kind == "chain"
    assert config.scheduler.options == {"level": "pld", "k": 2}  # merged, not replaced
    assert config.sampling.temperature == 0.5
    assert (config.sampling.top_k, config.sampling.seed) == (20, 1)  # kept from the base
    assert config.levels[0].options == {"max_ngram": 3}


def test_extends_is_relative_to_the_extending_file_not_the_cwd(tmp_path, monkeypatch):
    write(tmp_path / "a" / "b" / "grand.yaml", "max_new_tokens: 3\nscheduler: {kind: autoregressive}\n")
    write(tmp_path / "a" / "b" / "parent.yaml", "extends: grand.yaml\nthreads: 2\n")
    child = write(tmp_path / "a" / "child.yaml", "extends: b/parent.yaml\nchat: false\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(child)
    assert (config.max_new_tokens, config.threads, config.chat) == (3, 2, False)


def test_extends_a_preset_with_deep_merge(tmp_path):
    path = write(
        tmp_path / "p.yaml",
        """\
extends: prompt-lookup
levels:
  - {name: pld, kind: prompt_lookup, options: {num_tokens: 3}}
scheduler: {options: {k: 3}}
sampling: {temperature: 0.8, seed: 4}
""",
    )
    raw, source = load_raw(path)
    assert source == str(path) and "extends" not in raw
    config = validate(raw)
    assert config.scheduler.kind == "chain" and config.scheduler.options == {"level": "pld", "k": 3}
    assert config.levels[0].options == {"num_tokens": 3}  # lists are replaced, not merged
    assert config.sampling.temperature == 0.8 and config.sampling.seed == 4
    assert config.model == "smollm2-135m"


def test_extends_cycle_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    assert problems_of(tmp_path / "a.yaml") == ["extends: cycle through 'a.yaml'"]


def test_extends_itself_is_a_cycle(tmp_path):
    write(tmp_path / "self.yaml", "extends: self.yaml\n")
    (problem,) = problems_of(tmp_path / "self.yaml")
    assert "cycle" in problem


def test_extends_url_is_rejected(tmp_path):
    write(tmp_path / "u.yaml", "extends: https://example.com/pipeline.yaml\n")
    (problem,) = problems_of(tmp_path / "u.yaml")
    assert problem.startswith("extends: 'https://example.com/pipeline.yaml' is a URL")


def test_extends_unknown_names_the_presets(tmp_path):
    write(tmp_path / "x.yaml", "extends: nowhere.yaml\n")
    (problem,) = problems_of(tmp_path / "x.yaml")
    assert "no file or preset named 'nowhere.yaml'" in problem and "default" in problem


def test_extends_must_be_a_string(tmp_path):
    write(tmp_path / "x.yaml", "extends: [default]\n")
    assert problems_of(tmp_path / "x.yaml") == ["extends: expected a file path or preset name"]


def test_unknown_source_names_the_presets(tmp_path):
    (problem,) = problems_of("no-such-preset")
    assert "no-such-preset" in problem and "autoregressive, cas-spec, cs-drafting, default" in problem
    (problem,) = problems_of(tmp_path / "missing.yaml")
    assert "no such pipeline file" in problem


# -- overrides ------------------------------------------------------------------------------------


def test_override_list_item_option():
    config = load_config("default", ["levels.1.options.num_tokens=5"])
    assert config.levels[1].options["num_tokens"] == 5
    assert config.levels[1].options["max_ngram"] == 4  # the rest is kept


def test_override_scalars_are_parsed_as_yaml():
    config = load_config(
        "default", ["sampling.temperature=0.5", "chat=false", "model=some/folder", "sampling.top_k=null"]
    )
    assert config.sampling.temperature == 0.5
    assert config.chat is False and config.model == "some/folder" and config.sampling.top_k is None


def test_override_creates_missing_mappings():
    data = apply_overrides({}, ["scheduler.options.k=3"])
    assert data == {"scheduler": {"options": {"k": 3}}}


def test_later_override_wins():
    assert load_config("default", ["max_new_tokens=5", "max_new_tokens=6"]).max_new_tokens == 6


def test_override_is_validated():
    assert problems_of("default", ["sampling.temperature=-1"]) == [
        "sampling.temperature: Input should be greater than or equal to 0"
    ]
    (problem,) = problems_of("default", ["levels.0.options.num_tokens=0"])
    assert problem.startswith("levels.0.options.num_tokens:")


@pytest.mark.parametrize(
    "item, expected",
    [
        ("levels.3.name=x", "--set levels.3.name=x: 'levels.3' is not an index of a list of 2"),
        ("levels.x.name=y", "--set levels.x.name=y: 'levels.x' is not an index of a list of 2"),
        ("model.x=1", "--set model.x=1: 'model' is not a mapping or list"),
        ("novalue", "--set novalue: expected key.path=value"),
        ("a..b=1", "--set a..b=1: empty key in 'a..b'"),
    ],
)
def test_bad_override_is_reported(item, expected):
    assert problems_of("default", [item]) == [expected]


def test_parse_override():
    assert parse_override("a.b.0.c=1.5") == (["a", "b", "0", "c"], 1.5)
    assert parse_override("x=") == (["x"], None)
    assert parse_override("x=a=b") == (["x"], "a=b")


# -- problems, all at once ------------------------------------------------------------------------

BAD = """\
# several problems at once
model: tests/fixtures/stories260K
max_new_tokens: lots
scheduler: {kind: chain, options: {k: 4, depth: 2}}
levels:
  - {name: a, kind: prompt_lookpu}
  - {name: b, kind: prompt_lookup, options: {num_tokenz: 3, max_ngram: many}}
sampling: {temperature: -1}
"""


def test_bad_file_reports_every_problem_at_once(tmp_path):
    path = write(tmp_path / "bad.yaml", BAD)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert isinstance(error, UserError) and error.source == str(path)
    assert sorted(error.problems) == sorted(
        [
            "max_new_tokens: Input should be a valid integer, unable to parse string as an integer",
            "sampling.temperature: Input should be greater than or equal to 0",
            "levels.0.kind: unknown strategy 'prompt_lookpu'; available: early_exit, layer_sparsity, max_gram, prompt_lookup, quanto_activation",
            "levels.1.options.num_tokenz: Extra inputs are not permitted",
            "levels.1.options.max_ngram: Input should be a valid integer, unable to parse string as an integer",
            "scheduler.options.depth: Extra inputs are not permitted",
        ]
    )
    message = str(error)
    assert message.startswith(f"invalid pipeline {path}:\n")
    for problem in error.problems:
        assert f"\n  {problem}" in message


def test_plugin_problems_only(tmp_path):
    path = write(
        tmp_path / "bad.yaml",
        """\
levels:
  - {name: a, kind: prompt_lookpu}
  - {name: b, kind: prompt_lookup, options: {min_ngram: 3, max_ngram: 2}}
verifier: exact
""",
    )
    assert problems_of(path) == [
        "levels.0.kind: unknown strategy 'prompt_lookpu'; available: early_exit, layer_sparsity, max_gram, prompt_lookup, quanto_activation",
        "levels.1.options: Value error, min_ngram (3) must not exceed max_ngram (2)",
        "verifier: unknown verifier 'exact'; available: greedy, sampling",
    ]


def test_single_problem_message_is_one_line(tmp_path):
    path = write(tmp_path / "one.yaml", "levels: [{name: a, kind: prompt_lookpu}]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"invalid pipeline {path}: levels.0.kind: unknown strategy 'prompt_lookpu'; "
        "available: early_exit, layer_sparsity, max_gram, prompt_lookup, quanto_activation"
    )


def test_structural_problems_have_dotted_locations():
    problems = sorted(
        problems_of(
            {"levels": [{"name": "a"}, {"name": "b", "kind": 3, "color": 1}], "device": "tpu", "sampling": {"top_p": 2}}
        )
    )
    assert problems == sorted(
        [
            "levels.0.kind: Field required",
            "levels.1.kind: Input should be a valid string",
            "levels.1.color: Extra inputs are not permitted",
            "device: Input should be 'auto', 'cpu' or 'cuda'",
            "sampling.top_p: Input should be less than or equal to 1",
        ]
    )


def test_unknown_top_level_key():
    assert problems_of({"modle": "x"}) == ["modle: Extra inputs are not permitted"]


def test_duplicate_level_names():
    data = {
        "scheduler": {"kind": "chain"},
        "levels": [
            {"name": "pld", "kind": "prompt_lookup"},
            {"name": "x", "kind": "prompt_lookup"},
            {"name": "pld", "kind": "prompt_lookup"},
        ],
    }
    assert problems_of(data) == ["levels.2.name: duplicate level name 'pld'"]


def test_chain_scheduler_naming_a_missing_level():
    data = {
        "scheduler": {"kind": "chain", "options": {"level": "nope"}},
        "levels": [{"name": "pld", "kind": "prompt_lookup"}],
    }
    assert problems_of(data) == ["scheduler.options.level: no level named 'nope'; levels: pld"]


def test_chain_scheduler_without_levels():
    assert problems_of({"scheduler": {"kind": "chain"}}) == [
        "levels: the chain scheduler needs one level to draft with"
    ]


def test_unknown_scheduler():
    (problem,) = problems_of({"scheduler": {"kind": "tree"}})
    assert (
        problem
        == "scheduler.kind: unknown scheduler 'tree'; available: autoregressive, chain, cs_drafting, dytc, lookup_tree, static_tree"
    )


def test_yaml_syntax_error_reports_a_line(tmp_path):
    path = write(tmp_path / "syntax.yaml", "model: x\nlevels: [1\n  x: : y\n")
    (problem,) = problems_of(path)
    assert problem.startswith("<yaml> line 3:"), problem


def test_yaml_root_must_be_a_mapping(tmp_path):
    path = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    assert problems_of(path) == ["<root>: expected a mapping, got list"]
    path = write(tmp_path / "scalar.yaml", "just text\n")
    assert problems_of(path) == ["<root>: expected a mapping, got str"]


def test_empty_file_is_the_empty_pipeline(tmp_path):
    path = write(tmp_path / "empty.yaml", "# nothing\n")
    config = load_config(path, ["scheduler.kind=autoregressive"])
    assert config.levels == [] and config.scheduler.kind == "autoregressive"


# -- safety of inputs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tag",
    [
        "!!python/object/apply:os.system",
        "!!python/object/new:os.system",
        "!!python/name:os.system",
        "!!python/object:collections.OrderedDict",
    ],
)
def test_a_python_tag_is_rejected_and_nothing_is_constructed(tmp_path, tag):
    flag = tmp_path / "constructed"
    path = write(tmp_path / "evil.yaml", f'model: x\nlevels: {tag} ["touch {flag}"]\n')
    (problem,) = problems_of(path)
    assert problem == (
        f"<yaml> line 2: tag '{tag}' is not allowed: a pipeline is plain data "
        "(mappings, lists, strings, numbers, booleans, null)"
    )
    assert not flag.exists()


def test_a_python_tag_in_an_override_is_rejected(tmp_path):
    flag = tmp_path / "constructed"
    item = f'model=!!python/object/apply:os.system ["touch {flag}"]'
    (problem,) = problems_of("default", [item])
    assert problem.startswith(f"--set {item}: tag '!!python/object/apply:os.system' is not allowed")
    assert not flag.exists()


@pytest.mark.parametrize(
    "parent",
    [
        "http://example.com/p.yaml",
        "https://example.com/p.yaml",
        "file:///etc/p.yaml",
        "ftp://example.com/p.yaml",
        "HTTPS://example.com/p.yaml",
        "file:/etc/p.yaml",
        "//host/share/p.yaml",
        "\\\\host\\share\\p.yaml",
        "s3://bucket/p.yaml",
    ],
)
def test_extends_cannot_reach_a_url_or_a_network_path(tmp_path, parent):
    path = write(tmp_path / "u.yaml", f"extends: '{parent}'\n")
    (problem,) = problems_of(path)
    assert problem == f"extends: '{parent}' is a URL or a network path; only local files and presets are allowed"
    with pytest.raises(ConfigError, match="is a URL or a network path"):
        load_config({"extends": parent})  # a mapping source is checked the same way


def test_extends_a_local_absolute_path_still_works(tmp_path):
    base = write(tmp_path / "base" / "b.yaml", "scheduler: {kind: autoregressive}\nmax_new_tokens: 4\n")
    child = write(tmp_path / "child.yaml", f"extends: {base}\n")
    assert load_config(child).max_new_tokens == 4


def test_a_problem_in_an_extended_file_names_that_file_and_line(tmp_path):
    base = write(tmp_path / "base.yaml", "model: x\nsampling: {temperature: 0\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_config(child)
    assert info.value.source == str(base)
    assert str(info.value).startswith(f"invalid pipeline {base}: <yaml> line 3:")


def test_a_bad_field_names_the_file_and_the_dotted_location(tmp_path):
    path = write(
        tmp_path / "bad.yaml",
        "scheduler: {kind: chain, options: {k: many}}\nlevels: [{name: pld, kind: prompt_lookup}]\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"invalid pipeline {path}: scheduler.options.k: "
        "Input should be a valid integer, unable to parse string as an integer"
    )
