"""transformers interop: `generation_config=`, `streamer=`, `output_scores=`, `sequences`, tensor
prompts and `cas_spec.generate`, each checked against `model.generate` itself."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers import GenerationConfig, TextIteratorStreamer, TextStreamer
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import cas_spec
from cas_spec import InputError, load_pipeline
from tests.helpers import AUTOREGRESSIVE, CHAIN_PLD, IdTokenizer, tiny_llama

PIPELINES = {"chain-pld": CHAIN_PLD, "autoregressive": AUTOREGRESSIVE}
TINY_PROMPT = [9, 31, 44, 5, 17, 60, 23, 9, 31, 44, 5, 17, 60, 23, 9, 31, 44]
STORY = "Tom had a big red ball. Tom had a big red ball. He"


def hf_generate(model, prompt_ids: list[int], **kwargs):
    with torch.inference_mode():
        ids = torch.tensor([prompt_ids])
        return model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            pad_token_id=0,
            output_scores=True,
            return_dict_in_generate=True,
            **kwargs,
        )


def assert_same_scores(ours, theirs, atol=1e-4):
    """Same number, shape and dtype; same removed (-inf) entries; values equal up to float32 noise
    (a tree forward and the calibrated kernels sum in another order than plain decoding)."""
    assert ours is not None and len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
        assert torch.equal(torch.isinf(a), torch.isinf(b))
        finite = torch.isfinite(b)
        assert torch.allclose(a[finite], b[finite], atol=atol, rtol=1e-5)


# -- output_scores and sequences -------------------------------------------------------------------


@pytest.mark.parametrize("name", PIPELINES)
def test_greedy_scores_equal_generate_on_a_tiny_model(name):
    model = tiny_llama(4)
    pipe = load_pipeline(PIPELINES[name], model=model, tokenizer=IdTokenizer())
    result = pipe.generate(TINY_PROMPT, max_new_tokens=30, output_scores=True)
    expected = hf_generate(model, TINY_PROMPT, max_new_tokens=30, do_sample=False)
    assert torch.equal(result.sequences, expected.sequences)
    assert result.sequences.dtype == torch.long and result.sequences.shape == (1, len(TINY_PROMPT) + 30)
    assert_same_scores(result.scores, expected.scores)
    if name == "chain-pld":
        assert result.stats.mean_acceptance_length > 1.0  # the scores came from tree forwards too


@pytest.mark.parametrize("name", ["default", "autoregressive"])
def test_greedy_scores_equal_generate_on_stories(stories, name):
    model, tokenizer = stories
    pipe = load_pipeline(name, model=model, tokenizer=tokenizer)
    result = pipe.generate(STORY, max_new_tokens=40, output_scores=True)
    expected = hf_generate(model, result.prompt_token_ids, max_new_tokens=40, do_sample=False)
    assert torch.equal(result.sequences, expected.sequences)
    assert_same_scores(result.scores, expected.scores)
    if name == "default":
        assert result.stats.mean_acceptance_length > 1.5


def test_scores_are_none_unless_asked_and_stop_at_eos():
    model = tiny_llama(4)
    pipe = load_pipeline(CHAIN_PLD, model=model, tokenizer=IdTokenizer())
    plain = pipe.generate(TINY_PROMPT, max_new_tokens=12)
    assert plain.scores is None
    assert plain.sequences.tolist() == [TINY_PROMPT + plain.token_ids]
    eos = plain.token_ids[5]  # stop where that token first appears, as EOS
    cut = plain.token_ids.index(eos) + 1
    result = pipe.generate(
        TINY_PROMPT, max_new_tokens=12, output_scores=True, generation_config=GenerationConfig(eos_token_id=eos)
    )
    assert result.token_ids == plain.token_ids[:cut] and result.stats.stop_reason == "eos"
    assert len(result.scores) == cut
    assert [int(s.argmax()) for s in result.scores] == result.token_ids


def transformers_warp(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    scores = logits.clone()
    for warper in (TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k), TopPLogitsWarper(top_p)):
        scores = warper(None, scores)
    return scores


def test_sampled_scores_are_the_warped_target_logits_of_a_speculative_pipeline():
    model = tiny_llama(5)
    pipe = load_pipeline(CHAIN_PLD, model=model, tokenizer=IdTokenizer())
    config = GenerationConfig(do_sample=True, temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=24)
    result = pipe.generate(TINY_PROMPT, generation_config=config, seed=1, output_scores=True)
    with torch.inference_mode():  # the target's logits at each new position, by teacher forcing
        logits = model(result.sequences).logits[0, len(TINY_PROMPT) - 1 : -1].float()
    expected = [transformers_warp(row[None], 0.7, 20, 0.9) for row in logits]
    assert_same_scores(result.scores, expected)
    assert all(torch.isfinite(s[0, t]) for s, t in zip(result.scores, result.token_ids))


def test_sampling_with_a_generation_config_is_model_generate_under_the_same_seed(stories):
    """Plain decoding through the engine draws exactly what `generate` draws from torch's RNG."""
    model, tokenizer = stories
    pipe = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=tokenizer)
    config = GenerationConfig(do_sample=True, temperature=0.8, top_p=0.9, max_new_tokens=32)  # top_k: 50
    prompt_ids = tokenizer("Once upon a time")["input_ids"]
    for seed in (0, 1):
        torch.manual_seed(seed)
        expected = hf_generate(model, prompt_ids, generation_config=config)
        torch.manual_seed(seed)
        result = pipe.generate(prompt_ids, generation_config=config, output_scores=True)
        assert torch.equal(result.sequences, expected.sequences)
        assert_same_scores(result.scores, expected.scores, atol=0)


