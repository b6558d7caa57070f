"""Self-speculative strategies on Gemma 3 (tiny, crossing its sliding window) and on the two real
models: SmolLM2 with one prompt per Spec-Bench group, Gemma 3 270M with a short prompt and one
longer than its 512-token window. Greedy output must equal plain decoding token for token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cas_spec.core.config import load_config
from cas_spec.core.hookspecs import hookimpl
from cas_spec.core.plugins import build_plugins
from cas_spec.pipeline import build_pipeline
from tests.helpers import AUTOREGRESSIVE, IdTokenizer, RoundRobinTree, repetitive_prompt, tiny_gemma3

GEMMA_LEVELS = {  # tiny Gemma: layers 0 and 2 size the sliding and full masks, so their attention runs
    "early_exit": {"kind": "early_exit", "options": {"exit_layer": 2}},
    "layer_sparsity": {"kind": "layer_sparsity", "options": {"skip": ["1.attention", "2.mlp"], "stop_below": 0.0}},
    "quanto_activation": {"kind": "quanto_activation", "options": {"backend": "dynamic_int8"}},
}


def pipelines(model, tokenizer, levels: dict, scheduler: dict):
    class Plugin:
        @hookimpl
        def register_schedulers(self, registry):
            registry.add(RoundRobinTree)

    plugins = build_plugins(entry_points=(), extra=[Plugin()])
    config = load_config(
        {"scheduler": scheduler, "calibration": "off", "levels": [{"name": n, **lv} for n, lv in levels.items()]},
        plugins=plugins,
    )
    plain = build_pipeline(load_config(AUTOREGRESSIVE), model, tokenizer)
    return plain, build_pipeline(config, model, tokenizer, plugins=plugins)


@pytest.mark.parametrize("level", sorted(GEMMA_LEVELS))
def test_each_strategy_on_tiny_gemma3_across_the_sliding_window(level):
    model = tiny_gemma3(2)
    prompt = repetitive_prompt(2, model.config.vocab_size)  # 40 tokens, window 8
    plain, speculative = pipelines(
        model, IdTokenizer(), {level: GEMMA_LEVELS[level]}, {"kind": "chain", "options": {"k": 4, "adaptive": False}}
    )
    got = speculative.generate(prompt, max_new_tokens=40)
    assert got.token_ids == plain.generate(prompt, max_new_tokens=40).token_ids
    assert got.stats.levels[level].drafted > 0


def test_three_levels_share_trees_on_tiny_gemma3():
    model = tiny_gemma3(3)
    prompt = repetitive_prompt(3, model.config.vocab_size)
    plain, speculative = pipelines(model, IdTokenizer(), GEMMA_LEVELS, {"kind": "round_robin_tree"})
    assert (
        speculative.generate(prompt, max_new_tokens=40).token_ids == plain.generate(prompt, max_new_tokens=40).token_ids
    )


SMOLLM2_LEVELS = {
    "int8": {"kind": "quanto_activation"},
    "skip": {
        "kind": "layer_sparsity",
        "options": {
            "skip": [
                "2.attention",
                "5.mlp",
                "9.attention",
                "13.mlp",
                "16.attention",
                "20.mlp",
                "24.attention",
                "27.mlp",
            ],
            "stop_below": 0.0,
        },
    },
    "exit": {"kind": "early_exit", "options": {"exit_layer": 20}},
}
QUESTIONS = [
    json.loads(line)
    for line in (Path(__file__).parents[1] / "data" / "spec_bench_one_per_group.jsonl").read_text().splitlines()
]


@pytest.fixture(scope="module")
def smollm2_pipelines(smollm2):
    return pipelines(*smollm2, SMOLLM2_LEVELS, {"kind": "round_robin_tree"})


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.parametrize("question", QUESTIONS, ids=lambda q: q["category"])
def test_three_dsia_levels_equal_plain_greedy_on_smollm2(smollm2_pipelines, question):
    plain, speculative = smollm2_pipelines
    prompt = question["turns"][0]
    got = speculative.generate(prompt, max_new_tokens=24)
    assert got.token_ids == plain.generate(prompt, max_new_tokens=24).token_ids
    assert all(stats.drafted > 0 for stats in got.stats.levels.values())


GEMMA_PROMPTS = {
    "short": "def fibonacci(n):",
    "past the window": "The history of the printing press. "
    + " ".join(
        f"In year {1440 + i}, printers in city number {i % 17} produced {3 * i + 7} books, and the guild "
        f"recorded {i % 5} new presses."
        for i in range(40)
    ),
}


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.parametrize("name", sorted(GEMMA_PROMPTS))
def test_three_dsia_levels_equal_plain_greedy_on_gemma3(gemma3, name):
    model, tokenizer = gemma3
    levels = {
        "int8": {"kind": "quanto_activation"},
        "skip": {
            "kind": "layer_sparsity",
            "options": {"skip": ["2.attention", "4.mlp", "8.mlp", "13.attention"], "stop_below": 0.0},
        },
        "exit": {"kind": "early_exit", "options": {"exit_layer": 12}},
    }
    plain, speculative = pipelines(model, tokenizer, levels, {"kind": "round_robin_tree"})
    prompt = GEMMA_PROMPTS[name]
    ids = speculative.encode(prompt, chat=False)
    assert (len(ids) > 512) == (name == "past the window")
    got = speculative.generate(prompt, max_new_tokens=16, chat=False)
    assert got.token_ids == plain.generate(prompt, max_new_tokens=16, chat=False).token_ids
