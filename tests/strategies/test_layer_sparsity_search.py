"""The on-the-fly skip-set search: it finds sublayers that do nothing, caches the set per model and
sparsity, reuses it, and never reuses it for a different model."""

from __future__ import annotations

import torch

from cas_spec import load_pipeline
from cas_spec.strategies.dsia.skip_search import SkipSearch, load_cached, model_fingerprint
from cas_spec.strategies.dsia.variants import ATTENTION, MLP, Sublayer
from tests.helpers import AUTOREGRESSIVE, IdTokenizer, tiny_llama

IDENTITIES = {Sublayer(1, ATTENTION), Sublayer(3, MLP), Sublayer(4, ATTENTION)}


def model_with_identity_sublayers(seed: int = 0):
    """Six layers; the sublayers in IDENTITIES output zero (their output projection is zero), so
    skipping exactly them leaves the model unchanged. The other sublayers are made to matter."""
    model = tiny_llama(seed, layers=6, hidden=32, heads=4, kv_heads=2, intermediate=64, vocab=64)
    with torch.no_grad():
        for _index, layer in enumerate(model.model.layers):
            layer.self_attn.o_proj.weight.mul_(4.0)
            layer.mlp.down_proj.weight.mul_(4.0)
        for sub in IDENTITIES:
            layer = model.model.layers[sub.layer]
            (layer.self_attn.o_proj if sub.kind == ATTENTION else layer.mlp.down_proj).weight.zero_()
    return model


def searching(**options) -> dict:
    return {
        "scheduler": {"kind": "chain", "options": {"k": 4, "adaptive": False}},
        "calibration": "off",
        "levels": [
            {
                "name": "skip",
                "kind": "layer_sparsity",
                "options": {
                    "sparsity": 0.375,
                    "window": 128,
                    "target_score": 1.0,
                    "search_budget": 120,
                    "patience": 120,
                    "stop_below": 0.0,
                    **options,
                },
            }
        ],
    }


def random_prompt(length: int, vocab: int, seed: int = 0) -> list[int]:
    """Diverse text: on it only the identity set agrees with the target everywhere (a tiny model's
    own greedy text soon loops, and a loop is easy to predict for many sets)."""
    return torch.randint(3, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_the_search_finds_the_identity_sublayers_and_caches_them():
    model = model_with_identity_sublayers()
    prompt = random_prompt(140, model.config.vocab_size)
    pipe = load_pipeline(searching(), model=model, tokenizer=IdTokenizer())
    strategy = pipe.levels[0].strategy
    assert strategy.count == len(IDENTITIES)
    result = pipe.generate(prompt, max_new_tokens=100)
    assert (
        result.token_ids
        == load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer())
        .generate(prompt, max_new_tokens=100)
        .token_ids
    )
    search = strategy.search
    assert search.done and search.best_score == 1.0
    assert set(strategy.skip) == IDENTITIES
    # With the identity set found, drafts are the target's own tokens.
    assert result.stats.levels["skip"].accepted > 0

    cached = load_cached(model_fingerprint(model), 0.375)
    assert cached["done"] and set(map(Sublayer.parse, cached["skip"])) == IDENTITIES

    # The next pipeline on the same model starts from the cached set and does not search.
    again = load_pipeline(searching(), model=model, tokenizer=IdTokenizer()).levels[0].strategy
    assert again.search is None and set(again.skip) == IDENTITIES

    # A different model (one weight changed) never sees that set.
    with torch.no_grad():
        model.model.layers[2].mlp.up_proj.weight[0, 0] += 1.0
    changed = load_pipeline(searching(), model=model, tokenizer=IdTokenizer()).levels[0].strategy
    assert changed.search is not None and changed.search.evaluations == 0


