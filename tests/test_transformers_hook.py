"""`model.generate(custom_generate=cas_spec.custom_generate(...))`: what transformers users call.

Greedy output identical to plain `generate`; sampled output distributed as the target's (exact
law over two tokens, χ²); the standard warpers and every stopping criterion honoured; what cannot
be honoured refused with one clear error; the folder form loads with `trust_remote_code=True`."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper

import cas_spec
from cas_spec import InputError
from cas_spec.testing.stats import chi2_critical, chi2_goodness
from cas_spec.transformers_hook import folder, sampling_of
from tests.helpers import (
    CHAIN_PLD,
    PROMPT,
    IdTokenizer,
    hf_greedy,
    peaked_tiny_model,
    repetitive_prompt,
    tiny_llama,
    two_token_distribution,
)

SPECULATIVE = {**CHAIN_PLD, "calibration": "off"}


def hook(pipeline: object = None) -> cas_spec.transformers_hook.CustomGenerate:
    return cas_spec.custom_generate(pipeline or SPECULATIVE, tokenizer=IdTokenizer())


def ids(prompt: list[int]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.tensor([prompt]), "attention_mask": torch.ones(1, len(prompt), dtype=torch.long)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_output_is_identical_to_plain_generate(seed):
    model = tiny_llama(seed)
    prompt = repetitive_prompt(seed, model.config.vocab_size)
    out = model.generate(**ids(prompt), custom_generate=hook(), max_new_tokens=40, do_sample=False, pad_token_id=0)
    assert out[0, len(prompt) :].tolist() == hf_greedy(model, prompt, 40)
    assert out[0, : len(prompt)].tolist() == prompt


def test_return_dict_and_scores_are_what_plain_generate_returns():
    model = tiny_llama(1)
    prompt = repetitive_prompt(1, model.config.vocab_size)
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, return_dict_in_generate=True, output_scores=True)
    ours = model.generate(**ids(prompt), custom_generate=hook(), **kwargs)
    plain = model.generate(**ids(prompt), **kwargs)
    assert torch.equal(ours.sequences, plain.sequences)
    assert len(ours.scores) == len(plain.scores) == 12
    for a, b in zip(ours.scores, plain.scores, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


class StopAfter(StoppingCriteria):
    """Stops once `token` was generated (a user's own criterion)."""

    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: object) -> torch.BoolTensor:
        return input_ids[:, -1] == self.token


def test_stopping_criteria_end_generation_where_plain_generate_ends_it():
    model = tiny_llama(2)
    prompt = repetitive_prompt(2, model.config.vocab_size)
    plain = hf_greedy(model, prompt, 40)
    token = plain[17]  # stop at its first occurrence, somewhere inside a speculative step
    criteria = StoppingCriteriaList([StopAfter(token)])
    ours = model.generate(
        **ids(prompt), custom_generate=hook(), stopping_criteria=criteria, max_new_tokens=40, pad_token_id=0
    )
    want = model.generate(**ids(prompt), stopping_criteria=criteria, max_new_tokens=40, do_sample=False, pad_token_id=0)
    assert ours.tolist() == want.tolist()
    assert ours[0, -1].item() == token and len(ours[0]) < len(prompt) + 40


def test_stop_strings_as_a_criterion_end_generation_where_plain_generate_ends_it(stories):
    from transformers import StopStringCriteria

    model, tokenizer = stories
    inputs = tokenizer("Once upon a time", return_tensors="pt")
    fast = cas_spec.custom_generate(SPECULATIVE, tokenizer=tokenizer)
    criteria = StoppingCriteriaList([StopStringCriteria(tokenizer, ["girl"])])
    ours = model.generate(
        **inputs, custom_generate=fast, stopping_criteria=criteria, max_new_tokens=30, do_sample=False
    )
    plain = model.generate(**inputs, stop_strings=["girl"], tokenizer=tokenizer, max_new_tokens=30, do_sample=False)
    assert torch.equal(ours, plain)
    assert tokenizer.decode(ours[0]).endswith("girl") and ours.shape[1] < inputs["input_ids"].shape[1] + 30


