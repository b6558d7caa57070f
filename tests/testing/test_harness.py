"""The kit's instruments: the model snapshot sees every kind of leftover change, the tripwire fires
where it says, the recorder sees what the engine verified, the cache check finds a corrupted
cache, and the plugin set finds a plugin wherever it is registered."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import pytest
import torch

from cas_spec.core.hookspecs import hookimpl
from cas_spec.core.types import SamplingParams
from cas_spec.strategies.prompt_lookup import PromptLookup
from cas_spec.testing import harness
from cas_spec.testing.models import repetitive_prompt, tiny_model

PROMPT = repetitive_prompt(0, 96)
EXIT = {
    "scheduler": {"kind": "chain", "options": {"k": 4, "adaptive": False}},
    "calibration": "off",
    "levels": [{"name": "exit", "kind": "early_exit", "options": {"exit_layer": 2}}],
}
PLD = {**EXIT, "levels": [{"name": "pld", "kind": "prompt_lookup"}]}
PLAIN = {"scheduler": {"kind": "autoregressive"}, "calibration": "off"}


def pipeline(config, architecture="llama"):
    return harness.build_pipeline(config, tiny_model(architecture), harness.plugin_set("chain", "scheduler"))


# -- ModelSnapshot --------------------------------------------------------------------------------
def _inplace(model):
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1.0


def _swap(model):
    model.model.layers[1].mlp = torch.nn.Identity()


def _patch(model):
    model.model.norm.forward = lambda x: x


def _config(model):
    model.config.rms_norm_eps = 0.5


def _train(model):
    model.model.layers[0].train()


@pytest.mark.parametrize(
    "change, message",
    [
        (_inplace, "parameters or buffers changed: ['lm_head.weight']"),
        (_swap, "modules replaced"),
        (_patch, "methods patched"),
        (_config, "config changed"),
        (_train, "training mode"),
        (lambda m: m.model.norm.register_forward_pre_hook(lambda mod, args: None), "hooks changed"),
    ],
)
def test_the_snapshot_sees_each_kind_of_leftover(change, message):
    model = tiny_model("llama")
    before = harness.ModelSnapshot.take(model)
    assert before.differences(harness.ModelSnapshot.take(model)) == []
    change(model)
    assert any(message in d for d in before.differences(harness.ModelSnapshot.take(model)))


def test_the_snapshot_sees_global_grad_mode():
    model = tiny_model("llama")
    before = harness.ModelSnapshot.take(model)
    with torch.no_grad():
        after = harness.ModelSnapshot.take(model)
    assert any("grad mode" in d for d in before.differences(after))


# -- Tripwire -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config, step, forward, where",
    [
        (EXIT, 1, 2, "inside model forward 2 of draft"),
        (EXIT, 2, 9, "after draft returned (4 model forwards)"),
        (PLD, 1, 1, "after draft returned (0 model forwards)"),
        (PLAIN, 2, 1, "when build_tree returned"),
    ],
)
def test_the_tripwire_fires_where_it_says_and_leaves_nothing_behind(config, step, forward, where):
    pipe = pipeline(config)
    recorder = harness.Recorder(pipe)
    with harness.Tripwire(pipe, step=step, forward=forward) as wire:
        with pytest.raises(harness.InjectedFault):
            pipe.generate(PROMPT, max_new_tokens=16)
    assert wire.fired.startswith(where) and len(recorder.steps) == step - 1
    assert "build_tree" not in vars(pipe.scheduler)
    assert all("draft" not in vars(lv.strategy) and "review" not in vars(lv.strategy) for lv in pipe.levels)
    assert pipe.adapter.embed_tokens._forward_pre_hooks == {}


def test_the_tripwire_does_not_fire_before_its_step():
    pipe = pipeline(PLD)
    with harness.Tripwire(pipe, step=100) as wire:
        pipe.generate(PROMPT, max_new_tokens=8)
    assert wire.fired is None


def test_a_plugin_that_swallows_the_fault_is_caught():
    class Swallower(PromptLookup):
        def draft(self, state, prefix, max_tokens):
            try:
                pipe.model(input_ids=torch.tensor([[5]]))
            except BaseException:
                pass
            return super().draft(state, prefix, max_tokens)

    pipe = pipeline(PLD)
    pipe.levels[0].strategy.__class__ = Swallower
    with harness.Tripwire(pipe, step=1), pytest.raises(AssertionError, match="swallowed"):
        pipe.generate(PROMPT, max_new_tokens=8)


# -- Recorder, cache check, prepared state --------------------------------------------------------
def test_the_recorder_sees_every_verified_step_and_can_stop_after_the_first():
    pipe = pipeline(EXIT, "gemma3")
    recorder = harness.Recorder(pipe)
    result = pipe.generate(PROMPT, max_new_tokens=20)
    assert len(recorder.steps) == result.stats.target_forwards and recorder.committed() == result.token_ids
    first = recorder.first_step(pipe, PROMPT, 20, seed=None)
    assert len(recorder.steps) == 1 and first.tree.size > 1 and first.target_logits.shape[0] == first.tree.size
    assert harness.cache_problems(pipe, PROMPT + result.token_ids) != []  # it stopped there


def test_the_cache_check_passes_after_generation_and_finds_a_corrupted_entry():
    pipe = pipeline(EXIT, "gemma3")
    result = pipe.generate(PROMPT, max_new_tokens=20)
    committed = PROMPT + result.token_ids
    assert harness.cache_problems(pipe, committed) == []
    assert harness.cache_problems(pipe, committed + [5])[0].startswith("target.length is")
    with torch.inference_mode():
        pipe.target.cache.layers[2].keys[..., 3, :] += 0.1
    assert any(p.startswith("layer 2 keys differ") for p in harness.cache_problems(pipe, committed))


def test_a_prepared_state_lets_a_strategy_draft_by_hand():
    pipe = pipeline(EXIT)
    state = harness.prepared_state(pipe, PROMPT, SamplingParams(temperature=1.0, seed=3))
    assert state.tokens == PROMPT and pipe.target.length == len(PROMPT) - 1
    result = pipe.levels[0].strategy.draft(state, (), 3)
    assert len(result) == 3 and result.draft_probs.shape == (3, 96)


# -- plugin sets ----------------------------------------------------------------------------------
def test_plugin_sets_find_built_ins_extras_and_installed_entry_points(monkeypatch):
    class Lookup2(PromptLookup):
        name = "lookup_two"

    class Plugin:
        @hookimpl
        def register_strategies(self, registry):
            registry.add(Lookup2)

    monkeypatch.setattr(harness, "_PLUGIN_SETS", [])
    assert "prompt_lookup" in harness.plugin_set("prompt_lookup", "strategy").strategies
    plugin = Plugin()
    assert harness.plugin_set("lookup_two", "strategy", [plugin]).strategies.get("lookup_two") is Lookup2

    module = types.ModuleType("cas_spec_fake_installed")
    module.plugin = plugin
    monkeypatch.setitem(sys.modules, module.__name__, module)
    point = importlib.metadata.EntryPoint("fake", f"{module.__name__}:plugin", "cas_spec")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda *, group: [point] if group == "cas_spec" else [])
    assert "lookup_two" in harness.plugin_set("lookup_two", "strategy").strategies
