"""Draft costs measured ahead (`costs/draft_costs.py`): the fit, the cache, the measurement on a
tiny model, and what `cas-spec calibrate` shows."""

from __future__ import annotations

import pytest

from cas_spec import load_pipeline
from cas_spec.costs import draft_costs as dc
from tests.helpers import STORIES, IdTokenizer, tiny_llama


def test_the_fit_splits_a_call_cost_from_a_token_cost():
    per_call, per_token = dc.fit_call_and_token([(1, 0.7), (4, 1.6)])
    assert per_call == pytest.approx(0.4) and per_token == pytest.approx(0.3)
    assert dc.fit_call_and_token([(0, 0.002), (0, 0.002)]) == pytest.approx((0.002, 0.0))
    points = [(1, 0.7), (3, 1.2), (6, 2.3)]  # 0.4 + 0.3 t, off by +0, −0.1, +0.1
    per_call, per_token = dc.fit_call_and_token(points)
    residual = dc.fit_residual(points, per_call, per_token)
    assert 0.0 < residual < 0.1 and per_token == pytest.approx(0.3, abs=0.03)


def test_calibration_drafts_each_length_in_full_although_the_level_stops_early():
    """A level that would stop after one token (stop_below 1.0) still drafts 1, 3 and 6 tokens
    while its cost is measured, so the fit sees three lengths, not one."""
    model = tiny_llama(33, layers=4, vocab=96, max_positions=512)
    config = {
        "scheduler": {"kind": "chain"},
        "calibration": "off",
        "levels": [{"name": "exit1", "kind": "early_exit", "options": {"exit_layer": 1, "stop_below": 1.0}}],
    }
    pipe = load_pipeline(config, model=model, tokenizer=IdTokenizer())
    proposed = []
    draft = pipe.levels[0].strategy.draft
    pipe.levels[0].strategy.draft = lambda *a: (lambda r: (proposed.append(len(r)), r)[1])(draft(*a))
    text = dc.calibration_text_ids(IdTokenizer(), 80, vocab_size=96)
    costs = dc.measure_draft_costs(pipe.target, pipe.levels, text, context_lengths=(40,), repeats=2, progress=False)
    assert set(proposed) == {1, 3, 6}
    assert len(costs["exit1"].residual) == 1


def test_cache_round_trip_and_signatures_follow_the_options(tmp_path, monkeypatch):
    monkeypatch.setattr(dc, "costs_dir", lambda: tmp_path)
    cost = dc.LevelDraftCost((64, 300), (0.01, 0.02), (0.5, 0.6))
    dc.save_draft_costs("key", {"sig": {"cost": cost, "quick": True}})
    assert dc.load_draft_costs("key") == {"sig": {"cost": cost, "quick": True}}
    assert dc.load_draft_costs("other") == {}
    (tmp_path / "key.draft.json").write_text("{not json")
    assert dc.load_draft_costs("key") == {}

    from cas_spec.strategies.layer_sparsity import LayerSparsityOptions

    a = dc.level_signature("layer_sparsity", LayerSparsityOptions(sparsity=0.4))
    assert a == dc.level_signature("layer_sparsity", LayerSparsityOptions(sparsity=0.4))
    assert a != dc.level_signature("layer_sparsity", LayerSparsityOptions(sparsity=0.6))


CONFIG = {
    "scheduler": {"kind": "dytc"},
    "levels": [
        {"name": "exit1", "kind": "early_exit", "options": {"exit_layer": 1}},
        {"name": "pld", "kind": "prompt_lookup"},
    ],
}


def test_a_pipeline_measures_its_levels_once_and_reuses_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(dc, "costs_dir", lambda: tmp_path)  # not what other tests' pipelines cached
    calls = []
    measure = dc.measure_draft_costs

    def counting(target, levels, *args, **kwargs):
        calls.append([lv.name for lv in levels])
        return measure(target, levels, *args, **kwargs)

    monkeypatch.setattr(dc, "measure_draft_costs", counting)
    model = tiny_llama(31, layers=4, vocab=96, max_positions=512)
    pipe = load_pipeline(CONFIG, model=model, tokenizer=IdTokenizer())
    assert calls == [["exit1", "pld"]]  # quick, on first use
    costs = pipe.calibration.drafts
    assert set(costs) == {"exit1", "pld"} and costs["exit1"].context_lengths == (300,)
    assert pipe.costs.draft("exit1") is costs["exit1"]  # what the scheduler is handed
    for cost in costs.values():
        assert min(cost.per_call + cost.per_token) >= 0.0
    load_pipeline(CONFIG, model=model, tokenizer=IdTokenizer())
    assert len(calls) == 1  # cached
    full = load_pipeline(CONFIG, model=model, tokenizer=IdTokenizer(), calibration="full").calibration.drafts
    assert len(calls) == 2 and full["exit1"].context_lengths == (64, 300)  # 1,000 does not fit 512
    quick = load_pipeline(CONFIG, model=model, tokenizer=IdTokenizer(), calibration="quick").calibration.drafts
    assert quick == full and len(calls) == 2  # the full measurement serves a quick one
    shown = dc.format_draft_costs(full, {"exit1": "early_exit", "pld": "prompt_lookup"})
    assert "exit1" in shown and "early_exit" in shown and "per token" in shown


def test_without_calibration_no_draft_costs_are_measured():
    config = dict(CONFIG, calibration="off")
    pipe = load_pipeline(config, model=tiny_llama(32, layers=4), tokenizer=IdTokenizer())
    assert pipe.calibration is None and pipe.costs.draft("exit1") is None and not pipe.costs.measured


def test_calibration_text_is_real_text_or_seeded_ids_for_a_tokenizer_that_cannot_encode_it():
    from transformers import AutoTokenizer

    ids = dc.calibration_text_ids(AutoTokenizer.from_pretrained(STORIES), 300, vocab_size=512)
    assert len(ids) >= 300 and len(set(ids)) > 50
    fallback = dc.calibration_text_ids(IdTokenizer(), 300, vocab_size=96)
    assert len(fallback) == 300 and max(fallback) < 96
    assert fallback == dc.calibration_text_ids(IdTokenizer(), 300, vocab_size=96)
