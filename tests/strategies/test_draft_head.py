"""The frequency-ranked draft head (`cas_spec.strategies.dsia.draft_head`, option `draft_vocab`).

The token ranking (order, special tokens, the disk cache, a tokenizer that cannot encode text),
`SubsetHead`'s logits (the full head's on the subset, `-inf` elsewhere; int8 rows bitwise the full
twin's), the context entering the subset, and through the strategies: drafted tokens always in
the subset, `draft_probs` distributions that are zero outside it, greedy output identical to
plain decoding for every self-speculative strategy on tiny models and on the stories fixture.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest
import torch
from torch import nn

from cas_spec import load_pipeline
from cas_spec.core.errors import ConfigError
from cas_spec.strategies.dsia import quantization as qz
from cas_spec.strategies.dsia import token_ranking as ranking
from cas_spec.strategies.dsia.draft_head import SubsetHead, build_subset_head
from cas_spec.strategies.dsia.token_ranking import ranked_ids, ranking_text, token_ranking
from cas_spec.testing.models import tiny_model
from tests.helpers import (
    AUTOREGRESSIVE,
    SELF_DRAFT_LEVELS,
    STORIES_SELF_DRAFT_LEVELS,
    IdTokenizer,
    repetitive_prompt,
    tiny_llama,
)

AVAILABLE = qz.available_backends()
INT8 = [
    pytest.param(name, marks=pytest.mark.skipif(AVAILABLE[name] is not None, reason=str(AVAILABLE[name])))
    for name in ("native_int8", "dynamic_int8")
]
WORDS = ["the", "of", "and", "a", "to", "in", "zzz-unseen", "is", "yyy-unseen", "for"]


class WordTokenizer:
    """Whitespace-separated words -> ids; specials 0-2 (listed out of order), unknown words -> 3."""

    all_special_ids = [2, 0, 1]

    def __init__(self, words=WORDS):
        self.vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(words)}}

    def get_vocab(self):
        return dict(self.vocab)

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [self.vocab.get(word, 3) for word in text.split()]}


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAS_SPEC_CACHE", str(tmp_path))
    monkeypatch.setattr(ranking, "_rankings", {})
    return tmp_path / "draft_vocab"


def with_vocab(level: str, draft_vocab: int | None) -> dict:
    spec = SELF_DRAFT_LEVELS[level]
    return {**spec, "options": {**spec.get("options", {}), "draft_vocab": draft_vocab}}


def chain(level: dict, name: str = "lvl", k: int = 4, **sampling) -> dict:
    return {
        "scheduler": {"kind": "chain", "options": {"level": name, "k": k, "adaptive": False}},
        "levels": [{"name": name, **level}],
        "calibration": "off",
        **({"sampling": sampling} if sampling else {}),
    }


# -- the ranking -------------------------------------------------------------------------------------


def test_ranking_puts_special_tokens_first_then_counts_then_unseen_ids_in_order(fresh_cache):
    tokenizer = WordTokenizer()
    counts = Counter(tokenizer.vocab.get(w, 3) for text in ranking_text() for w in text.split())
    order = token_ranking(tokenizer, 20)  # the model's vocabulary may be larger than the tokenizer's
    assert sorted(order) == list(range(20))
    assert order[:3] == [0, 1, 2]
    seen = [i for i in order[3:] if counts[i]]
    assert order[3 : 3 + len(seen)] == seen
    assert [counts[i] for i in seen] == sorted((counts[i] for i in seen), reverse=True)
    assert all(a < b for a, b in itertools.pairwise(seen) if counts[a] == counts[b])  # ties by id
    unseen = order[3 + len(seen) :]
    assert unseen == sorted(unseen) and {tokenizer.vocab["zzz-unseen"], tokenizer.vocab["yyy-unseen"]} <= set(unseen)
    assert order.index(tokenizer.vocab["the"]) < order.index(tokenizer.vocab["for"])
    assert token_ranking(tokenizer, 6) == [i for i in order if i < 6]


def test_the_ranking_is_cached_on_disk_per_vocabulary(fresh_cache, monkeypatch):
    tokenizer = WordTokenizer()
    first = ranked_ids(tokenizer)
    files = list(fresh_cache.iterdir())
    assert [f.suffix for f in files] == [".json"]  # written atomically: no temporary left behind
    data = json.loads(files[0].read_text())
    assert data["ranked"] == first
    assert data["tokens"] == sum(len(text.split()) for text in ranking_text())
    ranking._rankings.clear()
    with monkeypatch.context() as patch:
        patch.setattr(ranking, "count_tokens", lambda tok: pytest.fail("counted again instead of read"))
        assert ranked_ids(tokenizer) == first  # read back from disk
    ranked_ids(WordTokenizer(["another", *WORDS]))  # another vocabulary: another file
    assert len(list(fresh_cache.iterdir())) == 2


def test_a_corrupt_cache_file_is_counted_again(fresh_cache):
    tokenizer = WordTokenizer()
    first = ranked_ids(tokenizer)
    (path,) = fresh_cache.iterdir()
    path.write_text("{not json")
    ranking._rankings.clear()
    assert ranked_ids(tokenizer) == first
    assert json.loads(path.read_text())["ranked"] == first


def test_a_tokenizer_that_cannot_encode_the_text_gets_the_id_order(fresh_cache):
    assert token_ranking(IdTokenizer(), 50) == list(range(50))
    assert token_ranking(None, 7) == list(range(7))

    class NoText(WordTokenizer):
        def __call__(self, text, add_special_tokens=True):
            raise ValueError("cannot encode")

    assert token_ranking(NoText(), 12) == [0, 1, 2, *range(3, 12)]
    assert not fresh_cache.exists() or not any(fresh_cache.iterdir())


# -- SubsetHead ----------------------------------------------------------------------------------------


def head_linear(vocab: int = 50, hidden: int = 16, bias: bool = True, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(hidden, vocab, bias=bias)


@pytest.mark.parametrize("bias", [True, False])
def test_subset_logits_equal_the_full_heads_on_the_subset_and_are_minus_infinity_elsewhere(bias):
    linear = head_linear(bias=bias)
    weight = linear.weight.detach().clone()
    head = SubsetHead(linear.weight, linear.bias, [9, 3, 7, 3])
    assert head.subset().tolist() == [3, 7, 9]
    assert head.add_context([1, 7, 20, 20, 200, -1]) == 2  # 7 is frequent, 200 and -1 are no ids
    assert head.subset().tolist() == [1, 3, 7, 9, 20]
    hidden = torch.randn(2, 3, 16)
    with torch.no_grad():
        full = linear(hidden)
        out = head(hidden)
    assert out.shape == (2, 3, 50) and out.dtype == torch.float32
    subset = head.member
    torch.testing.assert_close(out[..., subset], full[..., subset], atol=1e-5, rtol=1e-5)
    assert torch.isneginf(out[..., ~subset]).all()
    assert torch.equal(linear.weight, weight)  # only read
    assert not any(t.data_ptr() == linear.weight.data_ptr() for t in head.state_dict().values())


def test_context_tokens_enter_the_subset_and_a_new_generation_forgets_them():
    linear = head_linear()
    head = SubsetHead(linear.weight, linear.bias, [0, 1, 2])
    assert head.add_context([30, 31]) == 2 and head.size == 5
    assert head.add_context([31, 1]) == 0  # nothing new: the context rows are not rebuilt
    rows = head.context_weight
    head.add_context([])
    assert head.context_weight is rows
    head.reset_context([40])
    assert head.subset().tolist() == [0, 1, 2, 40]
    out = head(torch.randn(16))
    assert torch.isfinite(out[40]) and torch.isneginf(out[30])
    with pytest.raises(ValueError):
        SubsetHead(linear.weight, None, [])
    with pytest.raises(ValueError):
        SubsetHead(linear.weight, None, [50])


@pytest.mark.parametrize("built_in_inference_mode", [True, False])
def test_a_head_built_in_inference_mode_takes_context_outside_it_and_vice_versa(built_in_inference_mode):
    linear = head_linear()
    with torch.inference_mode(built_in_inference_mode):
        head = SubsetHead(linear.weight, linear.bias, [0, 1])
        head.reset_context([10])
    with torch.inference_mode(not built_in_inference_mode):
        head.reset_context([11])
        head.add_context([12])
        head(torch.randn(1, 16))
    with torch.inference_mode(built_in_inference_mode):
        head.add_context([13])
    assert head.subset().tolist() == [0, 1, 11, 12, 13]


@pytest.mark.parametrize("backend", INT8)
def test_int8_subset_rows_are_the_full_twins_rows(backend):
    linear = head_linear(vocab=200, hidden=64, seed=1)
    twin = qz.build_twins([linear], backend)[linear]
    frequent = torch.randperm(200, generator=torch.Generator().manual_seed(0))[:40]
    head = SubsetHead(linear.weight, linear.bias, frequent, backend)
    assert head.frequent is not None and type(head.frequent) is type(twin)
    head.add_context([5, 6])
    hidden = torch.randn(1, 1, 64)
    with torch.no_grad():
        out, full, plain = head(hidden), twin(hidden), linear(hidden)
    ids = head.frequent_ids
    assert torch.equal(out[..., ids], full[..., ids])  # per-channel rows: quantized row by row
    context = torch.tensor([i for i in (5, 6) if i not in set(ids.tolist())], dtype=torch.long)
    torch.testing.assert_close(out[..., context], plain[..., context], atol=1e-5, rtol=1e-5)  # float32


def test_no_head_when_draft_vocab_is_null_or_covers_the_vocabulary():
    linear = head_linear()
    assert build_subset_head(linear, IdTokenizer(), None) is None
    assert build_subset_head(linear, IdTokenizer(), 50) is None
    head = build_subset_head(linear, IdTokenizer(), 10)
    assert head.frequent_ids.tolist() == list(range(10))


def test_warping_keeps_tokens_outside_the_subset_at_zero():
    from cas_spec.core.sampling import target_probs
    from cas_spec.core.types import SamplingParams

    logits = torch.full((30,), float("-inf"))
    logits[[2, 5, 9, 11]] = torch.tensor([1.0, 3.0, 2.0, 0.5])
    for sampling in (
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.0, top_k=10),
        SamplingParams(temperature=1.3, top_k=3, top_p=0.8),
        SamplingParams(temperature=1.0, top_p=0.99),
    ):
        probs = target_probs(logits, sampling)
        assert torch.isfinite(probs).all() and float(probs.sum()) == pytest.approx(1.0)
        assert probs[torch.isneginf(logits)].abs().sum() == 0


# -- through the strategies ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", ["early_exit", "layer_sparsity", "quanto_activation", "skip_int8"])
def test_drafted_tokens_are_in_the_subset_and_q_is_zero_outside_it(level):
    model = tiny_llama(4, layers=4)
    sampling = {"temperature": 1.0}
    pipe = load_pipeline(chain(with_vocab(level, 6), **sampling), model=model, tokenizer=IdTokenizer())
    strategy = pipe.levels[0].strategy
    seen = []
    original = strategy.draft

    def spy(state, prefix, max_tokens):
        subset = strategy.draft_head().member.clone()
        result = original(state, prefix, max_tokens)
        seen.append((subset, list(state.tokens), result))
        return result

    strategy.draft = spy
    for seed in range(3):
        pipe.generate(repetitive_prompt(seed, 96), max_new_tokens=16, seed=seed)
    drafted = [(s, t, r) for s, t, r in seen if len(r)]
    assert drafted
    for subset, tokens, result in drafted:
        assert subset[list(tokens)].all(), "every context token is in the subset"
        assert subset[list(result.tokens)].all(), "a drafted token outside the subset"
        q = result.draft_probs
        assert q is not None and q.shape == (len(result), 96)
        torch.testing.assert_close(q.sum(-1), torch.ones(len(result)))
        assert q[:, ~subset].abs().sum() == 0
        assert (q[:, subset] > 0).any(-1).all()
    assert 6 < int(subset.sum()) < 96


@pytest.mark.parametrize("level", ["early_exit", "quanto_activation"])
def test_greedy_drafts_and_reviews_stay_in_the_subset(level):
    from cas_spec.core.state import DecodingState
    from cas_spec.core.types import SamplingParams

    model = tiny_llama(6, layers=4)
    pipe = load_pipeline(chain(with_vocab(level, 5)), model=model, tokenizer=IdTokenizer())
    strategy = pipe.levels[0].strategy
    prompt = repetitive_prompt(6, 96)
    pipe.target.prefill(prompt[:-1])
    state = DecodingState(
        tokens=list(prompt),
        prompt_length=len(prompt),
        sampling=SamplingParams(),
        generator=None,
        context_length=len(prompt) - 1,
    )
    strategy.start(state)
    drafted = strategy.draft(state, (), 4)
    member = strategy.draft_head().member
    assert len(drafted) and member[list(drafted.tokens)].all()
    reviewed = strategy.review(state, (), drafted.tokens)
    assert reviewed[:, ~member].abs().sum() == 0
    assert reviewed[:-1].argmax(-1).tolist() == list(drafted.tokens)


def test_the_head_runs_in_the_levels_int8_backend():
    model = tiny_llama(2, layers=4)
    prompt = repetitive_prompt(2, 96)
    for level, rows in (
        ("quanto_activation", "dynamic_int8"),
        ("skip_int8", "dynamic_int8"),
        ("layer_sparsity", None),
        ("early_exit", None),
    ):
        pipe = load_pipeline(chain(with_vocab(level, 8)), model=model, tokenizer=IdTokenizer())
        pipe.generate(prompt, max_new_tokens=4)
        strategy = pipe.levels[0].strategy
        head = strategy.draft_head()
        assert head.backend == rows and (head.frequent is None) == (rows is None)
        assert strategy._variant.lm_head is head


def test_draft_vocab_null_keeps_the_full_head_and_zero_is_rejected():
    model = tiny_llama(2, layers=4)
    pipe = load_pipeline(chain(with_vocab("early_exit", None)), model=model, tokenizer=IdTokenizer())
    pipe.generate(repetitive_prompt(2, 96), max_new_tokens=4)
    assert pipe.levels[0].strategy.draft_head() is None
    assert not isinstance(pipe.levels[0].strategy._variant.lm_head, SubsetHead)
    with pytest.raises(ConfigError, match="draft_vocab"):
        load_pipeline(chain(with_vocab("early_exit", 0)), model=model, tokenizer=IdTokenizer())


@pytest.mark.parametrize("level", sorted(SELF_DRAFT_LEVELS))
@pytest.mark.parametrize("architecture", ["llama", "qwen2", "mistral"])  # gemma3: the contract
def test_greedy_output_equals_plain_decoding_with_a_small_draft_vocab(level, architecture):
    model = tiny_model(architecture, seed=3)
    prompt = repetitive_prompt(3, model.config.vocab_size)
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer()).generate(prompt, max_new_tokens=40)
    pipe = load_pipeline(chain(with_vocab(level, 8)), model=model, tokenizer=IdTokenizer())
    got = pipe.generate(prompt, max_new_tokens=40)
    assert got.token_ids == plain.token_ids
    assert got.stats.levels["lvl"].drafted > 0
    assert isinstance(pipe.levels[0].strategy._variant.lm_head, SubsetHead)


@pytest.mark.parametrize("level", ["early_exit", "layer_sparsity", "quanto_activation"])
def test_greedy_output_equals_plain_decoding_on_stories_with_a_small_draft_vocab(stories, level):
    model, tokenizer = stories
    levels = STORIES_SELF_DRAFT_LEVELS
    spec = levels[level]
    config = chain(
        {**spec, "options": {**spec["options"], "draft_vocab": 64}}
        if "options" in spec
        else {**spec, "options": {"draft_vocab": 64}}
    )
    prompt = "Once upon a time, there was a little girl named Lily. She"
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=tokenizer).generate(
        prompt, max_new_tokens=60, chat=False
    )
    pipe = load_pipeline(config, model=model, tokenizer=tokenizer)
    got = pipe.generate(prompt, max_new_tokens=60, chat=False)
    assert got.token_ids == plain.token_ids
    assert got.stats.mean_acceptance_length > 1.0
    head = pipe.levels[0].strategy.draft_head()
    assert head.frequent_ids.numel() == 64 and head.size > 64  # the context added tokens
    special = set(tokenizer.all_special_ids)
    assert special <= set(head.frequent_ids.tolist())


def test_the_default_draft_vocab_depends_on_the_heads_precision():
    from cas_spec.strategies.dsia.draft_head import FLOAT_DRAFT_VOCAB, INT8_DRAFT_VOCAB
    from cas_spec.strategies.early_exit import EarlyExitOptions
    from cas_spec.strategies.layer_sparsity import LayerSparsityOptions
    from cas_spec.strategies.quanto_activation import QuantoActivationOptions

    assert QuantoActivationOptions().draft_vocab == INT8_DRAFT_VOCAB
    assert LayerSparsityOptions().draft_vocab == EarlyExitOptions().draft_vocab == FLOAT_DRAFT_VOCAB
    assert LayerSparsityOptions(quantize="auto").draft_vocab == INT8_DRAFT_VOCAB
    assert EarlyExitOptions.model_validate({"quantize": "dynamic_int8"}).draft_vocab == INT8_DRAFT_VOCAB
    assert QuantoActivationOptions(draft_vocab=None).draft_vocab is None  # null: the full vocabulary
    assert LayerSparsityOptions(quantize="auto", draft_vocab=100).draft_vocab == 100


def test_a_level_whose_draft_cost_was_measured_generates_exactly():
    """Draft costs are measured under inference mode (the head is built and fed there); generation
    afterwards changes the head's context outside it, and the agreement is measured with the head."""
    from cas_spec.costs import draft_costs as dc

    model = tiny_llama(33, layers=4, vocab=96, max_positions=512)
    pipe = load_pipeline(chain(with_vocab("layer_sparsity", 6)), model=model, tokenizer=IdTokenizer())
    text = dc.calibration_text_ids(IdTokenizer(), 100, vocab_size=96)
    costs = dc.measure_draft_costs(pipe.target, pipe.levels, text, context_lengths=(40,), repeats=1, progress=False)
    assert costs["lvl"].agreement is not None
    prompt = repetitive_prompt(1, 96)
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer()).generate(prompt, max_new_tokens=20)
    assert pipe.generate(prompt, max_new_tokens=20).token_ids == plain.token_ids
