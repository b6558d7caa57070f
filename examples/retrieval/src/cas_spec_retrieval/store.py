"""The index of a corpus, built once per corpus and tokenizer and cached on disk and in memory.

The key is a sha256 over the index format, the corpus's content (`corpus_digest`) and the
tokenizer's identity (its full serialized form for fast tokenizers: vocabulary, merges,
normalizer and pre-tokenizer; else its class and vocabulary). The file is
`<cas-spec cache dir>/retrieval/<key>.npz` (`CAS_SPEC_CACHE` moves the cache dir), written to a
temporary file and renamed, so a reader never sees a half-written index. A changed corpus or
tokenizer gets a new key; old files are left for the user to delete. Levels and pipelines of
one process share the index through a small in-memory cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from cas_spec.plugin import ConfigError, cache_dir
from cas_spec_retrieval.corpus import corpus_digest, read_documents
from cas_spec_retrieval.index import SuffixIndex

FORMAT = 1  # bump when the file layout or the tokenization rule changes
MEMORY_SLOTS = 4
_memory: dict[str, SuffixIndex] = {}


def tokenizer_digest(tokenizer) -> str:
    """sha256 of what decides how the tokenizer splits text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        identity = backend.to_str()
    else:  # a slow or home-made tokenizer: its class, and its vocabulary when it has one
        cls = type(tokenizer)
        identity = f"{cls.__module__}.{cls.__qualname__}"
        if hasattr(tokenizer, "get_vocab"):
            identity += json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(identity.encode()).hexdigest()


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens (what the tokenizer gives for text in a prompt)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # the fast path, and no warning about texts longer than the model's context
        return backend.encode(text, add_special_tokens=False).ids
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def index_key(corpus: str, tokenizer) -> str:
    parts = f"{FORMAT}\0{corpus_digest(corpus)}\0{tokenizer_digest(tokenizer)}"
    return hashlib.sha256(parts.encode()).hexdigest()[:32]


def index_path(key: str) -> Path:
    return cache_dir() / "retrieval" / f"{key}.npz"


def build_index(corpus: str, tokenizer) -> SuffixIndex:
    """Tokenize every document of `corpus` and index them; ConfigError when no token results."""
    try:
        documents = [encode(tokenizer, text) for text in read_documents(corpus)]
    except ValueError as exc:
        raise ConfigError([f"retrieval.corpus: {exc}"]) from None
    if not any(documents):
        raise ConfigError([f"retrieval.corpus: corpus {corpus} is empty: its text gives no token"])
    return SuffixIndex.build(documents)


def load_index(corpus: str, tokenizer) -> SuffixIndex:
    """The index of `corpus` under `tokenizer`: from memory, from disk, or built and saved."""
    try:
        key = index_key(corpus, tokenizer)
    except (OSError, ValueError) as exc:
        raise ConfigError([f"retrieval.corpus: {exc}"]) from None
    if key in _memory:
        return _memory[key]
    path = index_path(key)
    index = None
    if path.exists():
        try:
            index = SuffixIndex.load(path)
        except (OSError, ValueError, KeyError):  # unreadable: rebuild and overwrite
            index = None
    if index is None:
        index = build_index(corpus, tokenizer)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            index.save(Path(tmp))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    while len(_memory) >= MEMORY_SLOTS:
        del _memory[next(iter(_memory))]
    _memory[key] = index
    return index


def clear_memory() -> None:
    """Forget the indexes held in memory (the next `load_index` reads the disk cache)."""
    _memory.clear()
