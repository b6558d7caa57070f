"""The generated reference pages (docs/reference/) are current and complete, and every option is
documented: `cas_spec.docsgen` renders them from the pydantic models, the hookspecs and the plugin
base classes; these tests fail when the committed pages differ or something has no description."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from cas_spec.core.config import PipelineConfig
from cas_spec.core.plugins import HOOKS
from cas_spec.docsgen import REGENERATE
from cas_spec.docsgen.__main__ import main as docsgen_main
from cas_spec.docsgen.diagram import STEPS, draw
from cas_spec.docsgen.fields import constraints, default, field_table, nested_models, type_name
from cas_spec.docsgen.hooks_page import BASE_CLASSES, hookspecs_in_order
from cas_spec.docsgen.pages import pages, stale_pages
from cas_spec.docsgen.yaml_page import builtin_plugins, summary

DOCS = Path(__file__).parents[1] / "docs"


def config_models() -> list[type[BaseModel]]:
    """PipelineConfig and every model nested in it, at any depth."""
    found, todo = [], [PipelineConfig]
    while todo:
        model = todo.pop()
        if model not in found:
            found.append(model)
            todo += nested_models(model)
    return found


def option_models() -> dict[str, type[BaseModel]]:
    plugins = builtin_plugins()
    return {
        f"{registry.kind} '{name}'": registry.get(name).Options
        for registry in (plugins.strategies, plugins.schedulers, plugins.verifiers)
        for name in registry.names()
    }


def test_the_generated_pages_are_current():
    stale = stale_pages(DOCS)
    assert not stale, (
        f"stale generated pages: {', '.join('docs/' + p for p in stale)}; regenerate them from "
        f"the repository root with `.venv/bin/{REGENERATE}` and commit the result"
    )


def test_every_config_field_and_builtin_plugin_option_has_a_description():
    models = {f"pipeline model {m.__name__}": m for m in config_models()} | option_models()
    missing = [
        f"{owner}: {name}"
        for owner, model in models.items()
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not missing, "undocumented (add Field(description=...)):\n" + "\n".join(missing)


def test_every_builtin_plugin_has_a_summary():
    plugins = builtin_plugins()
    missing = [
        f"{registry.kind} '{name}'"
        for registry in (plugins.strategies, plugins.schedulers, plugins.verifiers, plugins.adapters)
        for name in registry.names()
        if not summary(registry.get(name))
    ]
    assert not missing, "no class or module docstring: " + ", ".join(missing)


def test_the_yaml_reference_has_every_field_and_every_option():
    text = (DOCS / "reference" / "yaml.md").read_text()
    for model in config_models():
        for name in model.model_fields:
            assert f"| `{name}` |" in text, f"{model.__name__}.{name} is not in the YAML reference"
    plugins = builtin_plugins()
    for registry in (plugins.strategies, plugins.schedulers, plugins.verifiers):
        for name in registry.names():
            section = text.split(f"### {registry.kind} `{name}`\n", 1)
            assert len(section) == 2, f"{registry.kind} '{name}' has no section in the YAML reference"
            body = section[1].split("\n#", 1)[0]
            for option in registry.get(name).Options.model_fields:
                assert f"| `{option}` |" in body, f"option '{option}' of {registry.kind} '{name}' is missing"
    for name in plugins.adapters.names():
        assert f"| `{name}` |" in text


def _members(cls: type) -> list[tuple[type, str]]:
    """(defining class, name) of every public method and property of `cls`, inherited ones included,
    as an author of a subclass sees them."""
    out = []
    for name in dir(cls):
        if name.startswith("_") and name != "__init__":
            continue
        definer = next(k for k in cls.__mro__ if name in vars(k))
        value = vars(definer)[name]
        if not definer.__module__.startswith("cas_spec"):
            continue
        if isinstance(value, property | classmethod | staticmethod) or inspect.isfunction(value):
            out.append((definer, name))
    return out


def test_the_hook_reference_has_every_hookspec_and_every_interface_method():
    text = (DOCS / "reference" / "hooks.md").read_text()
    specs = [spec.__name__ for spec in hookspecs_in_order()]
    assert sorted(specs) == sorted(HOOKS.values())  # the manager calls exactly these
    for name in specs:
        assert f"### `{name}(registry: Registry[" in text, f"hook {name} is not in the hook reference"
    for cls in BASE_CLASSES:
        for definer, name in _members(cls):
            assert f"#### `{definer.__name__}.{name}`" in text, (
                f"{definer.__name__}.{name} is not in the hook reference"
            )
        for name in getattr(cls, "__abstractmethods__", ()):
            assert f"*abstract method* `{name}(" in text, f"{cls.__name__}.{name} is not marked abstract"


class _Inner(BaseModel):
    a: int = Field(1, description="A.")


class _Toy(BaseModel):
    mode: Literal["auto", "off"] = Field("auto", description="Mode.")
    rate: float | None = Field(None, gt=0.0, le=1.0, description="Rate.")
    sizes: tuple[int, ...] = Field((1, 2), description="Sizes.")
    inner: _Inner = Field(default_factory=_Inner, description="Inner.")
    items: list[_Inner] = Field(default_factory=list, description="Items.")
    name: str = Field(description="Required.")


def test_field_rendering_spells_types_defaults_and_constraints_as_yaml():
    fields = _Toy.model_fields
    assert type_name(fields["mode"].annotation) == "one of `auto`, `off`"
    assert type_name(fields["rate"].annotation) == "number or null"
    assert type_name(fields["sizes"].annotation) == "list of integer"
    assert type_name(fields["items"].annotation, lambda m: f"[{m.__name__}]") == "list of [_Inner]"
    assert constraints(fields["rate"]) == "> 0.0, ≤ 1.0" and constraints(fields["mode"]) == ""
    assert [default(fields[n]) for n in ("mode", "rate", "sizes", "inner", "items", "name")] == [
        "auto",
        "null",
        "[1, 2]",
        "{a: 1}",
        "[]",
        None,
    ]
    assert nested_models(_Toy) == [_Inner]
    table = field_table(_Toy)
    assert "| `name` | string | required |  | Required. |" in table
    assert "| `rate` | number or null | `null` | > 0.0, ≤ 1.0 | Rate. |" in table


def test_the_generator_command_writes_and_checks_the_pages(tmp_path, capsys):
    assert docsgen_main(["--docs", str(tmp_path), "--check"]) == 1
    assert REGENERATE in capsys.readouterr().err
    assert docsgen_main(["--docs", str(tmp_path)]) == 0
    assert docsgen_main(["--docs", str(tmp_path), "--check"]) == 0
    (tmp_path / "reference" / "hooks.md").write_text("edited by hand\n")
    assert stale_pages(tmp_path) == ["reference/hooks.md"]
    assert sorted(pages()) == sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.md"))


def test_the_step_diagram_names_methods_that_exist_and_is_in_the_concepts():
    for _owner, path, method, _text in STEPS:
        module, name = path.rsplit(".", 1)
        assert callable(getattr(getattr(importlib.import_module(module), name), method, None)), f"{path}.{method}"
    assert "](images/step.png)" in (DOCS / "concepts.md").read_text()
    assert (DOCS / "images" / "step.png").is_file()


def test_the_step_diagram_draws(tmp_path):
    path = draw(tmp_path / "step.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
