"""The kit's statistical tests: critical values, and for each test that an exact experiment passes
it about as often as its level says while a biased one fails it."""

from __future__ import annotations

import pytest
import torch

from cas_spec.testing.stats import (
    chi2_calibration,
    chi2_critical,
    chi2_draft_tokens,
    chi2_goodness,
    chi2_mean_law,
    pooled_cells,
)


def test_chi2_critical_known_values():
    # Table values: χ²_{0.95}(1) = 3.841, χ²_{0.999}(10) = 29.588, χ²_{0.99}(24) = 42.980.
    assert chi2_critical(1, 0.05) == pytest.approx(3.841, abs=2e-3)
    assert chi2_critical(10, 0.001) == pytest.approx(29.588, abs=2e-3)
    assert chi2_critical(24, 0.01) == pytest.approx(42.980, abs=2e-3)


def test_small_cells_are_pooled():
    assert pooled_cells({"a": 10.0, "b": 2.0, "c": 3.0, "d": 0.0}) == [["a"], ["b", "c"]]


def test_goodness_of_fit_and_impossible_outcomes():
    probs = {"a": 0.5, "b": 0.3, "c": 0.2}
    assert chi2_goodness({"a": 50, "b": 30, "c": 20}, probs, 100) == (0.0, 2)
    with pytest.raises(AssertionError, match="target probability 0"):
        chi2_goodness({"a": 99, "z": 1}, probs, 100)


def draft_draws(seed: int, n: int, lie=None):
    """n (token, reported q, depth) draws, each token drawn from a fresh random q; `lie` maps q
    to what is reported (None: honest)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        q = torch.softmax(torch.randn(8, generator=g, dtype=torch.float64) * 1.5, -1)
        out.append((int(torch.multinomial(q, 1, generator=g)), q if lie is None else lie(q), 1 + i % 3))
    return out


def flatten(q):
    return q.sqrt() / q.sqrt().sum()


@pytest.mark.parametrize("test", [chi2_draft_tokens, chi2_calibration])
def test_draft_tests_hold_their_level_for_honest_draws(test):
    rejections = 0
    for seed in range(100):
        stat, df = test(draft_draws(seed, 300))
        rejections += stat > chi2_critical(df, 0.05)
    assert rejections <= 10  # the level is 5 %; the tests are conservative


def toward_zero(q):
    return 0.5 * q + 0.5 * torch.nn.functional.one_hot(torch.tensor(0), len(q)).double()


@pytest.mark.parametrize(
    "test, lie",
    [
        (chi2_calibration, flatten),  # a token reported at 0.3 comes up more often than 30 %
        (chi2_calibration, lambda q: q.roll(1)),  # reported and drawn law unrelated
        (chi2_calibration, toward_zero),
        (chi2_draft_tokens, toward_zero),  # a systematic excess of one token
    ],
    ids=["calibration-flattened", "calibration-shifted", "calibration-biased", "tokens-biased"],
)
def test_draft_tests_detect_a_reported_q_that_is_not_the_draw_law(test, lie):
    """(With a fresh random q per draw, flattening or shifting q leaves the expected count of each
    token unchanged: the token test cannot see those lies, the calibration test can.)"""
    stat, df = test(draft_draws(0, 600, lie))
    assert stat > chi2_critical(df, 1e-3)


def test_a_token_its_own_q_rules_out_fails():
    q = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(AssertionError, match="probability 0"):
        chi2_draft_tokens([(0, q, 1)])


def mean_law_runs(seed: int, runs: int, bias: float = 0.0):
    """Per run, a conditional law p ± δ depending on a fair coin (E = p), plus `bias`·δ."""
    g = torch.Generator().manual_seed(seed)
    p = {"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1}
    delta = {"a": 0.1, "b": -0.1, "c": 0.05, "d": -0.05}
    laws = []
    for _ in range(runs):
        sign = 1.0 if bool(torch.rand((), generator=g) < 0.5) else -1.0
        laws.append({k: p[k] + (sign + bias) * delta[k] for k in p})
    return laws, p


def test_mean_law_test_holds_its_level_and_detects_a_bias():
    rejections = sum(chi2_mean_law(*mean_law_runs(seed, 200)) > (chi2_critical(3, 0.05), 0) for seed in range(100))
    assert rejections <= 10
    stat, df = chi2_mean_law(*mean_law_runs(0, 500, bias=1.0))
    assert stat > chi2_critical(df, 1e-3)


def test_mean_law_of_exact_laws_is_zero_and_cells_can_be_merged():
    exact = {("a", "x"): 0.5, ("a", "y"): 0.25, ("b", "x"): 0.25}
    assert chi2_mean_law([exact] * 100, exact) == (0.0, 2)
    stat, df = chi2_mean_law([exact] * 100, exact, cell=lambda seq: seq[0])
    assert (stat, df) == (0.0, 1)
    with pytest.raises(AssertionError, match="cannot produce"):
        chi2_mean_law([{("c", "x"): 1.0}], exact)
