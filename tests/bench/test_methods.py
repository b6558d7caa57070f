"""`--methods`: presets, YAML files and transformers baselines, checked before any model loads."""

from __future__ import annotations

import pytest

from cas_spec.bench.runners import DEFAULT_METHODS, MethodError, parse_methods
from cas_spec.core.errors import UserError


def names(text: str) -> list[str]:
    return [spec.name for spec in parse_methods(text)]


def test_default_methods_with_autoregressive_first():
    specs = parse_methods(DEFAULT_METHODS)
    assert [(s.name, s.kind) for s in specs] == [
        ("autoregressive", "engine"),
        ("default", "engine"),
        ("hf:greedy", "hf"),
        ("hf:prompt_lookup", "hf"),
    ]
    assert specs[3].hf_kwargs == {"prompt_lookup_num_tokens": 10}


def test_hf_greedy_joins_any_transformers_baseline_and_autoregressive_is_not_repeated():
    assert names("hf:early_exit:3") == ["autoregressive", "hf:greedy", "hf:early_exit:3"]
    assert parse_methods("hf:early_exit:03")[-1].hf_kwargs == {"assistant_early_exit": 3}
    assert names("autoregressive,default") == ["autoregressive", "default"]


def test_a_yaml_file_is_named_after_its_stem(tmp_path):
    path = tmp_path / "pld3.yaml"
    path.write_text(
        "extends: prompt-lookup\nscheduler: {options: {k: 3}}\nlevels:\n"
        "  - {name: pld, kind: prompt_lookup, options: {num_tokens: 3}}\n"
    )
    (spec,) = parse_methods(str(path))[1:]
    assert (spec.name, spec.kind, spec.source) == ("pld3", "engine", str(path))


@pytest.mark.parametrize(
    "text,fragments",
    [
        (
            "default,defualt",
            [
                "--methods entry 'defualt'",
                "no file or preset named 'defualt'",
                "presets: autoregressive, cas-spec, cs-drafting, default",
            ],
        ),
        ("hf:early_exit:x", ["--methods entry 'hf:early_exit:x'", "positive integer"]),
        ("hf:early_exit:0", ["--methods entry 'hf:early_exit:0'", "positive integer"]),
        ("hf:early_exit:", ["--methods entry 'hf:early_exit:'", "positive integer"]),
        (
            "hf:prompt-lookup",
            [
                "--methods entry 'hf:prompt-lookup'",
                "unknown transformers baseline",
                "hf:greedy, hf:prompt_lookup, hf:early_exit:E",
            ],
        ),
        ("missing.yaml", ["--methods entry 'missing.yaml'", "no such pipeline file"]),
        ("default,,hf:greedy", ["empty entry"]),
        ("default,default", ["--methods entry 'default'", "the name 'default' is taken"]),
    ],
)
def test_a_malformed_entry_is_a_user_error_naming_it(text, fragments):
    with pytest.raises(MethodError) as info:
        parse_methods(text)
    assert isinstance(info.value, UserError)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_an_invalid_pipeline_file_names_the_entry_and_the_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("levels:\n  - {name: pld, kind: prompt_lookpu}\n")
    with pytest.raises(MethodError) as info:
        parse_methods(f"default,{path}")
    assert f"--methods entry '{path}': " in str(info.value)
    assert "levels.0.kind: unknown strategy 'prompt_lookpu'" in str(info.value)


def test_the_ablation_method_set_stands_for_the_papers_seven_schedulers_over_one_hierarchy():
    specs = parse_methods("ablation")
    assert [s.name for s in specs] == ["autoregressive", "ls", "vc", "hc", "vc-hc", "tr", "tr-vc", "dytc"]
    from cas_spec.core.config import load_config

    configs = [load_config(spec.source) for spec in specs[1:]]
    assert len({tuple((lv.name, lv.kind) for lv in config.levels) for config in configs}) == 1
    assert [c.scheduler.kind for c in configs] == [
        "chain",
        "cs_drafting",
        "cs_drafting",
        "cs_drafting",
        "static_tree",
        "cs_drafting",
        "dytc",
    ]
    assert [c.scheduler.options.get("cascade") for c in configs[1:4]] == ["vertical", "horizontal", "both"]
    assert configs[5].scheduler.options["tree"] is True
