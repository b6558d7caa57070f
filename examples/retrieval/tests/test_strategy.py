"""The `retrieval` strategy: options, registration, tokenizer choice and drafts."""

from __future__ import annotations

import importlib.metadata
from types import SimpleNamespace

import pytest
from conftest import CORPUS, STORIES, setup_context
from pydantic import ValidationError

from cas_spec import load_pipeline
from cas_spec.plugin import ConfigError, get_plugins
from cas_spec_retrieval import Retrieval, RetrievalOptions


def test_the_entry_point_registers_the_strategy():
    (ep,) = [ep for ep in importlib.metadata.entry_points(group="cas_spec") if ep.name == "retrieval"]
    assert ep.value == "cas_spec_retrieval.plugin"
    plugins = get_plugins()
    assert plugins.strategies.get("retrieval") is Retrieval
    assert plugins.strategies.owner("retrieval") == "retrieval" and "retrieval" not in plugins.broken


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "corpus\n  Field required"),
        ({"corpus": "/nonexistent"}, "corpus /nonexistent: no such file or directory"),
        ({"corpus": str(CORPUS), "num_tokens": 0}, "num_tokens\n  Input should be greater than or equal to 1"),
        ({"corpus": str(CORPUS), "min_ngram": 5, "max_ngram": 3}, "min_ngram (5) must not exceed max_ngram (3)"),
        ({"corpus": str(CORPUS), "top_k": 3}, "top_k\n  Extra inputs are not permitted"),
    ],
)
def test_bad_options_say_what_is_wrong(options, message):
    with pytest.raises(ValidationError) as info:
        RetrievalOptions(**options)
    assert message in str(info.value)


def test_an_empty_corpus_is_rejected(tmp_path):
    (tmp_path / "blank.txt").write_text("  \n\n\t")
    (tmp_path / "notes.json").write_text("{}")
    with pytest.raises(ValidationError, match="empty"):
        RetrievalOptions(corpus=str(tmp_path))
    (tmp_path / "blank.txt").unlink()
    with pytest.raises(ValidationError, match="holds no .txt or .md file"):
        RetrievalOptions(corpus=str(tmp_path))


def test_a_pipeline_with_a_missing_corpus_fails_with_the_location(stories):
    model, tokenizer = stories
    config = {
        "scheduler": {"kind": "chain"},
        "calibration": "off",
        "levels": [{"name": "rest", "kind": "retrieval", "options": {"corpus": "/nonexistent"}}],
    }
    with pytest.raises(ConfigError, match="levels.0.options.corpus: Value error, corpus /nonexistent: no such"):
        load_pipeline(config, model=model, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(STORIES))


@pytest.fixture
def strategy(cache, tokenizer):
    strategy = Retrieval(RetrievalOptions(corpus=str(CORPUS), num_tokens=6))
    strategy.setup(setup_context(tokenizer))
    return strategy


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_draft_proposes_what_followed_the_longest_match(strategy, tokenizer):
    context = ids(tokenizer, "Then Tom and Sue liked to bake")
    draft = strategy.draft(SimpleNamespace(tokens=context), (), 10)
    assert tokenizer.decode(context + list(draft.tokens)) == "Then Tom and Sue liked to bake cakes with the"
    assert draft.draft_probs is None and len(draft.tokens) == 6
    assert draft.confidence == (8.0,) * 6  # the whole 8-token window matched
    assert strategy.draft(SimpleNamespace(tokens=context), (), 2).tokens == draft.tokens[:2]


def test_draft_continues_after_the_prefix(strategy, tokenizer):
    context = ids(tokenizer, "Then Tom and Sue liked to bake cakes")
    split = len(context) - 2
    with_prefix = strategy.draft(SimpleNamespace(tokens=context[:split]), tuple(context[split:]), 10)
    assert with_prefix == strategy.draft(SimpleNamespace(tokens=context), (), 10)


def test_no_match_means_no_draft(strategy, tokenizer):
    assert strategy.draft(SimpleNamespace(tokens=ids(tokenizer, "zzq")), (), 10).tokens == ()


def test_ids_the_model_cannot_embed_end_a_draft(cache, tokenizer):
    small = Retrieval(RetrievalOptions(corpus=str(CORPUS)))
    small.setup(setup_context(tokenizer, vocab_size=300))
    full = Retrieval(RetrievalOptions(corpus=str(CORPUS)))
    full.setup(setup_context(tokenizer))
    context = ids(tokenizer, "Then Tom and Sue liked to bake")
    want = full.draft(SimpleNamespace(tokens=context), (), 10).tokens
    cut = next(i for i, t in enumerate(want) if t >= 300)
    assert small.draft(SimpleNamespace(tokens=context), (), 10).tokens == want[:cut]


def test_draft_before_setup_says_so():
    with pytest.raises(RuntimeError, match="before setup"):
        Retrieval(RetrievalOptions(corpus=str(CORPUS))).draft(SimpleNamespace(tokens=[1, 2]), (), 4)


def test_the_tokenizer_option_wins_over_the_pipelines(cache, tokenizer, monkeypatch):
    from cas_spec_retrieval import strategy as module

    used = []
    monkeypatch.setattr(module, "load_index", lambda corpus, tok: used.append(tok))
    pipeline_tokenizer = object()
    Retrieval(RetrievalOptions(corpus=str(CORPUS), tokenizer=str(STORIES))).setup(setup_context(pipeline_tokenizer))
    Retrieval(RetrievalOptions(corpus=str(CORPUS))).setup(setup_context(pipeline_tokenizer))
    assert used[0] is not pipeline_tokenizer and used[0].get_vocab() == tokenizer.get_vocab()
    assert used[1] is pipeline_tokenizer


def test_an_unknown_tokenizer_is_a_config_error(cache, tmp_path):
    with pytest.raises(ConfigError, match="set the `tokenizer` option"):
        Retrieval(RetrievalOptions(corpus=str(CORPUS))).setup(setup_context(None))
    with pytest.raises(ConfigError, match="cannot load a tokenizer from"):
        Retrieval(RetrievalOptions(corpus=str(CORPUS), tokenizer=str(tmp_path))).setup(setup_context(None))
