"""`warp_logits` / `target_probs` against transformers' own logits warpers.

Plain sampling in transformers applies TemperatureLogitsWarper (if temperature != 1),
TopKLogitsWarper (if top_k is set and non-zero), TopPLogitsWarper (if top_p < 1) and
MinPLogitsWarper (if min_p is set), in this order, to float32 scores. Speculative sampling is only lossless w.r.t. that distribution if
`target_probs` reproduces it bit for bit, ties and edge cases included.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from cas_spec.core.sampling import make_generator, sample, target_probs, warp_logits
from cas_spec.core.types import SamplingParams

TEMPERATURES = [0.3, 0.7, 1.0, 1.5]
TOP_KS = [None, 1, 2, 3, 7, 8, 50]  # 8 == V, 50 ≥ V in the grid test
TOP_PS = [None, 0.1, 0.5, 0.9, 0.95, 1.0]
MIN_PS = [None, 0.05, 0.3, 0.9]


def reference_warp(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None, min_p: float | None = None
):
    """transformers' warpers, chosen and ordered as `GenerationMixin._get_logits_processor` does."""
    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k is not None and top_k != 0:
        processors.append(TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p is not None and top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    if min_p is not None:
        processors.append(MinPLogitsWarper(min_p=min_p, min_tokens_to_keep=1))
    scores = logits.float().reshape(-1, logits.shape[-1]).clone()
    input_ids = torch.zeros(scores.shape[0], 1, dtype=torch.long)
    return processors(input_ids, scores).reshape(logits.shape)


def assert_same_warp(logits, temperature, top_k, top_p, min_p=None):
    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    ours = warp_logits(logits, sampling)
    ref = reference_warp(logits, temperature, top_k, top_p, min_p)
    assert ours.dtype == torch.float32
    # Same removed set, and bit-identical values where kept.
    assert torch.equal(torch.isinf(ours), torch.isinf(ref)), (ours, ref)
    assert torch.equal(ours, ref), (ours, ref)
    probs = target_probs(logits, sampling)
    assert probs.dtype == torch.float32
    assert torch.equal(probs, torch.softmax(ref, dim=-1))


def _logits_bank() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    bank = [torch.randn(8, generator=g) * s for s in (0.5, 2.0, 6.0)]
    bank.append(torch.randint(-2, 3, (8,), generator=g).float())  # many ties
    bank.append(torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, -1.0, -1.0]))  # ties at the top and top-k boundary
    bank.append(torch.full((8,), 0.25))  # all equal
    bank.append(torch.tensor([3.0, float("-inf"), 1.0, 1.0, float("-inf"), 0.5, 0.5, -2.0]))  # pre-masked
    bank.append(torch.randn(3, 8, generator=g) * 3)  # batched rows
    return bank


@pytest.mark.parametrize("temperature,top_k,top_p", list(itertools.product(TEMPERATURES, TOP_KS, TOP_PS)))
def test_warp_matches_transformers_grid(temperature, top_k, top_p):
    for logits in _logits_bank():
        assert_same_warp(logits, temperature, top_k, top_p)


@pytest.mark.parametrize("min_p", MIN_PS)
@pytest.mark.parametrize("top_k,top_p", [(None, None), (3, None), (None, 0.9), (7, 0.5)])
def test_min_p_matches_transformers_after_the_other_warpers(min_p, top_k, top_p):
    for logits in _logits_bank():
        for temperature in (0.7, 1.0):
            assert_same_warp(logits, temperature, top_k, top_p, min_p)


def test_min_p_drops_what_is_less_likely_than_a_share_of_the_top_token():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    warped = warp_logits(probs.log(), SamplingParams(temperature=1.0, min_p=0.4))  # threshold 0.2
    assert torch.isfinite(warped).tolist() == [True, True, False, False]


