"""No leakage: drafting, even drafting that writes into the KV cache or raises midway, leaves the
cache and the next logits exactly as a run that never drafted."""

from __future__ import annotations

import pytest
import torch

from cas_spec import load_pipeline
from cas_spec.core.interfaces import DraftStrategy
from cas_spec.core.plugins import build_plugins
from cas_spec.core.types import DraftResult
from tests.helpers import IdTokenizer, tiny_llama


class DraftError(RuntimeError):
    pass


class CacheScribbler(DraftStrategy):
    """Runs the target over junk tokens through the shared cache, then proposes junk (or raises)."""

    name = "cache_scribbler"
    raise_on_call = None  # set per test
    runs_target = True

    def setup(self, context):
        self.target = context.target
        self.calls = 0

    def draft(self, state, prefix, max_tokens):
        self.calls += 1
        target = self.target
        junk = torch.tensor([[7, 8, 9]])
        with torch.inference_mode():
            target.model(
                input_ids=junk,
                past_key_values=target.cache,
                use_cache=True,
                position_ids=torch.arange(target.length, target.length + 3)[None],
            )
        if self.raise_on_call is not None and self.calls >= self.raise_on_call:
            raise DraftError("drafter failed midway")
        return DraftResult(tokens=(11, 12, 13)[:max_tokens])


def pipeline(model):
    from cas_spec.core.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def register_strategies(self, registry):
            registry.add(CacheScribbler)

    plugins = build_plugins(entry_points=(), extra=[Plugin()])
    from cas_spec.core.config import load_config
    from cas_spec.pipeline import build_pipeline

    config = load_config(
        {
            "scheduler": {"kind": "chain", "options": {"k": 3, "adaptive": False}},
            "levels": [{"name": "junk", "kind": "cache_scribbler"}],
        },
        plugins=plugins,
    )
    return build_pipeline(config, model, IdTokenizer(), plugins=plugins)


PROMPT = [4, 9, 16, 25, 36, 49, 64, 81, 3, 5]


def test_drafts_written_into_the_cache_do_not_change_the_output():
    model = tiny_llama(2)
    CacheScribbler.raise_on_call = None
    got = pipeline(model).generate(PROMPT, max_new_tokens=30)
    plain = load_pipeline({"scheduler": {"kind": "autoregressive"}}, model=model, tokenizer=IdTokenizer())
    assert got.token_ids == plain.generate(PROMPT, max_new_tokens=30).token_ids


@pytest.mark.parametrize("fail_on_call", [1, 4])
def test_a_drafter_that_raises_midway_leaves_cache_and_logits_untouched(fail_on_call):
    model = tiny_llama(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    CacheScribbler.raise_on_call = fail_on_call
    pipe = pipeline(model)
    with pytest.raises(DraftError):
        pipe.generate(PROMPT, max_new_tokens=30)
    target = pipe.target
    # Every step before the failing one committed exactly one token (the junk drafts are rejected).
    assert target.length == len(PROMPT) - 1 + (fail_on_call - 1)
    assert all(layer.get_seq_length() == target.length for layer in target.cache.layers)

    # The cache holds exactly what a never-drafting run holds at the same point.
    from transformers import DynamicCache

    plain = load_pipeline({"scheduler": {"kind": "autoregressive"}}, model=model, tokenizer=IdTokenizer())
    produced = plain.generate(PROMPT, max_new_tokens=fail_on_call - 1).token_ids if fail_on_call > 1 else []
    committed_ids = PROMPT + produced
    reference = DynamicCache(config=model.config)
    with torch.inference_mode():
        ref_logits = model(torch.tensor([committed_ids]), past_key_values=reference, use_cache=True).logits[0, -1]
    # The failing step's root is the newest token; the cache stops just before it.
    assert target.length == len(committed_ids) - 1
    for got, want in zip(target.cache.layers, reference.layers):
        torch.testing.assert_close(got.keys, want.keys[..., :-1, :], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(got.values, want.values[..., :-1, :], atol=1e-6, rtol=1e-6)
    with torch.inference_mode():
        next_logits = model(
            torch.tensor([[committed_ids[-1]]]),
            past_key_values=target.cache,
            use_cache=True,
            position_ids=torch.tensor([[target.length]]),
        ).logits[0, -1]
    torch.testing.assert_close(next_logits, ref_logits, atol=1e-5, rtol=1e-5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
