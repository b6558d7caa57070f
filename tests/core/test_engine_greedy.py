"""Greedy identity: speculative pipelines produce exactly what plain greedy decoding produces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cas_spec import load_pipeline
from cas_spec.testing.models import repetitive_prompt
from tests.helpers import AUTOREGRESSIVE, CHAIN_PLD, STORY_PROMPTS, IdTokenizer, hf_greedy, tiny_llama

SHAPES = [
    dict(family="llama"),
    dict(family="llama", hidden=48, heads=6, kv_heads=1, intermediate=40, layers=2),  # MQA, odd sizes
    dict(family="llama", hidden=40, heads=5, kv_heads=5, layers=4, vocab=77),  # MHA, odd vocab
    dict(family="qwen2", hidden=32, heads=4, kv_heads=2),
    dict(family="mistral", hidden=32, heads=4, kv_heads=1),
    dict(family="llama", attn="eager"),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_chain_pld_equals_plain_greedy_on_tiny_models(seed, shape):
    model = tiny_llama(seed, **shape)
    vocab = model.config.vocab_size
    speculative = load_pipeline(CHAIN_PLD, model=model, tokenizer=IdTokenizer())
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer())
    prompt = repetitive_prompt(seed, vocab)
    expected = hf_greedy(model, prompt, 60)
    got = speculative.generate(prompt, max_new_tokens=60)
    assert got.token_ids == expected
    assert plain.generate(prompt, max_new_tokens=60).token_ids == expected
    assert got.stats.target_forwards <= 60
    stats = got.stats  # the scheduler's own work is the draft time outside the levels' calls
    assert 0.0 <= stats.scheduling_seconds <= stats.draft_seconds
    assert stats.scheduling_seconds == pytest.approx(
        max(stats.draft_seconds - sum(lv.seconds for lv in stats.levels.values()), 0.0)
    )


@pytest.mark.parametrize("prompt", STORY_PROMPTS)
def test_default_preset_equals_plain_greedy_on_stories(stories, prompt):
    model, tokenizer = stories
    speculative = load_pipeline("default", model=model, tokenizer=tokenizer)
    result = speculative.generate(prompt, max_new_tokens=200)
    assert result.token_ids == hf_greedy(model, result.prompt_token_ids, 200)[: len(result.token_ids)]
    if result.stats.stop_reason == "max_new_tokens":
        assert len(result.token_ids) == 200
    assert result.stats.mean_acceptance_length > 1.0  # TinyStories text repeats itself


def test_eos_stops_generation_like_plain_decoding():
    model = tiny_llama(3)
    prompt = repetitive_prompt(3, model.config.vocab_size)
    free_run = hf_greedy(model, prompt, 40)
    eos = free_run[25]  # a token greedy decoding emits first at some position: make it the EOS
    first = free_run.index(eos)
    model.generation_config.eos_token_id = eos
    speculative = load_pipeline(CHAIN_PLD, model=model, tokenizer=IdTokenizer())
    result = speculative.generate(prompt, max_new_tokens=40)
    assert result.stats.stop_reason == "eos"
    assert result.token_ids == free_run[: first + 1]


def test_context_limit_stops_generation(stories):
    model, tokenizer = stories
    pipe = load_pipeline(CHAIN_PLD, model=model, tokenizer=tokenizer)
    prompt = tokenizer("Tom had a ball. " * 60)["input_ids"][:500]
    result = pipe.generate(prompt, max_new_tokens=100)
    assert len(prompt) + len(result.token_ids) <= 512
    if result.stats.stop_reason != "eos":
        assert result.stats.stop_reason == "context_limit"
        assert len(prompt) + len(result.token_ids) == 512
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=tokenizer).generate(prompt, max_new_tokens=100)
    assert result.token_ids == plain.token_ids


SPEC_BENCH = [
    json.loads(line)
    for line in (Path(__file__).parents[1] / "data" / "spec_bench_one_per_group.jsonl").read_text().splitlines()
]


@pytest.mark.real_model
@pytest.mark.parametrize("question", SPEC_BENCH, ids=lambda q: q["category"])
def test_default_preset_equals_plain_greedy_on_smollm2(smollm2, question):
    model, tokenizer = smollm2
    speculative = load_pipeline("default", model=model, tokenizer=tokenizer)
    plain = load_pipeline("autoregressive", model=model, tokenizer=tokenizer)
    prompt = question["turns"][0]
    got = speculative.generate(prompt, max_new_tokens=48)
    want = plain.generate(prompt, max_new_tokens=48)
    assert got.token_ids == want.token_ids
    assert got.text == want.text


@pytest.mark.real_model
def test_engine_autoregressive_equals_transformers_generate_on_smollm2(smollm2):
    model, tokenizer = smollm2
    plain = load_pipeline("autoregressive", model=model, tokenizer=tokenizer)
    got = plain.generate("What is the capital of France?", max_new_tokens=24)
    assert got.token_ids == hf_greedy(model, got.prompt_token_ids, 24)[: len(got.token_ids)]
    assert "Paris" in got.text


def test_the_engine_times_verification_after_the_device_finished_it(monkeypatch):
    """On CUDA a forward returns before it ran: the engine synchronizes before reading its clock.
    No GPU here: a fake `torch.cuda.synchronize` and a target that says it is on CUDA."""
    from cas_spec.core.target import Target

    calls: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    model = tiny_llama(0)
    target = Target(model, None)  # type: ignore[arg-type]  # only `device` is read
    target.synchronize()
    assert calls == []  # the CPU has nothing queued
    monkeypatch.setattr(Target, "device", property(lambda self: torch.device("cuda", 0)))
    target.synchronize()
    assert calls == [torch.device("cuda", 0)]

    monkeypatch.undo()
    steps: list[int] = []
    monkeypatch.setattr(Target, "synchronize", lambda self: steps.append(1))
    pipe = load_pipeline(CHAIN_PLD, model=model, tokenizer=IdTokenizer())
    result = pipe.generate(repetitive_prompt(0, model.config.vocab_size), max_new_tokens=16)
    assert len(steps) == result.stats.target_forwards + 1  # every verification, and the prefill
