"""One pipeline shared by several threads: generations run one after the other, each output is
exactly plain decoding's, the wait shows in the statistics, and a generation that calls
`generate` again from its own callback gets one clear error instead of a corrupted cache."""

from __future__ import annotations

import threading

import pytest

from cas_spec import InputError, load_pipeline
from tests.helpers import AUTOREGRESSIVE, CHAIN_PLD, IdTokenizer, repetitive_prompt, tiny_llama

TOKENS = 24


def test_concurrent_generations_each_equal_plain_decoding():
    model = tiny_llama(3)
    prompts = [repetitive_prompt(seed, model.config.vocab_size) for seed in range(6)]
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer())
    want = [plain.generate(p, max_new_tokens=TOKENS).token_ids for p in prompts]
    shared = load_pipeline({**CHAIN_PLD, "calibration": "off"}, model=model, tokenizer=IdTokenizer())
    got: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(prompts))

    def run(i: int) -> None:
        try:
            start.wait()
            got[i] = shared.generate(prompts[i], max_new_tokens=TOKENS).token_ids
        except BaseException as error:  # reported below, with the thread's index
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert [got[i] for i in range(len(prompts))] == want


def test_a_waiting_generation_reports_its_wait():
    model = tiny_llama(3)
    pipe = load_pipeline({**CHAIN_PLD, "calibration": "off"}, model=model, tokenizer=IdTokenizer())
    prompt = repetitive_prompt(1, model.config.vocab_size)
    first_inside, release_first = threading.Event(), threading.Event()
    results = {}

    def hold(_text: str) -> None:  # the first generation pauses inside, holding the pipeline
        first_inside.set()
        release_first.wait(timeout=60)

    first = threading.Thread(target=lambda: results.update(first=pipe.generate(prompt, max_new_tokens=4, on_text=hold)))
    first.start()
    assert first_inside.wait(timeout=60)
    second = threading.Thread(target=lambda: results.update(second=pipe.generate(prompt, max_new_tokens=4)))
    second.start()
    second.join(timeout=0.3)  # the second is blocked behind the first
    assert second.is_alive()
    release_first.set()
    first.join(timeout=60)
    second.join(timeout=60)
    assert results["first"].stats.wait_seconds == 0.0
    assert results["second"].stats.wait_seconds >= 0.25
    assert results["second"].token_ids == results["first"].token_ids


def test_generate_from_inside_a_generation_is_refused_and_the_pipeline_still_works():
    model = tiny_llama(3)
    pipe = load_pipeline({**CHAIN_PLD, "calibration": "off"}, model=model, tokenizer=IdTokenizer())
    prompt = repetitive_prompt(2, model.config.vocab_size)
    want = pipe.generate(prompt, max_new_tokens=12).token_ids

    def reenter(_text: str) -> None:
        pipe.generate(prompt, max_new_tokens=2)

    with pytest.raises(InputError, match="inside a generation on the same pipeline"):
        pipe.generate(prompt, max_new_tokens=12, on_text=reenter)
    assert pipe.generate(prompt, max_new_tokens=12).token_ids == want
