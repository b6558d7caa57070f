"""`cas_sdpa` attention: equal to stock on cached chunks, padding and token trees; needs its mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from cas_spec.core.tree import TreeBuilder, tree_attention_mask, tree_position_ids
from cas_spec.kernels.attention import (
    NAME,
    MissingMaskError,
    attention_kernel,
    register_attention,
    sdpa_gqa_attention,
)
from tests.helpers import cached_logits, gqa_llama

PROMPT = 20


def logits_under(model, impl, ids, chunks):
    with attention_kernel(model, impl):
        return cached_logits(model, ids, chunks)


@pytest.fixture
def ids():
    return torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(2))


def test_four_new_tokens_on_a_cache_match_stock_sdpa_and_eager(model, ids):
    chunks = [PROMPT, 4]
    sdpa = logits_under(model, "sdpa", ids, chunks)[1]
    eager = logits_under(model, "eager", ids, chunks)[1]
    ours = logits_under(model, NAME, ids, chunks)[1]
    assert (ours - sdpa).abs().max().item() < 1e-5
    assert (ours - eager).abs().max().item() < 1e-5
    assert model.config._attn_implementation == "sdpa"  # restored


def test_without_the_mask_registration_logits_are_silently_wrong(model, ids):
    """Negative control: the same SDPA call registered without `AttentionMaskInterface` gets no mask."""

    def unmasked(module, query, key, value, attention_mask, scaling=None, **kwargs):
        square = attention_mask is None and query.shape[2] == key.shape[2] > 1  # prefill stays causal
        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=attention_mask,
            scale=scaling,
            is_causal=square,
            enable_gqa=query.shape[1] != key.shape[1],
        )
        return out.transpose(1, 2), None

    AttentionInterface.register("cas_test_unmasked", unmasked)
    chunks = [PROMPT, 4]
    reference = logits_under(model, "sdpa", ids, chunks)[1]
    wrong = logits_under(model, "cas_test_unmasked", ids, chunks)[1]
    # the first three new tokens attend to their future (and, through later layers, spoil the fourth)
    assert (wrong - reference).abs().max().item() > 1e-2
    # a single new token needs no mask: there the unmasked function is right
    one = logits_under(model, "sdpa", ids, [PROMPT, 1])[1]
    assert (logits_under(model, "cas_test_unmasked", ids, [PROMPT, 1])[1] - one).abs().max().item() < 1e-5
    # ours, registered without its mask function, refuses rather than answering wrongly
    AttentionInterface.register("cas_test_maskless", sdpa_gqa_attention)
    with pytest.raises(MissingMaskError):
        logits_under(model, "cas_test_maskless", ids, chunks)


@pytest.mark.parametrize("chunks", [[PROMPT, 1], [PROMPT], [PROMPT, 1, 3, 8, 1], [PROMPT, 12, 1]])
def test_prefill_and_cached_steps_match_stock(model, ids, chunks):
    """Prefill (is_causal), folded query heads (n ≤ 8) and enable_gqa with a mask (n = 12)."""
    reference = logits_under(model, "sdpa", ids, chunks)
    ours = logits_under(model, NAME, ids, chunks)
    for got, ref in zip(ours, reference, strict=True):
        assert (got - ref).abs().max().item() < 1e-5


def test_padding_mask_is_honoured():
    model = gqa_llama(seed=3)
    ids = torch.randint(3, 256, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, :5] = 0  # left padding in the second row
    with torch.inference_mode():
        reference = model(input_ids=ids, attention_mask=mask).logits
        with attention_kernel(model, NAME):
            ours = model(input_ids=ids, attention_mask=mask).logits
    assert (ours[0] - reference[0]).abs().max().item() < 1e-5
    assert (ours[1, 5:] - reference[1, 5:]).abs().max().item() < 1e-5


def tree_forward(model, impl, ids, tree):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with attention_kernel(model, impl), torch.inference_mode():
        model(input_ids=ids[:, :PROMPT], past_key_values=cache, use_cache=True)
        mask = tree_attention_mask(tree, PROMPT, model.dtype)
        positions = tree_position_ids(tree, PROMPT)
        return model(
            input_ids=tree.tokens[None],
            position_ids=positions,
            attention_mask=mask,
            past_key_values=cache,
            use_cache=True,
        ).logits[0]


def test_token_tree_with_an_additive_mask_matches_stock_and_each_path(model, ids):
    builder = TreeBuilder(int(ids[0, PROMPT]))
    a = builder.add(0, 11, None)
    b = builder.add(a, 12, None)
    builder.add(b, 13, None)
    c = builder.add(0, 21, None)
    builder.add(c, 22, None)
    builder.add(a, 31, None)
    tree = builder.build()
    ours = tree_forward(model, NAME, ids, tree)
    assert (ours - tree_forward(model, "sdpa", ids, tree)).abs().max().item() < 1e-5
    assert (ours - tree_forward(model, "eager", ids, tree)).abs().max().item() < 1e-5
    # every node equals the last position of its own path fed as a plain chain
    for node in range(tree.size):
        path = [node]
        while tree.parents[path[-1]] > 0:
            path.append(tree.parents[path[-1]])
        chain = [int(ids[0, PROMPT])] + [int(tree.tokens[i]) for i in reversed(path) if i > 0]
        chain_ids = torch.cat([ids[:, :PROMPT], torch.tensor([chain])], dim=1)
        expected = logits_under(model, "sdpa", chain_ids, [PROMPT, len(chain)])[1][0, -1]
        assert (ours[node] - expected).abs().max().item() < 1e-4, node


def test_attention_kernel_restores_under_an_exception(model):
    with pytest.raises(RuntimeError, match="boom"):
        with attention_kernel(model, NAME):
            assert model.config._attn_implementation == NAME
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    assert all(
        getattr(m.config, "_attn_implementation", "sdpa") == "sdpa" for m in model.modules() if hasattr(m, "config")
    )


def test_registration_is_idempotent_and_none_is_a_no_op(model):
    assert register_attention() == register_attention() == NAME
    with attention_kernel(model, None):
        assert model.config._attn_implementation == "sdpa"


def test_a_mask_changed_in_place_between_forwards_is_not_served_stale(model, ids):
    """The folded mask is reused across the layers of one forward, never across forwards."""
    from transformers import DynamicCache

    mask = torch.zeros(1, 1, 4, PROMPT + 4)
    mask[..., PROMPT:] = torch.full((4, 4), torch.finfo(torch.float32).min).triu(1)
    positions = torch.arange(PROMPT, PROMPT + 4)[None]

    def run(impl):
        cache = DynamicCache(config=model.config)
        with attention_kernel(model, impl), torch.inference_mode():
            model(input_ids=ids[:, :PROMPT], past_key_values=cache)
            return model(
                input_ids=ids[:, PROMPT : PROMPT + 4],
                position_ids=positions,
                attention_mask=mask,
                past_key_values=cache,
            ).logits

    first = run(NAME)
    assert (first - run("sdpa")).abs().max().item() < 1e-5
    mask[..., :5] = torch.finfo(torch.float32).min  # same object, new content: hide 5 prefix tokens
    second = run(NAME)
    assert (second - run("sdpa")).abs().max().item() < 1e-5
    assert (second - first).abs().max().item() > 1e-3