# -- generation_config ----------------------------------------------------------------------------


def test_generation_config_sampling_equals_the_same_keywords():
    pipe = load_pipeline(CHAIN_PLD, model=tiny_llama(6), tokenizer=IdTokenizer())
    config = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, max_new_tokens=20)
    got = pipe.generate(TINY_PROMPT, generation_config=config, seed=3)
    # transformers' default top_k (50) applies when sampling, as in `generate`
    same = pipe.generate(TINY_PROMPT, max_new_tokens=20, temperature=0.7, top_k=50, top_p=0.8, seed=3)
    assert got.token_ids == same.token_ids and len(got.token_ids) == 20


def test_keywords_override_the_generation_config():
    model = tiny_llama(6)
    pipe = load_pipeline(CHAIN_PLD, model=model, tokenizer=IdTokenizer())
    config = GenerationConfig(do_sample=True, temperature=0.7, max_new_tokens=20)
    greedy = pipe.generate(TINY_PROMPT, generation_config=config, temperature=0, max_new_tokens=7)
    assert (
        greedy.token_ids
        == hf_generate(model, TINY_PROMPT, max_new_tokens=7, do_sample=False).sequences[0, len(TINY_PROMPT) :].tolist()
    )
    greedy_config = GenerationConfig(do_sample=False, max_new_tokens=9)
    sampled = pipe.generate(TINY_PROMPT, generation_config=greedy_config, temperature=0.9, seed=2)
    assert sampled.token_ids == pipe.generate(TINY_PROMPT, max_new_tokens=9, temperature=0.9, seed=2).token_ids


def test_generation_config_length_and_the_models_own_config():
    model = tiny_llama(6)
    pipe = load_pipeline(CHAIN_PLD, model=model, tokenizer=IdTokenizer())
    assert len(pipe.generate(TINY_PROMPT, generation_config=GenerationConfig(max_length=25)).token_ids) == 25 - len(
        TINY_PROMPT
    )
    assert (
        len(
            pipe.generate(
                TINY_PROMPT, generation_config=GenerationConfig(pad_token_id=0, max_new_tokens=4, use_cache=True)
            ).token_ids
        )
        == 4
    )
    # unset fields come from model.generation_config, as in `generate`
    model.generation_config.do_sample, model.generation_config.top_k = True, 3
    config = GenerationConfig(max_new_tokens=10)
    got = pipe.generate(TINY_PROMPT, generation_config=config, seed=5)
    assert got.token_ids == pipe.generate(TINY_PROMPT, max_new_tokens=10, temperature=1.0, top_k=3, seed=5).token_ids


def test_generation_config_options_that_cannot_be_honoured_are_named():
    pipe = load_pipeline(AUTOREGRESSIVE, model=tiny_llama(6), tokenizer=IdTokenizer())
    config = GenerationConfig(num_beams=2, repetition_penalty=1.2, num_return_sequences=2, no_repeat_ngram_size=3)
    with pytest.raises(InputError) as info:
        pipe.generate(TINY_PROMPT, generation_config=config)
    message = str(info.value)
    for fragment in ("num_beams=2", "repetition_penalty=1.2", "num_return_sequences=2", "no_repeat_ngram_size=3"):
        assert fragment in message
    for config, fragment in [
        (GenerationConfig(do_sample=True, temperature=0.0), "temperature > 0"),
        (GenerationConfig(max_length=5), "max_length=5 leaves no room"),
        (GenerationConfig(bad_words_ids=[[3]], typical_p=0.5), "bad_words_ids=[[3]], typical_p=0.5"),
    ]:
        with pytest.raises(InputError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
            pipe.generate(TINY_PROMPT, generation_config=config)
    # neutral values of the same options are fine
    neutral = GenerationConfig(num_beams=1, repetition_penalty=1.0, num_return_sequences=1, max_new_tokens=3)
    assert len(pipe.generate(TINY_PROMPT, generation_config=neutral).token_ids) == 3


def test_min_p_of_a_generation_config_is_honoured():
    from cas_spec.core.interop import options_from_generation_config

    model = tiny_llama(6)
    options = options_from_generation_config(GenerationConfig(do_sample=True, min_p=0.1), model, 4)
    assert options.min_p == 0.1
    pipe = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer())
    assert pipe.sampling(options).min_p == 0.1
    assert options_from_generation_config(GenerationConfig(do_sample=False, min_p=0.1), model, 4).min_p is None