@st.composite
def warp_problems(draw):
    vocab = draw(st.integers(1, 12))
    rows = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["float", "ties", "mixed"]))
    if kind == "float":
        values = st.floats(-20, 20, allow_nan=False, width=32)
    elif kind == "ties":
        values = st.integers(-3, 3).map(float)
    else:
        values = st.one_of(st.integers(-2, 2).map(float), st.floats(-5, 5, allow_nan=False, width=32))
    logits = torch.tensor(
        draw(st.lists(st.lists(values, min_size=vocab, max_size=vocab), min_size=rows, max_size=rows)),
        dtype=torch.float32,
    )
    if rows == 1 and draw(st.booleans()):
        logits = logits[0]  # a single [V] row
    temperature = draw(st.sampled_from([1.0, 0.5, 2.0]) | st.floats(0.05, 5.0))
    top_k = draw(st.none() | st.integers(1, vocab + 3))
    top_p = draw(st.none() | st.sampled_from([1.0, 0.5]) | st.floats(0.01, 1.0))
    min_p = draw(st.none() | st.floats(0.0, 1.0))
    return logits, temperature, top_k, top_p, min_p


@given(warp_problems())
def test_warp_matches_transformers_random(problem):
    assert_same_warp(*problem)


def test_top_k_at_or_above_vocab_keeps_everything():
    logits = torch.tensor([0.5, -1.0, 2.0, 2.0])
    for k in (4, 5, 100):
        assert torch.equal(warp_logits(logits, SamplingParams(temperature=1.0, top_k=k)), logits)


def test_top_k_keeps_all_ties_at_the_boundary():
    logits = torch.tensor([3.0, 1.0, 1.0, 0.0, 1.0])
    warped = warp_logits(logits, SamplingParams(temperature=1.0, top_k=2))
    assert torch.isfinite(warped).tolist() == [True, True, True, False, True]


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    warped = warp_logits(probs.log(), SamplingParams(temperature=1.0, top_p=0.75))
    assert torch.isfinite(warped).tolist() == [True, True, False, False]
    warped = warp_logits(probs.log(), SamplingParams(temperature=1.0, top_p=0.85))
    assert torch.isfinite(warped).tolist() == [True, True, True, False]
    p = target_probs(probs.log(), SamplingParams(temperature=1.0, top_p=0.85))
    torch.testing.assert_close(p, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95)


def test_temperature_then_top_p_order_matters_and_is_respected():
    """Temperature changes which tokens top-p keeps: applying it after top-p would differ."""
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    sampling = SamplingParams(temperature=3.0, top_p=0.6)
    wrong_order = warp_logits(logits, SamplingParams(temperature=1.0, top_p=0.6)) / 3.0
    ours = warp_logits(logits, sampling)
    assert not torch.equal(torch.isinf(ours), torch.isinf(wrong_order))
    assert torch.equal(ours, reference_warp(logits, 3.0, None, 0.6))


# ----------------------------------------------------------------------------------------------
# make_generator / sample
# ----------------------------------------------------------------------------------------------
def _draws(generator, probs, n=200):
    return [sample(probs, generator) for _ in range(n)]


def test_seeded_generator_reproduces_draws():
    probs = torch.softmax(torch.randn(11, generator=torch.Generator().manual_seed(0)), dim=-1)
    sampling = SamplingParams(temperature=0.8, seed=1234)
    first = _draws(make_generator(sampling), probs)
    second = _draws(make_generator(sampling), probs)
    assert first == second
    assert len(set(first)) > 3  # actually random, not constant
    other = _draws(make_generator(SamplingParams(temperature=0.8, seed=1235)), probs)
    assert other != first
    # Uniform draws from the generator are reproducible too (the verifier's acceptance tests).
    a, b = make_generator(sampling), make_generator(sampling)
    assert torch.equal(torch.rand(5, generator=a, dtype=torch.float64), torch.rand(5, generator=b, dtype=torch.float64))


def test_generator_is_none_without_seed_or_when_greedy():
    assert make_generator(SamplingParams(temperature=0.7)) is None
    assert make_generator(SamplingParams(temperature=0.0, seed=3)) is None
    generator = make_generator(SamplingParams(temperature=0.7, seed=3))
    assert isinstance(generator, torch.Generator)
    assert generator.initial_seed() == 3


def test_sample_follows_the_distribution():
    probs = torch.tensor([0.0, 0.7, 0.3, 0.0])
    generator = make_generator(SamplingParams(temperature=1.0, seed=7))
    draws = _draws(generator, probs, 4000)
    assert set(draws) <= {1, 2}
    # Binomial(4000, 0.7): sd ≈ 29; 6 sd bound.
    assert abs(draws.count(1) - 2800) < 175
