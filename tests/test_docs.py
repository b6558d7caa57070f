"""The docs stay true: every pipeline field and every built-in plugin option is documented."""

from __future__ import annotations

from pathlib import Path

from cas_spec.core.config import PipelineConfig, SamplingConfig, load_config
from cas_spec.core.plugins import build_plugins

DOCS = Path(__file__).parents[1] / "docs"


def test_every_pipeline_field_and_plugin_option_is_in_the_yaml_reference():
    text = (DOCS / "pipelines.md").read_text()
    for field in [*PipelineConfig.model_fields, *SamplingConfig.model_fields]:
        assert f"{field}:" in text, f"pipeline field '{field}' is not documented"
    plugins = build_plugins(entry_points=())
    for registry in (plugins.strategies, plugins.schedulers):
        for name in registry.names():
            assert f"`{name}`" in text, f"{registry.kind} '{name}' is not documented"
            for option in registry.get(name).Options.model_fields:
                assert f"`{option}`" in text, f"option '{option}' of {registry.kind} '{name}' is not documented"


def test_the_yaml_reference_example_validates(tmp_path):
    text = (DOCS / "pipelines.md").read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "my-pipeline.yaml"
    path.write_text(example)
    config = load_config(path)
    assert config.levels[0].kind == "prompt_lookup"


def test_the_readme_pipeline_is_the_default_preset():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    import yaml

    assert load_config(yaml.safe_load(example)) == load_config("default")
