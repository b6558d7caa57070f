"""Which tokens a draft head keeps: the tokenizer's ids ranked by frequency (FR-Spec, 2025).

The ranking (`token_ranking`): special tokens first (by id), then every token seen in the shipped
benchmark text by count (ties by id), then the unseen ones by id (BPE ids roughly follow merge
frequency). The text is every string of both files in `cas_spec/data/`
(`spec_bench_question.jsonl`, `mt_bench_question.jsonl`): every turn and every reference answer
(a list of references flattened), identical strings counted once (the 80 MT-Bench questions are
Spec-Bench's ids 81–160, so they add nothing new), 1,022 strings, each encoded without special
tokens. With SmolLM2-135M's tokenizer that is 157,887 tokens with 15,272 distinct ids. Cached per
tokenizer (a hash of its vocabulary, special ids and the text) under
`cache_dir() / "draft_vocab"`, written atomically. A tokenizer that cannot encode the text (a test
double such as `IdTokenizer`) gets the id order.

Other rankings scored no better on 1,274 greedy tokens of 24 other Spec-Bench questions (coverage
at 32768 / 16384 / 8192 / 4096 / 2048): count then id 0.995 / 0.974 / 0.957 / 0.935 / 0.913; id
order alone 0.993 / 0.972 / 0.953 / 0.924 / 0.892; count and id order interleaved 0.995 / 0.975 /
0.951 / 0.926 / 0.902; only tokens seen ≥ 2 or ≥ 3 times by count: within 0.007 of the first.
The misses are content words of the answers (e.g. "breathtaking", "majestic"): 158k tokens of
questions cannot rank the tail of the model's own vocabulary.
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from cas_spec.paths import cache_dir, write_text_atomically

FORMAT = 1
TEXT_FILES = ("spec_bench_question.jsonl", "mt_bench_question.jsonl")  # in cas_spec/data/

_lock = threading.Lock()
_rankings: dict[str, list[int]] = {}  # cache key -> ranked ids (specials, then seen tokens)
_keys: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> its cache key


def ranking_text() -> list[str]:
    """The counted text: every turn and reference string of both shipped question files, each
    distinct string once, in file order."""
    texts: dict[str, None] = {}
    data = resources.files("cas_spec.data")
    for name in TEXT_FILES:
        for line in data.joinpath(name).read_text("utf-8").split("\n"):
            if not line.strip():
                continue
            record = json.loads(line)
            references = [r for ref in record.get("reference", []) for r in ([ref] if isinstance(ref, str) else ref)]
            for text in (*record["turns"], *references):
                if isinstance(text, str) and text.strip():
                    texts.setdefault(text)
    return list(texts)


def vocabulary_key(tokenizer: Any) -> str | None:
    """A hash of the tokenizer's vocabulary, special ids and the counted text (None: the tokenizer
    has no vocabulary to hash)."""
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError, TypeError):
        return None
    if not isinstance(vocab, dict) or not vocab:
        return None
    digest = hashlib.sha256(f"draft-vocab-{FORMAT}".encode())
    for token, index in sorted(vocab.items(), key=lambda item: item[1]):
        digest.update(f"{index}\t{token}\n".encode())
    digest.update(repr(sorted(_special_ids(tokenizer))).encode())
    digest.update("\n".join(ranking_text()).encode())
    return digest.hexdigest()[:20]


def cache_file(key: str) -> Path:
    return cache_dir() / "draft_vocab" / f"{key}.json"


def count_tokens(tokenizer: Any) -> tuple[list[int], int] | None:
    """(ranked ids: special tokens by id, then seen tokens by count, ties by id; tokens counted),
    or None when the tokenizer cannot encode the text."""
    counts: Counter[int] = Counter()
    try:
        for text in ranking_text():
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            counts.update(int(i) for i in ids)
    except (ValueError, TypeError, KeyError):
        return None
    specials = sorted(set(_special_ids(tokenizer)))
    special_set = set(specials)
    seen = sorted((i for i in counts if i not in special_set), key=lambda i: (-counts[i], i))
    return [*specials, *seen], sum(counts.values())


def ranked_ids(tokenizer: Any) -> list[int]:
    """The tokenizer's special and seen token ids, most frequent first (empty: id order),
    from memory, the disk cache, or counted and cached."""
    key = _key(tokenizer) if tokenizer is not None else None
    if key is None:
        return list(_special_ids(tokenizer)) if tokenizer is not None else []
    with _lock:
        if key in _rankings:
            return _rankings[key]
        path = cache_file(key)
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError("old format")
            ranked = [int(i) for i in data["ranked"]]
        except (OSError, ValueError, KeyError, TypeError):
            counted = count_tokens(tokenizer)
            if counted is None:
                ranked = sorted(_special_ids(tokenizer))
            else:
                ranked, total = counted
                write_text_atomically(
                    path,
                    json.dumps(
                        {
                            "format": FORMAT,
                            "text": list(TEXT_FILES),
                            "tokens": total,
                            "distinct": len(ranked),
                            "ranked": ranked,
                        }
                    ),
                )
        _rankings[key] = ranked
        return ranked


def token_ranking(tokenizer: Any, vocab_size: int) -> list[int]:
    """Every id below `vocab_size` once, most frequent first (see the module docstring)."""
    seen: set[int] = set()
    order: list[int] = []
    for i in ranked_ids(tokenizer):
        if 0 <= i < vocab_size and i not in seen:
            seen.add(i)
            order.append(i)
    order.extend(i for i in range(vocab_size) if i not in seen)
    return order


def frequent_ids(tokenizer: Any, vocab_size: int, count: int) -> torch.Tensor:
    """The `count` top-ranked ids below `vocab_size`, ascending (long)."""
    top = token_ranking(tokenizer, vocab_size)[:count]
    return torch.tensor(sorted(top), dtype=torch.long)


def _key(tokenizer: Any) -> str | None:
    try:
        if tokenizer in _keys:
            return _keys[tokenizer]
    except TypeError:  # not weakly referable or not hashable: hash every time
        return vocabulary_key(tokenizer)
    key = _keys[tokenizer] = vocabulary_key(tokenizer)
    return key


def _special_ids(tokenizer: Any) -> list[int]:
    ids = getattr(tokenizer, "all_special_ids", None) or []
    return [int(i) for i in ids if isinstance(i, int) and i >= 0]


__all__ = ["frequent_ids", "ranked_ids", "ranking_text", "token_ranking", "vocabulary_key"]
