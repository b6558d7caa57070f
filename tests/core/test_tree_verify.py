"""Tree verification: one forward over a hand-built tree gives each path's own logits, the
verdict is the longest greedy path, and the committed cache equals a plain forward over it."""

from __future__ import annotations

import pytest
import torch

from cas_spec.adapters import resolve_adapter
from cas_spec.core.target import Target
from cas_spec.core.tree import ancestor_matrix, tree_attention_mask
from cas_spec.core.types import SamplingParams
from cas_spec.testing.exact import tree_from_branches as build_tree
from cas_spec.verifiers.greedy import GreedyVerifier
from tests.helpers import tiny_llama

PROMPT = [5, 17, 33, 8, 41, 12, 9, 27, 30, 14, 6, 21]


def greedy_continuation(model, prompt, n):
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def full_forward(model, ids):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        logits = model(torch.tensor([ids]), past_key_values=cache, use_cache=True).logits[0]
    return logits, cache


def prefilled_target(model):
    target = Target(model, resolve_adapter(model))
    target.prefill(PROMPT[:-1])
    return target


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_each_node_gets_the_logits_of_its_own_path(attn):
    model = tiny_llama(1, attn=attn)
    target = prefilled_target(model)
    # root ─┬─ 7 ─┬─ 8 ── 9
    #       │     └─ 10
    #       └─ 11 ── 12
    tree = build_tree(PROMPT[-1], [(0, 7), (1, 8), (2, 9), (1, 10), (0, 11), (5, 12)])
    logits = target.forward_tree(tree)
    for node in range(tree.size):
        path = []
        n = node
        while n > 0:
            path.append(int(tree.tokens[n]))
            n = tree.parents[n]
        expected, _ = full_forward(model, PROMPT + path[::-1])
        torch.testing.assert_close(logits[node], expected[-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_verdict_and_cache_equal_a_plain_forward_over_the_accepted_path(seed):
    model = tiny_llama(seed)
    greedy = greedy_continuation(model, PROMPT, 4)
    wrong = [(t + 1) % model.config.vocab_size for t in greedy]
    # The correct path sits on a later branch, below a wrong sibling, with a wrong leaf beside
    # its last accepted node, so the accepted nodes are not a contiguous prefix of the tree.
    tree = build_tree(
        PROMPT[-1],
        [
            (0, wrong[0]),
            (1, greedy[1]),  # wrong first token: a dead branch
            (0, greedy[0]),  # node 3
            (3, wrong[1]),  # node 4: wrong sibling first
            (3, greedy[1]),  # node 5
            (5, greedy[2]),
            (5, wrong[2]),  # nodes 6, 7
            (6, wrong[3]),  # node 8: rejected leaf
        ],
    )
    target = prefilled_target(model)
    prefix = target.length
    verdict = GreedyVerifier().verify(tree, target.forward_tree(tree), SamplingParams(), None)
    assert verdict.accepted_nodes == (3, 5, 6)
    assert list(verdict.accepted_tokens) == greedy[:3]
    assert verdict.bonus_token == greedy[3]

    target.commit(tree, verdict.accepted_nodes)
    assert target.length == prefix + 4
    _expected_logits, expected_cache = full_forward(model, PROMPT + greedy[:3])
    for got, want in zip(target.cache.layers, expected_cache.layers):
        torch.testing.assert_close(got.keys, want.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.values, want.values, atol=1e-5, rtol=1e-5)
    # The next step's logits (root = bonus token) equal a plain forward's.
    next_tree = build_tree(verdict.bonus_token, [])
    next_logits = target.forward_tree(next_tree)
    reference, _ = full_forward(model, PROMPT + greedy[:4])
    torch.testing.assert_close(next_logits[0], reference[-1], atol=1e-5, rtol=1e-5)


def test_rejected_everything_keeps_only_the_root():
    model = tiny_llama(5)
    greedy = greedy_continuation(model, PROMPT, 1)
    tree = build_tree(PROMPT[-1], [(0, (greedy[0] + 1) % 96), (0, (greedy[0] + 2) % 96)])
    target = prefilled_target(model)
    verdict = GreedyVerifier().verify(tree, target.forward_tree(tree), SamplingParams(), None)
    assert verdict.accepted_nodes == () and verdict.bonus_token == greedy[0]
    target.commit(tree, verdict.accepted_nodes)
    _, expected_cache = full_forward(model, PROMPT)
    for got, want in zip(target.cache.layers, expected_cache.layers):
        torch.testing.assert_close(got.keys, want.keys, atol=1e-5, rtol=1e-5)


def test_tree_mask_is_additive_and_lets_nodes_see_only_ancestors():
    tree = build_tree(1, [(0, 2), (1, 3), (0, 4)])
    mask = tree_attention_mask(tree, prefix_length=3, dtype=torch.float32)
    assert mask.shape == (1, 1, 4, 7) and mask.dtype == torch.float32
    visible = mask[0, 0] == 0
    assert visible[:, :3].all()
    assert torch.equal(visible[:, 3:], ancestor_matrix(tree))
    assert ancestor_matrix(tree).tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [True, False, False, True],
    ]
