"""Seeded statistical tests with fixed critical values (scipy is not a dependency).

Every test here is run on a seeded experiment, so a check built on it is one fixed, reproducible
experiment, not a flaky test; `alpha` is the chance that an exact plugin would have failed it for
an unlucky seed.

- `chi2_goodness`: observed counts against exact probabilities (Pearson, small cells pooled).
- `chi2_mean_law`: the mean of M conditional laws against the exact law. Each run contributes the
  exact law of its output *given its draft* (`exact.first_step_law`), not one sample; by the law
  of total variance the covariance of that mean is at most the multinomial covariance of M
  samples, so Pearson's statistic with the χ² critical value stays a valid (conservative) test
  while its power is far higher: runs whose drafts are deterministic add no noise at all.
- `chi2_draft_tokens`: drafted tokens against the q each claims to be drawn from, per group (the
  node's depth: a bias at one position is not diluted by the others). Expected counts are Σ q;
  with varying q the covariance of the counts is again below the multinomial one, so the test is
  (approximately) conservative. `chi2_calibration` does the same with bins of the reported
  q(token) for cells.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import torch


def chi2_critical(df: int, alpha: float) -> float:
    """The (1 − alpha) quantile of χ²(df), by bisection on torch's Chi2 cdf."""
    dist = torch.distributions.Chi2(torch.tensor(float(max(df, 1)), dtype=torch.float64))
    lo, hi = 0.0, float(df) + 20.0 * (2.0 * max(df, 1)) ** 0.5 + 50.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if float(dist.cdf(torch.tensor(mid, dtype=torch.float64))) < 1.0 - alpha:
            lo = mid
        else:
            hi = mid
    return hi


def pooled_cells(expected: Mapping[Hashable, float], min_expected: float = 5.0) -> list[list]:
    """Cells with expected count ≥ `min_expected` alone, the others pooled into one cell (the
    usual validity condition of the χ² approximation)."""
    big = [[k] for k, e in expected.items() if e >= min_expected]
    small = [k for k, e in expected.items() if 0 < e < min_expected]
    if small:
        big.append(small)
    return big


def _pearson(observed: Mapping, expected: Mapping, cells: list[list]) -> float:
    stat = 0.0
    for cell in cells:
        e = sum(expected[k] for k in cell)
        o = sum(observed.get(k, 0.0) for k in cell)
        stat += (o - e) ** 2 / e
    return stat


def chi2_goodness(counts: Mapping, probs: Mapping, trials: int) -> tuple[float, int]:
    """(statistic, df) of observed `counts` against exact `probs`. Outcomes with probability 0
    must not occur (AssertionError naming them)."""
    impossible = {k: c for k, c in counts.items() if probs.get(k, 0.0) <= 0 and c > 0}
    assert not impossible, f"outcomes with target probability 0 were produced: {impossible}"
    expected = {k: trials * p for k, p in probs.items() if p > 0}
    cells = pooled_cells(expected)
    return _pearson(counts, expected, cells), len(cells) - 1


def chi2_mean_law(
    laws: Sequence[Mapping], exact: Mapping, cell: Callable[[Any], Hashable] | None = None, atol: float = 1e-6
) -> tuple[float, int]:
    """(statistic, df) of the mean of `laws` (one exact conditional law per run) against `exact`,
    scaled as counts of len(laws) trials, on the cells `cell(outcome)` (default: the outcomes;
    a coarser partition, such as the token at one position, concentrates the counts). Mass above
    `atol` on outcomes `exact` rules out fails."""
    runs = len(laws)
    total: dict = {}
    for law in laws:
        for k, w in law.items():
            total[k] = total.get(k, 0.0) + w
    impossible = {k: w / runs for k, w in total.items() if exact.get(k, 0.0) <= 0 and w / runs > atol}
    assert not impossible, f"outputs the target cannot produce have probability {impossible}"
    if cell is not None:
        total, exact = _project(total, cell), _project(exact, cell)
    expected = {k: runs * p for k, p in exact.items() if p > 0}
    cells = pooled_cells(expected)
    return _pearson(total, expected, cells), len(cells) - 1


def _project(law: Mapping, cell: Callable[[Any], Hashable]) -> dict:
    out: dict = {}
    for k, w in law.items():
        out[cell(k)] = out.get(cell(k), 0.0) + w
    return out


Draw = tuple  # (token, q [V], group): a drafted token, the q it claims, a hashable group (its depth)


def _draft_test(draws: Iterable[Draw], cell_of: Callable[[torch.Tensor], list[int]]) -> tuple[float, int]:
    observed: dict = {}
    expected: dict = {}
    for token, q, group in draws:
        cells = cell_of(q.double())
        key = (group, cells[token])
        observed[key] = observed.get(key, 0.0) + 1.0
        for c, w in zip(cells, q.double().tolist()):
            if w > 0:
                expected[(group, c)] = expected.get((group, c), 0.0) + w
    impossible = {k: c for k, c in observed.items() if expected.get(k, 0.0) <= 0}
    assert not impossible, f"drafted tokens to which their own q gives probability 0: {sorted(impossible)}"
    if not observed:
        return 0.0, 0
    pooled = pooled_cells(expected)
    return _pearson(observed, expected, pooled), len(pooled) - 1


def chi2_draft_tokens(draws: Iterable[Draw]) -> tuple[float, int]:
    """(statistic, df): counts of drafted tokens per (group, token) against Σ q over (token, q,
    group) draws."""
    return _draft_test(draws, lambda q: list(range(len(q))))


CALIBRATION_EDGES = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


def chi2_calibration(draws: Iterable[Draw], edges: Sequence[float] = CALIBRATION_EDGES) -> tuple[float, int]:
    """(statistic, df) of a reliability test: every (draw, token t) pair falls in the bin of its
    reported q(t), per group; in each cell the drawn tokens must number Σ q(t) (a token reported
    at 0.6 must come up 60% of the time). Each draw puts one token into one cell with the
    probabilities q assigns the cells, so this is `chi2_draft_tokens` with bins for tokens:
    draws from a q other than the reported one (an argmax, a flattened or sharpened q, a draft
    kept because its token was likely) fail it."""
    bounds = torch.tensor(edges[1:-1], dtype=torch.float64)
    return _draft_test(draws, lambda q: torch.bucketize(q, bounds, right=True).tolist())


__all__ = ["chi2_calibration", "chi2_critical", "chi2_draft_tokens", "chi2_goodness", "chi2_mean_law", "pooled_cells"]
