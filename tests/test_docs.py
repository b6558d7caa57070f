"""The docs stay true: the pipelines guide covers every key, kind and option, its example and the
README's validate, the quickstart documents every statistic, every repository path the docs name
exists, every page is in the site's navigation, and the site builds without a warning."""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import cas_spec
from cas_spec.core.config import PipelineConfig, SamplingConfig, load_config
from cas_spec.core.plugins import build_plugins
from cas_spec.core.types import GenerationStats, LevelStats
from cas_spec.pipeline import GenerationResult

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
REPO_PATH = re.compile(r"`((?:tests|src|benchmarks|docs|examples)/[\w./-]*)`")


def nav_pages(nav) -> list[str]:
    """The page paths of an mkdocs `nav` (nested lists of {title: page or list})."""
    out = []
    for item in nav:
        for value in item.values() if isinstance(item, dict) else [item]:
            out += nav_pages(value) if isinstance(value, list) else [value]
    return out


def mkdocs_config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def test_every_pipeline_field_and_plugin_option_is_in_the_pipelines_guide():
    text = (DOCS / "pipelines.md").read_text()
    for field in [*PipelineConfig.model_fields, *SamplingConfig.model_fields]:
        assert f"{field}:" in text, f"pipeline field '{field}' is not documented"
    plugins = build_plugins(entry_points=())
    for registry in (plugins.strategies, plugins.schedulers):
        for name in registry.names():
            assert f"`{name}`" in text, f"{registry.kind} '{name}' is not documented"
            for option in registry.get(name).Options.model_fields:
                assert f"`{option}`" in text, f"option '{option}' of {registry.kind} '{name}' is not documented"


def test_the_pipelines_guide_example_validates(tmp_path):
    text = (DOCS / "pipelines.md").read_text()
    example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "my-pipeline.yaml"
    path.write_text(example)
    config = load_config(path)
    assert config.levels[0].kind == "prompt_lookup"


def test_the_readme_pipeline_is_the_default_preset():
    readme = (ROOT / "README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    assert load_config(yaml.safe_load(example)) == load_config("default")


def test_the_quickstart_documents_every_result_field_and_statistic():
    text = (DOCS / "index.md").read_text()
    stats = [f.name for f in dataclasses.fields(GenerationStats)]
    stats += [name for name, value in vars(GenerationStats).items() if isinstance(value, property)]
    fields = [f.name for f in dataclasses.fields(GenerationResult)] + stats
    fields += [f.name for f in dataclasses.fields(LevelStats)]
    missing = [name for name in fields if f"`{name}`" not in text]
    assert not missing, f"docs/index.md does not document: {', '.join(missing)}"


def test_every_repository_path_the_docs_name_exists():
    missing = [
        f"docs/{page.relative_to(DOCS)}: {path}"
        for page in sorted(DOCS.rglob("*.md"))
        for path in REPO_PATH.findall(page.read_text())
        if not (ROOT / path).exists()
    ]
    assert not missing, "named in the docs but not in the repository:\n" + "\n".join(missing)


def test_the_navigation_and_the_pages_agree():
    nav = nav_pages(mkdocs_config()["nav"])
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert len(nav) == len(set(nav)), "a page is in the nav twice"
    assert not sorted(set(nav) - pages), f"the nav names pages that do not exist: {sorted(set(nav) - pages)}"
    assert not sorted(pages - set(nav)), f"pages missing from the nav of mkdocs.yml: {sorted(pages - set(nav))}"


@pytest.mark.slow
def test_the_site_builds_without_a_warning(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert (tmp_path / "site" / "reference" / "yaml" / "index.html").is_file()


def test_the_quickstart_documents_every_parameter_of_the_python_api():
    text = (DOCS / "index.md").read_text()
    for function in (cas_spec.load_pipeline, cas_spec.Pipeline.generate, cas_spec.generate):
        for name in inspect.signature(function).parameters:
            if name != "self":
                assert re.search(rf"\b{name}\b", text), (
                    f"docs/index.md does not document {function.__qualname__}({name})"
                )
