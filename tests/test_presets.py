"""Every shipped preset, as shipped (scheduler, gate and levels), decodes greedily token for
token like plain decoding: on the stories fixture, on SmolLM2-135M with one prompt per
Spec-Bench group, and on Gemma 3 270M with a prompt that crosses its 512-token sliding window."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cas_spec import load_pipeline
from cas_spec.core.config import preset_names
from tests.helpers import LONG_PROMPT

PRESETS = [name for name in preset_names() if name != "autoregressive"]
SPEC_BENCH = [
    json.loads(line)
    for line in (Path(__file__).parent / "data" / "spec_bench_one_per_group.jsonl").read_text().splitlines()
]
STORY_PROMPT = "Tom had a big red ball. Tom had a big red ball. He"


def test_the_presets_under_test_include_the_schedulers_of_issue_7():
    assert {"cas-spec", "cs-drafting", "static-tree", "lookup-tree", "default"} <= set(PRESETS)


STORIES_OVERRIDES = {"early-exit": ["levels.0.options.exit_layer=2"]}  # the preset exits at SmolLM2's layer 15


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_equals_plain_greedy_on_stories(stories, preset):
    model, tokenizer = stories
    want = load_pipeline("autoregressive", model=model, tokenizer=tokenizer).generate(STORY_PROMPT, max_new_tokens=48)
    pipe = load_pipeline(preset, model=model, tokenizer=tokenizer, overrides=STORIES_OVERRIDES.get(preset, []))
    assert pipe.generate(STORY_PROMPT, max_new_tokens=48).token_ids == want.token_ids


def test_a_preset_that_does_not_fit_the_model_says_why(stories):
    from cas_spec.core.errors import ConfigError

    model, tokenizer = stories
    with pytest.raises(ConfigError, match="exit_layer: 15 is not below the model's 5 layers"):
        load_pipeline("early-exit", model=model, tokenizer=tokenizer)


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_equals_plain_greedy_on_smollm2_one_prompt_per_group(smollm2, preset):
    model, tokenizer = smollm2
    plain = load_pipeline("autoregressive", model=model, tokenizer=tokenizer)
    speculative = load_pipeline(preset, model=model, tokenizer=tokenizer)
    for question in SPEC_BENCH:
        prompt = question["turns"][0]
        got = speculative.generate(prompt, max_new_tokens=32)
        assert got.token_ids == plain.generate(prompt, max_new_tokens=32).token_ids, question["category"]


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_equals_plain_greedy_on_gemma3_past_the_window(gemma3, preset):
    model, tokenizer = gemma3
    overrides = ["model=gemma3-270m"]
    want = load_pipeline("autoregressive", model=model, tokenizer=tokenizer, overrides=overrides).generate(
        LONG_PROMPT, max_new_tokens=24, chat=False
    )
    assert len(want.prompt_token_ids) > 600
    got = load_pipeline(preset, model=model, tokenizer=tokenizer, overrides=overrides).generate(
        LONG_PROMPT, max_new_tokens=24, chat=False
    )
    assert got.token_ids == want.token_ids
