"""The index is built once per corpus and tokenizer, cached on disk, and reused."""

from __future__ import annotations

import pytest
from conftest import CORPUS, STORIES

from cas_spec.plugin import ConfigError
from cas_spec_retrieval import store


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(STORIES))


class ListTokenizer:
    """A slow-tokenizer stand-in (no backend): one id per word, the word's length."""

    def __init__(self, zero_for_all=False):
        self.zero_for_all = zero_for_all

    def get_vocab(self):
        return {"x": 0}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [] if self.zero_for_all else [len(w) for w in text.split()]}


def test_built_once_then_read_from_disk(cache, tokenizer, monkeypatch):
    index = store.load_index(str(CORPUS), tokenizer)
    files = list((cache / "retrieval").glob("*.npz"))
    assert len(files) == 1 and files[0].stem == store.index_key(str(CORPUS), tokenizer)
    store.clear_memory()
    monkeypatch.setattr(store, "build_index", lambda *a: pytest.fail("the cached index was rebuilt"))
    again = store.load_index(str(CORPUS), tokenizer)
    assert again is not index and again.tokens == index.tokens and again.suffixes == index.suffixes
    assert store.load_index(str(CORPUS), tokenizer) is again  # then from memory


def test_the_index_holds_the_tokenized_documents(cache, tokenizer):
    index = store.load_index(str(CORPUS), tokenizer)
    documents = [store.encode(tokenizer, f.read_text(encoding="utf-8")) for f in sorted(CORPUS.iterdir())]
    assert list(index.tokens) == documents[0] + [-1] + documents[1]
    assert documents[1] == tokenizer(CORPUS.joinpath("stories.txt").read_text(), add_special_tokens=False)["input_ids"]


def test_a_changed_corpus_or_tokenizer_gets_a_new_index(cache, tokenizer, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat sat on the mat.")
    first = store.index_key(str(corpus), tokenizer)
    assert store.index_key(str(corpus), ListTokenizer()) != first
    corpus.write_text("The cat sat on the hat.")
    assert store.index_key(str(corpus), tokenizer) != first
    moved = tmp_path / "elsewhere.txt"
    moved.write_text("The cat sat on the hat.")
    assert store.index_key(str(moved), tokenizer) == store.index_key(str(corpus), tokenizer)


def test_a_corrupt_cache_file_is_rebuilt(cache, tokenizer):
    path = store.index_path(store.index_key(str(CORPUS), tokenizer))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an index")
    index = store.load_index(str(CORPUS), tokenizer)
    assert len(index) > 100 and store.SuffixIndex.load(path).tokens == index.tokens


def test_a_corpus_that_gives_no_token_is_a_config_error(cache, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text")
    with pytest.raises(ConfigError, match="retrieval.corpus: corpus .* is empty"):
        store.load_index(str(corpus), ListTokenizer(zero_for_all=True))
    assert not (cache / "retrieval").exists() or not list((cache / "retrieval").iterdir())


def test_a_file_that_is_not_utf8_is_a_config_error(cache, tmp_path):
    (tmp_path / "c.txt").write_bytes(b"caf\xe9 au lait")
    with pytest.raises(ConfigError, match="is not UTF-8"):
        store.load_index(str(tmp_path / "c.txt"), ListTokenizer())
