"""The kit's exact laws: `target_law` against brute force, `step_law` against the real sampling
verifier, and the identity the contracts rely on: averaged over honest drafts, the law of a
generation given its first tree is the target's law exactly."""

from __future__ import annotations

import random

import torch
from hypothesis import given
from hypothesis import strategies as st

from cas_spec.core.tree import TreeBuilder
from cas_spec.core.types import SamplingParams
from cas_spec.testing.exact import (
    first_step_law,
    law_from,
    path_tokens,
    random_distribution,
    row_errors,
    step_law,
    target_law,
    total_variation,
    tree_from_branches,
)
from cas_spec.testing.models import sampling_llama
from cas_spec.testing.stats import chi2_critical, chi2_goodness
from cas_spec.testing.strategies import distributions, token_trees
from cas_spec.verifiers.sampling import SamplingVerifier

ATOL = 1e-6  # the verifier's probabilities are float32 softmaxes


def world(seed: int, vocab: int):
    """Synthetic next-token laws, a function of the continuation only."""

    def next_probs(continuations):
        return torch.stack([random_distribution(random.Random(repr((seed, c))), vocab) for c in continuations])

    return next_probs


def rows_for(tree, next_probs):
    """Log-probabilities per node, as target logits whose softmax is the world's law after it."""
    return next_probs([path_tokens(tree, n) for n in range(tree.size)]).log().float()


def test_target_law_is_the_product_of_plain_forwards():
    model = sampling_llama()
    prompt = [5, 7, 5, 7, 5]
    law = target_law(model, prompt, 2, eos=(2,))
    with torch.no_grad():
        first = torch.softmax(model(torch.tensor([prompt])).logits[0, -1].double(), -1)
        second = torch.softmax(model(torch.tensor([prompt + [a] for a in range(10)])).logits[:, -1].double(), -1)
    assert abs(sum(law.law.values()) - 1) < ATOL
    assert abs(law.law[(2,)] - float(first[2])) < 1e-6 and (2, 0) not in law.law
    for a in (0, 4, 9):
        for b in (1, 2, 3):
            assert abs(law.law[(a, b)] - float(first[a] * second[a, b])) < 1e-6


def test_a_continuation_the_target_cannot_produce_stays_visible():
    law = law_from(lambda cs: torch.tensor([[0.5, 0.5, 0.0]] * len(cs), dtype=torch.float64), 2)
    assert law.continuation((2,)) == [((2,), 1.0)]  # p(2) = 0: no conditional after it
    assert sorted(law.continuation((1,))) == [((1, 0), 0.5), ((1, 1), 0.5)]


def test_step_law_of_one_point_mass_child():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], dtype=torch.float64)
    tree = tree_from_branches(0, [(0, 1)])
    got = step_law(tree, p)
    # accept 1 with p(1) = 0.3, then the bonus from p(. | 1); else 1 is zeroed: (0.5, 0, 0.2) / 0.7
    want = {(1, 0): 0.03, (1, 1): 0.18, (1, 2): 0.09, (0,): 0.5, (2,): 0.2}
    assert set(got) == set(want) and all(abs(got[k] - want[k]) < ATOL for k in want)


@given(st.integers(0, 2**32 - 1), st.integers(2, 3), token_trees(3, max_nodes=7, sampled=False))
def test_a_tree_of_point_masses_gives_the_target_law_exactly(seed, vocab, tree):
    tree = _clip(tree, vocab)
    depth = int(tree.depths.max())
    law = law_from(world(seed, vocab), depth + 1)
    got = first_step_law(tree, rows_for(tree, world(seed, vocab)), law)
    assert total_variation(got, law.law) < ATOL
    assert all(err < ATOL for _, err in row_errors(tree, rows_for(tree, world(seed, vocab)), law))


@given(st.integers(0, 2**32 - 1), distributions(3))
def test_honest_sampled_children_give_the_target_law_on_average(seed, q):
    """Root children: a sampled x ~ q (with a point-mass grandchild), then a point mass 0. The
    mean of the first-step laws over the draws of x, weighted by q(x), is the target's law."""
    law = law_from(world(seed, 3), 2)
    mean: dict = {}
    for x, w in enumerate(q.tolist()):
        if w > 0:
            builder = TreeBuilder(0)
            child = builder.add(0, x, "q", draft_probs=q.float())
            builder.add(child, 1, "point")
            builder.add(0, 0, "point")
            tree = builder.build()
            for k, v in first_step_law(tree, rows_for(tree, world(seed, 3)), law).items():
                mean[k] = mean.get(k, 0.0) + w * v
    assert total_variation(mean, law.law) < ATOL


def test_a_lying_q_is_off_the_target_law():
    """The control of the identity above: x drawn from q, labelled with a flatter q'."""
    law = law_from(world(11, 3), 1)
    q = torch.tensor([0.7, 0.2, 0.1], dtype=torch.float64)
    liar = (q.sqrt() / q.sqrt().sum()).float()
    mean: dict = {}
    for x, w in enumerate(q.tolist()):
        tree = TreeBuilder(0)
        tree.add(0, x, "q", draft_probs=liar)
        tree = tree.build()
        for k, v in first_step_law(tree, rows_for(tree, world(11, 3)), law).items():
            mean[k] = mean.get(k, 0.0) + w * v
    assert total_variation(mean, law.law) > 0.01


def test_step_law_matches_the_sampling_verifier():
    """Seeded Monte Carlo of SamplingVerifier on a mixed tree against `step_law` (χ², α = 1e-3)."""
    g = torch.Generator().manual_seed(0)
    builder = TreeBuilder(0)
    q = torch.softmax(torch.randn(5, generator=g), -1)
    a = builder.add(0, 3, "point")
    builder.add(a, 1, "point")
    b = builder.add(0, int(torch.multinomial(q, 1, generator=g)), "q", draft_probs=q)
    builder.add(b, 2, "q", draft_probs=q)
    builder.add(0, 3, "point")
    tree = builder.build()
    logits = torch.randn(tree.size, 5, generator=g) * 1.5
    law = step_law(tree, torch.softmax(logits, -1))
    counts: dict = {}
    verifier, trials = SamplingVerifier(), 4000
    for _ in range(trials):
        out = verifier.verify(tree, logits, SamplingParams(temperature=1.0), g).new_tokens
        counts[out] = counts.get(out, 0) + 1
    stat, df = chi2_goodness(counts, law, trials)
    assert abs(sum(law.values()) - 1) < ATOL and stat < chi2_critical(df, 1e-3)


def test_row_errors_find_a_wrong_row():
    law = law_from(world(3, 3), 2)
    tree = tree_from_branches(0, [(0, 1), (1, 2)])
    rows = rows_for(tree, world(3, 3))
    assert max(err for _, err in row_errors(tree, rows, law)) < ATOL
    rows[1] = rows[1].flip(0)
    assert [path for path, err in row_errors(tree, rows, law) if err > 1e-3] == [(1,)]


def _clip(tree, vocab):
    """The same tree with every token taken modulo `vocab`."""
    builder = TreeBuilder(int(tree.tokens[0]) % vocab)
    for node in range(1, tree.size):
        builder.add(tree.parents[node], int(tree.tokens[node]) % vocab, "point")
    return builder.build()