def test_eos_from_the_generation_config_ends_generation():
    model = tiny_llama(2)
    prompt = repetitive_prompt(2, model.config.vocab_size)
    eos = hf_greedy(model, prompt, 30)[9]
    config = GenerationConfig(max_new_tokens=30, do_sample=False, eos_token_id=eos, pad_token_id=0)
    ours = model.generate(**ids(prompt), custom_generate=hook(), generation_config=config)
    assert ours.tolist() == model.generate(**ids(prompt), generation_config=config).tolist()


def test_the_warpers_become_the_same_sampling_parameters():
    assert sampling_of(LogitsProcessorList([TemperatureLogitsWarper(0.7)]), do_sample=True) == cas_spec.SamplingParams(
        temperature=0.7
    )
    model = tiny_llama(0)
    config = GenerationConfig(do_sample=True, temperature=0.8, top_k=5, top_p=0.9, min_p=0.05)
    processors = model._get_logits_processor(config, 4, torch.zeros(1, 4, dtype=torch.long))
    params = sampling_of(processors, do_sample=True)
    assert (params.temperature, params.top_k, params.top_p, params.min_p) == (0.8, 5, 0.9, 0.05)
    assert sampling_of(LogitsProcessorList(), do_sample=False).greedy
    with pytest.raises(InputError, match="order"):
        sampling_of(list(reversed(processors)), do_sample=True)


@pytest.mark.parametrize(
    "kwargs, named",
    [
        (dict(repetition_penalty=1.3), "RepetitionPenaltyLogitsProcessor"),
        (dict(num_beams=2), "num_beams=2"),
        (dict(do_sample=True, num_return_sequences=2), "num_return_sequences=2"),
        (dict(output_logits=True, return_dict_in_generate=True), "output_logits=True"),
        (dict(logits_processor=LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.2)])), "RepetitionPenalty"),
    ],
    ids=["penalty", "beams", "return-sequences", "logits", "own-processor"],
)
def test_what_cannot_be_honoured_is_refused_by_name(kwargs, named):
    model = tiny_llama(0)
    with pytest.raises(InputError, match=named):
        model.generate(**ids([5, 6, 7, 8]), custom_generate=hook(), max_new_tokens=4, pad_token_id=0, **kwargs)


def test_a_batch_and_padding_are_refused():
    model = tiny_llama(0)
    batch = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 9]])
    with pytest.raises(InputError, match="a batch of 2"):
        model.generate(input_ids=batch, custom_generate=hook(), max_new_tokens=4, pad_token_id=0)
    padded = {"input_ids": torch.tensor([[0, 6, 7, 8]]), "attention_mask": torch.tensor([[0, 1, 1, 1]])}
    with pytest.raises(InputError, match="padded attention_mask"):
        model.generate(**padded, custom_generate=hook(), max_new_tokens=4, pad_token_id=0)


def test_one_pipeline_per_model_is_built_and_kept():
    model = tiny_llama(0)
    generate = hook()
    for _ in range(2):
        model.generate(**ids([5, 6, 7, 8]), custom_generate=generate, max_new_tokens=3, pad_token_id=0)
    assert len(generate._pipelines) == 1


def test_sampled_output_follows_the_target_law():
    """Two sampled tokens at temperature 1 over a peaky tiny target, 1,500 runs: χ² against the
    exact law p(a) p(b | a)."""
    model = peaked_tiny_model()
    law = two_token_distribution(model)
    generate = hook()
    trials, counts = 1500, Counter()
    torch.manual_seed(0)
    for _ in range(trials):
        out = model.generate(
            **ids(PROMPT), custom_generate=generate, max_new_tokens=2, do_sample=True, top_k=0, pad_token_id=0
        )
        counts[tuple(out[0, len(PROMPT) :].tolist())] += 1
    stat, df = chi2_goodness(counts, law, trials)
    assert stat < chi2_critical(df, 1e-3), (stat, df)


def test_the_folder_form_runs_with_trust_remote_code():
    model = tiny_llama(1)
    prompt = repetitive_prompt(1, model.config.vocab_size)
    assert (folder() / "custom_generate" / "generate.py").is_file()
    out = model.generate(
        **ids(prompt),
        custom_generate=str(folder()),
        trust_remote_code=True,
        tokenizer=IdTokenizer(),
        max_new_tokens=20,
        do_sample=False,
        pad_token_id=0,
    )
    assert out[0, len(prompt) :].tolist() == hf_greedy(model, prompt, 20)