def test_prepare_runs_the_search_to_the_end_ahead_of_generation_and_caches_it():
    """What `cas-spec calibrate` does for a layer_sparsity level: the whole search on given text."""
    import pytest

    model = model_with_identity_sublayers()
    with torch.no_grad():  # another fingerprint than the model of the test above, same identities
        model.model.layers[2].mlp.up_proj.weight[0, 0] += 0.5
    pipe = load_pipeline(searching(target_score=1.0), model=model, tokenizer=IdTokenizer())
    strategy = pipe.levels[0].strategy
    with pytest.raises(ValueError, match="at least"):
        strategy.prepare(pipe.target, random_prompt(20, 64), progress=False)
    strategy.prepare(pipe.target, random_prompt(300, model.config.vocab_size), progress=False)
    assert strategy.search.done and set(strategy.skip) == IDENTITIES
    cached = load_cached(model_fingerprint(model), 0.375)
    assert cached["done"] and set(map(Sublayer.parse, cached["skip"])) == IDENTITIES
    assert load_pipeline(searching(), model=model, tokenizer=IdTokenizer()).levels[0].strategy.search is None


def test_search_off_without_a_set_is_a_clear_error():
    import pytest

    from cas_spec.core.errors import ConfigError

    model = tiny_llama(9, layers=4)
    with pytest.raises(ConfigError, match="no skip set for this model"):
        load_pipeline(searching(search="off"), model=model, tokenizer=IdTokenizer())


def test_the_local_optimiser_keeps_the_set_size_and_only_improves():
    candidates = tuple(Sublayer(i, k) for i in range(1, 9) for k in (ATTENTION, MLP))
    search = SkipSearch(candidates, 5, budget=300, target_score=1.0, patience=300, seed=3)
    hidden = set(candidates[::3][:5])
    best_so_far = -1.0
    while not search.done:
        candidate = search.propose()
        assert len(candidate) == 5 and candidate <= set(candidates)
        search.report(candidate, len(candidate & hidden) / 5)
        assert search.best_score >= best_so_far
        best_so_far = search.best_score
    assert search.best == hidden


def test_the_online_search_is_timed_apart_from_drafting(monkeypatch):
    """Each search step scores a candidate after a verified step (`observe`): its time is the
    level's adaptation time, never its draft cost, so a scheduler does not see a searching level
    as an expensive drafter and stop choosing it (which would starve the search)."""
    import time

    from cas_spec.strategies.layer_sparsity import LayerSparsity

    model = model_with_identity_sublayers()
    with torch.no_grad():  # a fingerprint no other test has cached a set for
        model.model.layers[2].mlp.up_proj.weight[0, 0] += 0.25
    real = LayerSparsity.search_step

    def slow(self, state, window=None):
        time.sleep(0.1)  # far more than a tiny model's draft call takes, even on a busy machine
        return real(self, state, window)

    monkeypatch.setattr(LayerSparsity, "search_step", slow)
    pipe = load_pipeline(searching(), model=model, tokenizer=IdTokenizer())
    result = pipe.generate(random_prompt(60, model.config.vocab_size), max_new_tokens=30)
    stats = result.stats.levels["skip"]
    assert stats.adapt_seconds > 0.1 * (result.stats.target_forwards - 1)  # a search step after each step
    assert stats.seconds < 0.1 * stats.calls / 2  # drafting did not pay for it


def test_under_calibration_auto_the_first_pipeline_searches_ahead(monkeypatch, tmp_path):
    """No cached set and `calibration: auto`: building the pipeline runs the whole search on the
    shipped text (`prepare`), so the first generation already drafts with the final set."""
    from cas_spec.costs import draft_costs, table

    monkeypatch.setattr(table, "costs_dir", lambda: tmp_path)
    monkeypatch.setattr(draft_costs, "costs_dir", lambda: tmp_path)
    model = model_with_identity_sublayers()
    with torch.no_grad():
        model.model.layers[2].mlp.up_proj.weight[0, 0] += 0.75
    config = {**searching(target_score=1.0), "calibration": "auto"}
    strategy = load_pipeline(config, model=model, tokenizer=IdTokenizer()).levels[0].strategy
    assert strategy.search.done and strategy.search.evaluations >= 100
    cached = load_cached(model_fingerprint(model), 0.375)
    assert cached["done"] and set(map(Sublayer.parse, cached["skip"])) == set(strategy.skip)
