"""Model variants (the DSIA switch) and no leakage: whatever a draft pass does or raises, the
target's weights, module lists, attention settings and KV cache are as before."""

from __future__ import annotations

import pytest
import torch

from cas_spec import load_pipeline
from cas_spec.adapters import resolve_adapter
from cas_spec.strategies.dsia.variants import (
    ATTENTION,
    MLP,
    PassThroughLayer,
    Sublayer,
    ZeroAttention,
    build_variant,
    skippable_sublayers,
)
from tests.helpers import AUTOREGRESSIVE, IdTokenizer, repetitive_prompt, self_draft_chain, tiny_llama


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_a_variant_shares_every_parameter_and_leaves_the_target_untouched():
    model = tiny_llama(0, layers=4)
    adapter = resolve_adapter(model)
    before = snapshot(model)
    layers, head = adapter.layers, adapter.lm_head
    variant = build_variant(adapter, skip=[Sublayer(1, ATTENTION), Sublayer(2, MLP), Sublayer(2, ATTENTION)])
    assert isinstance(variant.layers[1].self_attn, ZeroAttention)
    assert variant.layers[1].mlp is layers[1].mlp
    assert isinstance(variant.layers[2], PassThroughLayer)
    assert variant.layers[0] is layers[0] and variant.layers[3] is layers[3]
    assert not isinstance(layers[1].self_attn, ZeroAttention)  # the original layer is not modified
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        with adapter.swapped(variant.layers, variant.lm_head):
            assert adapter.layers is variant.layers
            drafted = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert not torch.equal(drafted, reference)
    assert torch.equal(after, reference)
    assert adapter.layers is layers and adapter.lm_head is head
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_skipping_a_sublayer_equals_zeroing_its_output_projection():
    model = tiny_llama(1, layers=4)
    adapter = resolve_adapter(model)
    ids = torch.tensor([[3, 9, 4, 11, 5]])
    variant = build_variant(adapter, skip=[Sublayer(1, ATTENTION), Sublayer(2, MLP)])
    with torch.no_grad():
        with adapter.swapped(variant.layers):
            skipped = model(input_ids=ids).logits
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
        zeroed = model(input_ids=ids).logits
    torch.testing.assert_close(skipped, zeroed, atol=1e-6, rtol=1e-5)


def test_early_exit_runs_the_first_layers_then_the_final_norm_and_head():
    model = tiny_llama(2, layers=4)
    adapter = resolve_adapter(model)
    ids = torch.tensor([[3, 9, 4]])
    variant = build_variant(adapter, exit_layer=2)
    with torch.no_grad(), adapter.swapped(variant.layers):
        assert len(adapter.layers) == 2
        logits = model(input_ids=ids).logits
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[2]
        expected = model.lm_head(model.model.norm(hidden))
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=1e-5)


def test_variants_refuse_protected_sublayers_and_bad_exit_layers():
    adapter = resolve_adapter(tiny_llama(0, layers=4))
    assert Sublayer(0, MLP) not in skippable_sublayers(adapter)
    assert Sublayer(3, ATTENTION) not in skippable_sublayers(adapter)
    with pytest.raises(ValueError, match="cannot skip 0.mlp"):
        build_variant(adapter, skip=[Sublayer(0, MLP)])
    with pytest.raises(ValueError, match="exit_layer"):
        build_variant(adapter, exit_layer=5)
    with pytest.raises(ValueError, match="LAYER.attention"):
        Sublayer.parse("3.ffn")


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("level", ["early_exit", "layer_sparsity", "quanto_activation"])
def test_a_draft_pass_that_raises_midway_leaks_nothing(level):
    model = tiny_llama(4, layers=4)
    prompt = repetitive_prompt(4, model.config.vocab_size)
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer()).generate(prompt, max_new_tokens=30)
    pipe = load_pipeline(self_draft_chain(level), model=model, tokenizer=IdTokenizer())
    adapter = pipe.adapter
    layers, head, attn = adapter.layers, adapter.lm_head, model.config._attn_implementation
    before = snapshot(model)
    calls = {"draft passes": 0}

    def fail_in_the_third_draft_pass(module, args, output):
        if adapter.layers is not layers:  # a variant is swapped in: this is a draft pass
            calls["draft passes"] += 1
            if calls["draft passes"] == 3:
                raise Boom("draft pass failed")

    handle = adapter.final_norm.register_forward_hook(fail_in_the_third_draft_pass)
    try:
        with pytest.raises(Boom):
            pipe.generate(prompt, max_new_tokens=30)
    finally:
        handle.remove()
    assert adapter.layers is layers and adapter.lm_head is head
    assert model.config._attn_implementation == attn
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    target = pipe.target
    lengths = [layer.get_seq_length() for layer in target.cache.layers]
    assert lengths == [target.length] * len(lengths), "the cache holds exactly the committed tokens"
    # The committed KV is what the target computes for the committed tokens.
    fresh = adapter.new_cache()
    committed = prompt + plain.token_ids  # greedy: whatever was committed is plain decoding's
    with torch.no_grad():
        model(input_ids=torch.tensor([committed[: target.length]]), past_key_values=fresh, use_cache=True)
    for got, want in zip(target.cache.layers, fresh.layers, strict=True):
        torch.testing.assert_close(got.keys, want.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.values, want.values, atol=1e-5, rtol=1e-4)
    # And the pipeline still generates exactly what plain decoding does.
    assert pipe.generate(prompt, max_new_tokens=30).token_ids == plain.token_ids
