"""The plugin manager: built-ins, third-party entry points, broken plugins, the allow-list."""

from __future__ import annotations

import importlib.metadata
import itertools
import sys
import textwrap
import types

import pytest

from cas_spec.core import plugins as plugins_module
from cas_spec.core.config import validate
from cas_spec.core.errors import ConfigError, UnknownPluginError, UserError
from cas_spec.core.hookspecs import hookimpl
from cas_spec.core.interfaces import DraftStrategy, Scheduler
from cas_spec.core.plugins import build_plugins, get_plugins
from cas_spec.core.registry import Registry
from cas_spec.strategies.prompt_lookup import PromptLookup
from tests.helpers import IdTokenizer, tiny_llama

BUILTINS = {
    "strategy": ["early_exit", "layer_sparsity", "max_gram", "prompt_lookup", "quanto_activation"],
    "scheduler": ["autoregressive", "chain", "cs_drafting", "dytc", "lookup_tree", "static_tree"],
    "verifier": ["greedy", "sampling"],
    "adapter": ["gemma3", "llama", "phi3"],
}
BUILTIN_MODULES = ["cas_spec.strategies", "cas_spec.schedulers", "cas_spec.verifiers", "cas_spec.adapters"]

# A third-party plugin module: a strategy `NAME` that repeats the newest token `times` times.
STRATEGY_PLUGIN = """
from pydantic import BaseModel, ConfigDict, Field

from cas_spec.core.hookspecs import hookimpl
from cas_spec.core.interfaces import DraftStrategy
from cas_spec.core.types import DraftResult


class RepeatOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    times: int = Field(2, ge=1, le=8)


class RepeatLast(DraftStrategy):
    name = "NAME"
    Options = RepeatOptions

    def draft(self, state, prefix, max_tokens):
        last = prefix[-1] if prefix else state.tokens[-1]
        return DraftResult(tokens=(last,) * min(self.options.times, max_tokens))


class plugin:
    @staticmethod
    @hookimpl
    def register_strategies(registry):
        registry.add(RepeatLast)


@hookimpl
def register_strategies(registry):  # the module itself is a plugin too
    registry.add(RepeatLast)
"""

_counter = itertools.count()


