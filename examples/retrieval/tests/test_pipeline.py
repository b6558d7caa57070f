"""End to end on stories260K: the shipped YAML pipeline decodes greedily token for token like
plain decoding, and drafts from the corpus are accepted where the corpus holds the continuation."""

from __future__ import annotations

import pytest
from conftest import CORPUS, PACKAGE, PIPELINE

from cas_spec import load_pipeline

IN_CORPUS = "Once upon a time, there was a little dog named Max."  # tests/data/corpus/stories.txt goes on
NOT_IN_CORPUS = "Lily and Ben went to the park."


@pytest.fixture(scope="module")
def plain(stories):
    model, tokenizer = stories
    return load_pipeline("autoregressive", model=model, tokenizer=tokenizer)


@pytest.mark.parametrize("prompt", [IN_CORPUS, NOT_IN_CORPUS])
def test_the_shipped_pipeline_equals_plain_greedy(stories, plain, prompt, monkeypatch):
    monkeypatch.chdir(PACKAGE)  # the YAML's corpus path is relative to the package folder
    model, tokenizer = stories
    pipe = load_pipeline(PIPELINE, model=model, tokenizer=tokenizer)
    got = pipe.generate(prompt, max_new_tokens=64)
    assert got.token_ids == plain.generate(prompt, max_new_tokens=64).token_ids
    if prompt == IN_CORPUS:
        assert got.stats.mean_acceptance_length > 2.0
        assert got.stats.levels["rest"].accepted > 20


def test_retrieval_alone_drafts_what_the_corpus_continues(stories, plain):
    model, tokenizer = stories
    config = {
        "scheduler": {"kind": "chain", "options": {"level": "rest", "k": 8, "adaptive": False}},
        "calibration": "off",
        "levels": [{"name": "rest", "kind": "retrieval", "options": {"corpus": str(CORPUS)}}],
    }
    pipe = load_pipeline(config, model=model, tokenizer=tokenizer)
    for prompt in (IN_CORPUS, NOT_IN_CORPUS):
        got = pipe.generate(prompt, max_new_tokens=48)
        assert got.token_ids == plain.generate(prompt, max_new_tokens=48).token_ids
    got = pipe.generate(IN_CORPUS, max_new_tokens=48)
    assert got.stats.mean_acceptance_length > 4.0  # the corpus holds this very story
    assert got.stats.levels["rest"].accepted == got.stats.new_tokens - got.stats.target_forwards