# -- streamer -------------------------------------------------------------------------------------


class Recorder:
    def __init__(self, fail_on: int | None = None):
        self.puts: list[torch.Tensor] = []
        self.ends = 0
        self.fail_on = fail_on

    def put(self, value):
        self.puts.append(value)
        if self.fail_on is not None and len(self.puts) == self.fail_on:
            raise RuntimeError("consumer gone")

    def end(self):
        self.ends += 1


def test_streamer_gets_the_prompt_then_each_committed_chunk_then_end():
    pipe = load_pipeline(CHAIN_PLD, model=tiny_llama(4), tokenizer=IdTokenizer())
    streamer = Recorder()
    result = pipe.generate(TINY_PROMPT, max_new_tokens=30, streamer=streamer)
    prompt, *chunks = streamer.puts
    assert prompt.dtype == torch.long and prompt.tolist() == [TINY_PROMPT]
    assert all(c.dtype == torch.long and c.dim() == 2 and c.shape[0] == 1 for c in chunks)
    assert torch.cat(chunks, dim=1)[0].tolist() == result.token_ids
    assert len(chunks) == result.stats.target_forwards < 30  # several tokens per chunk
    assert streamer.ends == 1


def test_streamer_end_is_called_on_errors():
    pipe = load_pipeline(CHAIN_PLD, model=tiny_llama(4), tokenizer=IdTokenizer())
    streamer = Recorder(fail_on=3)
    with pytest.raises(RuntimeError, match="consumer gone"):
        pipe.generate(TINY_PROMPT, max_new_tokens=30, streamer=streamer)
    assert streamer.ends == 1
    streamer = Recorder()
    with pytest.raises(InputError, match="the prompt has"):
        pipe.generate(list(range(3, 90)) * 3, streamer=streamer)
    assert streamer.ends == 1
    with pytest.raises(InputError, match="streamer must have put"):
        pipe.generate(TINY_PROMPT, streamer=object())


def test_text_streamer_prints_the_new_text(stories, capsys):
    model, tokenizer = stories
    pipe = load_pipeline("default", model=model, tokenizer=tokenizer)
    result = pipe.generate(STORY, max_new_tokens=30, streamer=TextStreamer(tokenizer, skip_prompt=True))
    assert capsys.readouterr().out == result.text + "\n"


def test_text_iterator_streamer_streams_what_generate_streams(stories):
    model, tokenizer = stories
    pipe = load_pipeline("default", model=model, tokenizer=tokenizer)

    def streamed(run) -> tuple[str, list[BaseException]]:
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=60)
        errors: list[BaseException] = []

        def work():
            try:
                run(streamer)
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=work)
        worker.start()
        text = "".join(streamer)  # ends when the producer calls end(), or times out
        worker.join()
        return text, errors

    ids = tokenizer(STORY)["input_ids"]
    ours = streamed(lambda s: pipe.generate(ids, max_new_tokens=40, streamer=s))
    theirs = streamed(lambda s: hf_generate(model, ids, max_new_tokens=40, do_sample=False, streamer=s))
    assert ours == theirs and ours[0].strip() and ours[1] == []
    # an error ends the stream too: the consumer does not wait for the timeout
    text, errors = streamed(lambda s: pipe.generate("   ", streamer=s))
    assert text == "" and [type(e) for e in errors] == [InputError]


# -- prompts as tensors, and cas_spec.generate ------------------------------------------------------


def test_prompt_as_tensor_or_tokenizer_output(stories):
    model, tokenizer = stories
    pipe = load_pipeline("default", model=model, tokenizer=tokenizer)
    inputs = tokenizer(STORY, return_tensors="pt")
    expected = pipe.generate(STORY, max_new_tokens=8).token_ids
    for prompt in (inputs, inputs["input_ids"], inputs["input_ids"][0], inputs["input_ids"].tolist()):
        assert pipe.generate(prompt, max_new_tokens=8).token_ids == expected
    with pytest.raises(InputError, match="batch of 2"):
        pipe.generate(inputs["input_ids"].repeat(2, 1))
    with pytest.raises(InputError, match="the prompt must be text or token ids, got int"):
        pipe.generate(17)
    with pytest.raises(InputError, match="generation_config must be a transformers.GenerationConfig, got dict"):
        pipe.generate(STORY, generation_config={"max_new_tokens": 3})


def test_cas_spec_generate_is_load_pipeline_then_generate(stories):
    model, tokenizer = stories
    result = cas_spec.generate(model, tokenizer, STORY, max_new_tokens=12, output_scores=True)
    expected = hf_generate(model, result.prompt_token_ids, max_new_tokens=12, do_sample=False)
    assert torch.equal(result.sequences, expected.sequences)
    assert len(result.scores) == 12
    plain = cas_spec.generate(model, tokenizer, STORY, pipeline="autoregressive", max_new_tokens=12)
    assert plain.token_ids == result.token_ids and plain.stats.mean_acceptance_length == 1.0