@pytest.fixture
def make_module(tmp_path, monkeypatch):
    """Write a module into a folder on sys.path; returns its (unique) name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    created: list[str] = []

    def make(source: str) -> str:
        name = f"cas_spec_test_plugin_{next(_counter)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        created.append(name)
        return name

    yield make
    for name in created:
        sys.modules.pop(name, None)


def entry_point(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group="cas_spec")


def strategy_plugin(make_module, strategy_name: str = "repeat_last") -> str:
    return make_module(STRATEGY_PLUGIN.replace('"NAME"', repr(strategy_name)))


def names(plugins) -> dict[str, list[str]]:
    return {kind: plugins.registry(kind).names() for kind in BUILTINS}


@pytest.fixture(autouse=True)
def _no_allow_list(monkeypatch):
    monkeypatch.delenv("CAS_SPEC_PLUGINS", raising=False)
    monkeypatch.delenv("CAS_SPEC_LOAD_ENTRYPOINTS", raising=False)


# -- built-ins ------------------------------------------------------------------------------------


def test_builtins_are_registered():
    plugins = build_plugins()
    assert names(plugins) == BUILTINS
    assert plugins.loaded == BUILTIN_MODULES
    assert plugins.broken == {}
    assert plugins.strategies.get("prompt_lookup") is PromptLookup
    assert plugins.strategies.owner("prompt_lookup") == "cas_spec.strategies"
    assert plugins.adapters.owner("llama") == "cas_spec.adapters"
    assert issubclass(plugins.schedulers.get("chain"), Scheduler)


def test_get_plugins_is_built_once():
    assert get_plugins() is get_plugins()
    assert names(get_plugins()) == BUILTINS


def test_unknown_names_list_the_available_ones():
    plugins = build_plugins()
    with pytest.raises(
        UnknownPluginError,
        match=r"^unknown strategy 'nope'; available: early_exit, layer_sparsity, max_gram, prompt_lookup, quanto_activation$",
    ):
        plugins.strategies.get("nope")
    with pytest.raises(
        UnknownPluginError,
        match=r"^unknown scheduler 'tree'; available: autoregressive, chain, cs_drafting, dytc, lookup_tree, static_tree$",
    ):
        plugins.schedulers.get("tree")
    with pytest.raises(UnknownPluginError, match=r"^unknown adapter 'gpt2'; available: gemma3, llama, phi3$"):
        plugins.registry("adapter").get("gpt2")
    assert issubclass(UnknownPluginError, UserError)
    assert Registry("strategy", DraftStrategy).unknown_message("x") == "unknown strategy 'x'; available: none"


# -- third-party plugins --------------------------------------------------------------------------


def pipeline_using(kind: str, **options) -> dict:
    return {
        "scheduler": {"kind": "chain", "options": {"level": "third", "k": 4}},
        "levels": [{"name": "third", "kind": kind, "options": options}],
    }


def test_entry_point_plugin_registers_a_strategy_that_validates(make_module):
    module = strategy_plugin(make_module)
    plugins = build_plugins([entry_point("repeat", f"{module}:plugin")])
    assert plugins.broken == {}
    assert plugins.loaded == [*BUILTIN_MODULES, "repeat"]
    assert plugins.strategies.names() == sorted([*BUILTINS["strategy"], "repeat_last"])
    assert plugins.strategies.owner("repeat_last") == "repeat"
    config = validate(pipeline_using("repeat_last", times=3), plugins=plugins)
    assert config.levels[0].kind == "repeat_last"
    with pytest.raises(ConfigError) as info:
        validate(pipeline_using("repeat_last", times=0, color=1), plugins=plugins)
    assert sorted(info.value.problems) == [
        "levels.0.options.color: Extra inputs are not permitted",
        "levels.0.options.times: Input should be greater than or equal to 1",
    ]
    # the process-wide plugin set (no third-party plugin) does not know it
    with pytest.raises(
        ConfigError,
        match="unknown strategy 'repeat_last'; available: early_exit, layer_sparsity, max_gram, prompt_lookup, quanto_activation",
    ):
        validate(pipeline_using("repeat_last"))


def test_a_module_can_be_the_plugin(make_module):
    module = strategy_plugin(make_module)
    plugins = build_plugins([entry_point("repeat", module)])
    assert "repeat_last" in plugins.strategies and plugins.broken == {}


def test_third_party_strategy_runs_in_a_pipeline_losslessly(make_module):
    from cas_spec.core.config import PipelineConfig
    from cas_spec.pipeline import build_pipeline

    module = strategy_plugin(make_module)
    plugins = build_plugins([entry_point("repeat", f"{module}:plugin")])
    model, tokenizer = tiny_llama(3), IdTokenizer()
    prompt = [5, 6, 7, 7, 7, 8]
    spec = build_pipeline(
        validate({**pipeline_using("repeat_last", times=3), "threads": None}, plugins=plugins),
        model,
        tokenizer,
        plugins=plugins,
    )
    plain = build_pipeline(PipelineConfig(scheduler={"kind": "autoregressive"}, threads=None), model, tokenizer)
    got = spec.generate(prompt, max_new_tokens=24)
    assert got.token_ids == plain.generate(prompt, max_new_tokens=24).token_ids
    assert got.stats.levels["third"].calls > 0 and got.stats.levels["third"].drafted > 0


def test_extra_objects_are_plugins(make_module):
    module = importlib.import_module(strategy_plugin(make_module))
    plugins = build_plugins([], extra=[module.plugin])
    assert "repeat_last" in plugins.strategies
    assert plugins.strategies.owner("repeat_last") == "plugin"  # its __name__


def test_plugin_that_fails_to_import_is_recorded_as_broken(make_module):
    good = strategy_plugin(make_module)
    bad = make_module("import cas_spec_no_such_dependency_xyz\n")
    plugins = build_plugins(
        [
            entry_point("bad", f"{bad}:plugin"),
            entry_point("good", f"{good}:plugin"),
            entry_point("missing", f"{good}:no_such_attribute"),
        ]
    )
    assert plugins.broken == {
        "bad": "ModuleNotFoundError: No module named 'cas_spec_no_such_dependency_xyz'",
        "missing": f"AttributeError: module '{good}' has no attribute 'no_such_attribute'",
    }
    assert plugins.loaded == [*BUILTIN_MODULES, "good"]
    assert plugins.strategies.names() == sorted([*BUILTINS["strategy"], "repeat_last"])
    assert names(plugins)["scheduler"] == BUILTINS["scheduler"]
    validate(pipeline_using("repeat_last"), plugins=plugins)


def test_plugin_whose_hook_raises_is_recorded_as_broken(make_module):
    good = strategy_plugin(make_module)
    raising = make_module("""
        from cas_spec.core.hookspecs import hookimpl

        @hookimpl
        def register_schedulers(registry):
            raise RuntimeError("boom")
    """)
    plugins = build_plugins([entry_point("raising", raising), entry_point("good", f"{good}:plugin")])
    assert plugins.broken == {"raising": "RuntimeError: boom"}
    assert "raising" not in plugins.loaded and "good" in plugins.loaded
    assert names(plugins) == {**BUILTINS, "strategy": sorted([*BUILTINS["strategy"], "repeat_last"])}


def test_plugin_with_a_bad_hook_signature_is_recorded_as_broken(make_module):
    bad = make_module("""
        from cas_spec.core.hookspecs import hookimpl

        @hookimpl
        def register_strategies(reg):
            pass
    """)
    plugins = build_plugins([entry_point("bad", bad)])
    assert list(plugins.broken) == ["bad"]
    assert plugins.broken["bad"].startswith("PluginValidationError:")
    assert names(plugins) == BUILTINS


def test_plugin_with_a_misspelt_hook_is_broken_not_fatal(make_module):
    good = strategy_plugin(make_module)
    typo = make_module("""
        from cas_spec.core.hookspecs import hookimpl

        @hookimpl
        def register_stratgies(registry):
            pass
    """)
    plugins = build_plugins([entry_point("typo", typo), entry_point("good", f"{good}:plugin")])
    assert list(plugins.broken) == ["typo"]
    assert "register_stratgies" in plugins.broken["typo"]
    assert "typo" not in plugins.loaded and "repeat_last" in plugins.strategies


def test_duplicate_strategy_name_from_two_plugins_names_both(make_module):
    first, second = strategy_plugin(make_module), strategy_plugin(make_module)
    plugins = build_plugins([entry_point("first", f"{first}:plugin"), entry_point("second", f"{second}:plugin")])
    assert plugins.broken == {"second": "ValueError: strategy 'repeat_last' registered twice: by first and by second"}
    assert plugins.strategies.owner("repeat_last") == "first"
    assert plugins.loaded == [*BUILTIN_MODULES, "first"]


def test_plugin_cannot_take_over_a_builtin_name(make_module):
    module = strategy_plugin(make_module, "prompt_lookup")
    plugins = build_plugins([entry_point("usurper", f"{module}:plugin")])
    assert plugins.broken == {
        "usurper": "ValueError: strategy 'prompt_lookup' registered twice: by cas_spec.strategies and by usurper"
    }
    assert plugins.strategies.get("prompt_lookup") is PromptLookup


def test_registry_rejects_duplicates_and_non_plugins():
    registry = Registry("strategy", DraftStrategy)
    registry.current_owner = "a"
    registry.add(PromptLookup)
    registry.add(PromptLookup)  # the same class again is harmless
    clone = type("Clone", (PromptLookup,), {})
    registry.current_owner = "b"
    with pytest.raises(ValueError, match="strategy 'prompt_lookup' registered twice: by a and by b"):
        registry.add(clone)
    with pytest.raises(TypeError, match="not a subclass of DraftStrategy"):
        registry.add(int)
    with pytest.raises(TypeError, match="must declare a non-empty string attribute 'name'"):
        registry.add(type("Nameless", (PromptLookup,), {"name": ""}))


# -- the allow-list and entry-point discovery -----------------------------------------------------


def test_allow_list_empty_loads_no_entry_point(make_module, monkeypatch):
    module = strategy_plugin(make_module)
    bad = make_module("raise ImportError('never imported')\n")
    monkeypatch.setenv("CAS_SPEC_PLUGINS", "")
    plugins = build_plugins([entry_point("repeat", f"{module}:plugin"), entry_point("bad", bad)])
    assert plugins.loaded == BUILTIN_MODULES and plugins.broken == {}
    assert names(plugins) == BUILTINS


def test_allow_list_names_only_those(make_module, monkeypatch):
    one, two = strategy_plugin(make_module, "one"), strategy_plugin(make_module, "two")
    bad = make_module("raise ImportError('never imported')\n")
    eps = [entry_point("one", f"{one}:plugin"), entry_point("two", f"{two}:plugin"), entry_point("bad", bad)]
    monkeypatch.setenv("CAS_SPEC_PLUGINS", " two , nothing-else ")
    plugins = build_plugins(eps)
    assert plugins.strategies.names() == sorted([*BUILTINS["strategy"], "two"])
    assert plugins.loaded == [*BUILTIN_MODULES, "two"] and plugins.broken == {}
    monkeypatch.setenv("CAS_SPEC_PLUGINS", "one,two")
    assert build_plugins(eps).strategies.names() == sorted([*BUILTINS["strategy"], "one", "two"])


def test_allow_list_does_not_apply_to_extra_objects(make_module, monkeypatch):
    module = importlib.import_module(strategy_plugin(make_module))
    monkeypatch.setenv("CAS_SPEC_PLUGINS", "")
    assert "repeat_last" in build_plugins([], extra=[module.plugin]).strategies


@pytest.fixture
def installed(make_module, monkeypatch):
    """Pretend one plugin is installed: `importlib.metadata.entry_points(group=...)` returns it."""
    module = strategy_plugin(make_module)
    eps = [entry_point("repeat", f"{module}:plugin")]
    asked: list[str] = []

    def fake_entry_points(*, group):
        asked.append(group)
        return eps if group == "cas_spec" else []

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    return asked


def test_entry_points_are_not_loaded_under_pytest_by_default(installed, monkeypatch):
    assert "repeat_last" not in build_plugins().strategies
    monkeypatch.setenv("CAS_SPEC_LOAD_ENTRYPOINTS", "0")
    assert "repeat_last" not in build_plugins().strategies
    assert installed == []  # not even looked up


def test_entry_points_load_under_pytest_when_asked(installed, monkeypatch):
    monkeypatch.setenv("CAS_SPEC_LOAD_ENTRYPOINTS", "1")
    plugins = build_plugins()
    assert installed == ["cas_spec"]
    assert "repeat_last" in plugins.strategies and plugins.loaded[-1] == "repeat"
    monkeypatch.setenv("CAS_SPEC_PLUGINS", "")  # the allow-list still applies
    assert "repeat_last" not in build_plugins().strategies


def test_entry_points_load_by_default_outside_pytest(installed, monkeypatch):
    monkeypatch.delitem(sys.modules, "pytest")
    assert plugins_module._entry_points_enabled()
    plugins = build_plugins()
    assert "repeat_last" in plugins.strategies


def test_the_package_declares_no_builtin_entry_points():
    """Built-ins register as modules, so an installed cas-spec has nothing in its own group."""
    eps = importlib.metadata.entry_points(group="cas_spec")
    assert all(not ep.value.startswith("cas_spec.") for ep in eps)


def test_any_object_with_hook_functions_is_a_plugin():
    class LocalStrategy(PromptLookup):
        name = "local"

    plugin = types.SimpleNamespace(__name__="local-plugin")
    plugin.register_strategies = hookimpl(lambda registry: registry.add(LocalStrategy))
    plugins = build_plugins([], extra=[plugin])
    assert plugins.strategies.owner("local") == "local-plugin"
    assert plugins.loaded == [*BUILTIN_MODULES, "local-plugin"]


def test_a_plugin_that_fails_midway_registers_nothing(tmp_path, monkeypatch):
    """Classes a plugin added before its hook raised are withdrawn with it."""
    from cas_spec.core.hookspecs import hookimpl
    from cas_spec.core.interfaces import DraftStrategy
    from cas_spec.core.plugins import build_plugins

    class Half(DraftStrategy):
        name = "half_registered"

        def draft(self, state, prefix, max_tokens):
            raise AssertionError

    class Plugin:
        __name__ = "half_plugin"

        @hookimpl
        def register_strategies(self, registry):
            registry.add(Half)
            raise RuntimeError("second class failed")

    plugins = build_plugins(entry_points=(), extra=[Plugin()])
    assert "half_registered" not in plugins.strategies
    assert plugins.broken["half_plugin"] == "RuntimeError: second class failed"
    assert "prompt_lookup" in plugins.strategies


def test_an_entry_point_outside_the_allow_list_is_never_imported(make_module, monkeypatch, tmp_path):
    """Discovered through importlib.metadata like an installed package: not named in
    CAS_SPEC_PLUGINS, its module is not imported at all (its import would leave a flag)."""
    flag = tmp_path / "imported"
    spy = make_module(f"open({str(flag)!r}, 'w').close()\n" + STRATEGY_PLUGIN.replace('"NAME"', "'spied'"))
    allowed = strategy_plugin(make_module)
    eps = [entry_point("spy", f"{spy}:plugin"), entry_point("allowed", f"{allowed}:plugin")]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda *, group: eps if group == "cas_spec" else [])
    monkeypatch.setenv("CAS_SPEC_LOAD_ENTRYPOINTS", "1")
    monkeypatch.setenv("CAS_SPEC_PLUGINS", "allowed")
    plugins = build_plugins()
    assert not flag.exists() and spy not in sys.modules
    assert plugins.loaded == [*BUILTIN_MODULES, "allowed"] and plugins.broken == {}
    assert "spied" not in plugins.strategies and "repeat_last" in plugins.strategies
    monkeypatch.setenv("CAS_SPEC_PLUGINS", "allowed,spy")  # the control: once allowed, it is imported
    assert "spied" in build_plugins().strategies and flag.exists()
