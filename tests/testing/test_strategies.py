"""The kit's hypothesis strategies produce valid objects, which the verifiers and the tree
builder accept, and cover the corner cases they promise (point masses, zeros, shared prefixes)."""

from __future__ import annotations

import torch
from hypothesis import find, given
from hypothesis import strategies as st

from cas_spec.core.sampling import target_probs
from cas_spec.core.tree import TreeBuilder
from cas_spec.core.types import SamplingParams
from cas_spec.testing.strategies import distributions, draft_results, sampling_params, token_sequences, token_trees
from cas_spec.verifiers.greedy import GreedyVerifier
from cas_spec.verifiers.sampling import SamplingVerifier


@given(st.integers(1, 7).flatmap(lambda v: st.tuples(st.just(v), distributions(v))))
def test_distributions_are_float64_probability_vectors(case):
    vocab, p = case
    assert p.shape == (vocab,) and p.dtype == torch.float64
    assert float(p.min()) >= 0 and abs(float(p.sum()) - 1) < 1e-12


def test_distributions_include_point_masses_and_zeros():
    assert float(find(distributions(4), lambda p: float(p.max()) == 1.0).max()) == 1.0
    assert float(find(distributions(4), lambda p: 0 < float(p.max()) < 1 and float(p.min()) == 0).min()) == 0


@given(token_sequences(5, 2, 6))
def test_token_sequences_respect_size_and_vocabulary(seq):
    assert 2 <= len(seq) <= 6 and all(0 <= t < 5 for t in seq)


@given(token_trees(4, max_nodes=9), st.integers(0, 2**31 - 1))
def test_token_trees_are_valid_and_verifiable(tree, seed):
    assert 1 <= tree.size <= 9 and tree.parents[0] == -1
    assert all(0 <= tree.parents[i] < i for i in range(1, tree.size))
    assert all(int(tree.depths[i]) == int(tree.depths[tree.parents[i]]) + 1 for i in range(1, tree.size))
    assert all(tree.parents[c] == n for n in range(tree.size) for c in tree.children[n])
    for node, q in enumerate(tree.draft_probs):
        if q is not None:
            assert q.shape == (4,) and float(q[int(tree.tokens[node])]) > 0
    logits = torch.randn(tree.size, 4, generator=torch.Generator().manual_seed(seed))
    for verifier, temperature in ((GreedyVerifier(), 0.0), (SamplingVerifier(), 1.0)):
        verdict = verifier.verify(
            tree, logits, SamplingParams(temperature=temperature), torch.Generator().manual_seed(seed)
        )
        assert len(verdict.accepted_nodes) <= int(tree.depths.max())


def test_token_trees_have_branches_sharing_a_prefix():
    """Two siblings with one token, each with children: the case prefix sharing must handle."""

    def shared(tree):
        for kids in tree.children:
            tokens = [int(tree.tokens[c]) for c in kids if tree.children[c]]
            if len(tokens) != len(set(tokens)):
                return True
        return False

    assert shared(find(token_trees(2, max_nodes=8, sampled=False), shared))


@given(sampling_params())
def test_sampling_params_give_a_distribution(sampling):
    probs = target_probs(torch.randn(3, 70, generator=torch.Generator().manual_seed(0)), sampling)
    assert torch.allclose(probs.sum(-1), torch.ones(3)) and float(probs.min()) >= 0


@given(draft_results(6, max_tokens=5))
def test_draft_results_are_consistent_and_fit_a_tree(draft):
    assert len(draft) <= 5 and all(0 <= t < 6 for t in draft.tokens)
    assert len(draft.confidence) == len(draft)
    if draft.draft_probs is not None:
        assert all(float(draft.draft_probs[i, t]) > 0 for i, t in enumerate(draft.tokens))
    for token, alternatives in zip(draft.tokens, draft.alternatives):
        assert all(t != token for t, _ in alternatives)
        assert len({t for t, _ in alternatives}) == len(alternatives)
    builder = TreeBuilder(0)
    assert builder.add_chain(0, draft, "lvl") == list(range(1, len(draft) + 1))
