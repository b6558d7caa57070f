"""The in-place KV cache (`core/kvcache.py`): the same logits as transformers' `DynamicCache` on
every architecture and attention implementation, greedy decoding identical to plain decoding,
rollback / commit / views equal to recomputation from scratch (hypothesis), bounded memory,
copy-on-write views, and sliding windows (tiny Gemma 3, window 8) crossed everywhere."""

from __future__ import annotations

import contextlib
from functools import cache

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DynamicCache

from cas_spec import load_pipeline
from cas_spec.adapters import resolve_adapter
from cas_spec.compat import cache_argument
from cas_spec.core import kvlayers
from cas_spec.core.kvcache import BLOCK, CacheHistoryError, KVCache
from cas_spec.core.tree import TreeBuilder, tree_position_ids
from cas_spec.kernels import attention_kernel
from cas_spec.testing.models import ARCHITECTURES
from tests.helpers import (
    AUTOREGRESSIVE,
    CHAIN_PLD,
    IdTokenizer,
    hf_greedy,
    repetitive_prompt,
    tiny_gemma3,
    tiny_llama,
    tiny_phi3,
    tiny_qwen3,
)

ATTENTIONS = ("eager", "sdpa", "cas_sdpa")
VOCAB = 96


@cache
def model_for(architecture: str, attention: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """A 4-layer tiny model (Gemma 3: window 8, Phi-3: 10, so every test crosses them); cas_sdpa
    runs on sdpa's."""
    base = "sdpa" if attention == "cas_sdpa" else attention
    builders = {"gemma3": tiny_gemma3, "qwen3": tiny_qwen3, "phi3": tiny_phi3}
    if architecture in builders:
        return builders[architecture](seed, attn=base)
    return tiny_llama(seed, family=architecture, layers=4, attn=base)


def random_tokens(seed: int, n: int) -> list[int]:
    return torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def forward(model, cache, ids: list[int], start: int, mask=None) -> torch.Tensor:
    """[len(ids), V] logits of `ids` at positions start... through `cache`."""
    with torch.inference_mode():
        return model(
            torch.tensor([ids]),
            **cache_argument(model, cache),
            use_cache=True,
            attention_mask=mask,
            position_ids=torch.arange(start, start + len(ids))[None],
        ).logits[0]


def recording_cache(model) -> DynamicCache:
    """transformers' own cache, holding every token (sliding layers included) until cropped."""
    reference = DynamicCache(config=model.config)
    reference.activate_past_recording()
    return reference


def rebuilt(model, tokens: list[int]) -> DynamicCache:
    """A cache built by one forward over `tokens`: what a cache holding them must hold."""
    reference = recording_cache(model)
    if tokens:
        forward(model, reference, tokens, 0)
    return reference


def build_tree(root: int, branches: list[tuple[int, int]]):
    builder = TreeBuilder(root)
    for parent, token in branches:
        builder.add(parent, token, level="test")
    return builder.build()


def path_to(tree, node: int) -> list[int]:
    """Nodes from the root's first child down to `node` (in path order)."""
    path = []
    while node > 0:
        path.append(node)
        node = tree.parents[node]
    return path[::-1]


def assert_holds(cache: KVCache, model, tokens: list[int]) -> None:
    """Every layer has seen exactly `tokens` and holds their states as one forward computes them;
    sliding layers hold at least what attention reads; memory stays bounded."""
    reference = rebuilt(model, tokens)
    assert cache.lengths() == [len(tokens)] * len(cache.layers)
    for layer, want in zip(cache.layers, reference.layers, strict=True):
        assert layer.capacity <= 2 * layer.held + BLOCK or not layer.owns_buffers
        if not tokens:
            continue
        if layer.is_sliding:
            assert layer.held >= min(len(tokens), layer.sliding_window - 1)
        else:
            assert layer.held == len(tokens)
        n = layer.held
        torch.testing.assert_close(layer.keys, want.keys[..., want.keys.shape[-2] - n :, :], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.values, want.values[..., want.values.shape[-2] - n :, :], atol=1e-5, rtol=1e-5)


def snapshot(cache: KVCache) -> list[tuple]:
    """Lengths and the raw bits of every buffer, spare capacity included."""
    return [
        (
            layer.length,
            layer.first,
            None
            if layer.buffers is None
            else (layer.buffers.keys.clone().view(torch.int32), layer.buffers.values.clone().view(torch.int32)),
        )
        for layer in cache.layers
    ]


def assert_unchanged(cache: KVCache, before: list[tuple]) -> None:
    for layer, (length, first, buffers) in zip(cache.layers, before, strict=True):
        assert (layer.length, layer.first) == (length, first)
        if buffers is not None:
            assert torch.equal(layer.buffers.keys.view(torch.int32), buffers[0])
            assert torch.equal(layer.buffers.values.view(torch.int32), buffers[1])


# -- the same logits as DynamicCache -------------------------------------------------------------
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_logits_equal_a_dynamic_cache_run_through_steps_trees_commits_and_rollbacks(architecture, attention):
    model = model_for(architecture, attention)
    adapter = resolve_adapter(model)
    ids = random_tokens(1, 60)
    with attention_kernel(model, "cas_sdpa" if attention == "cas_sdpa" else None):
        ours, theirs = adapter.new_cache(), recording_cache(model)

        def both(tokens: list[int], start: int, mask=None) -> torch.Tensor:
            got, want = forward(model, ours, tokens, start, mask), forward(model, theirs, tokens, start, mask)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            return got

        both(ids[:12], 0)  # prefill past the window of 8 (Gemma 3)
        for i in range(12, 15):  # one-token steps
            both(ids[i : i + 1], i)
        both(ids[15:19], 15)  # a 4-token chunk, 3 of it rolled back
        ours.rollback(16)
        theirs.crop(-3)
        both(ids[16:17], 16)
        # a token tree over 17 cached tokens, its accepted path not a prefix of the nodes
        root = ids[17]
        tree = build_tree(root, [(0, 5), (1, 6), (0, ids[18]), (3, 7), (3, ids[19]), (5, ids[20]), (6, 8)])
        mask = adapter.tree_attention_mask(tree, 17, model.dtype, "cpu")
        with torch.inference_mode():
            got, want = (
                model(
                    tree.tokens[None],
                    **cache_argument(model, c),
                    use_cache=True,
                    attention_mask=mask,
                    position_ids=tree_position_ids(tree, 17, "cpu"),
                ).logits[0]
                for c in (ours, theirs)
            )
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        ours.keep(17, torch.tensor([0, 3, 5, 6]))  # commit root, ids[18], ids[19], ids[20]
        assert_holds(ours, model, ids[:21])
        theirs = rebuilt(model, ids[:21])  # transformers has no tree commit: recompute
        for i in range(21, 30):
            both(ids[i : i + 1], i)
        ours.rollback(25)  # a verification rolled back to its committed length
        theirs.crop(-5)
        both(ids[25:27], 25)
        assert_holds(ours, model, ids[:27])


# -- greedy identity -----------------------------------------------------------------------------
DSIA_TREE = {
    "scheduler": {"kind": "dytc"},
    "calibration": "off",
    "levels": [
        {"name": "skip", "kind": "layer_sparsity", "options": {"skip": ["1.attention", "2.mlp"], "stop_below": 0.0}},
        {"name": "exit", "kind": "early_exit", "options": {"exit_layer": 2}},
        {"name": "pld", "kind": "prompt_lookup", "options": {"max_ngram": 3, "min_ngram": 1}},
    ],
}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_engine_greedy_output_equals_plain_decoding_on_every_architecture(architecture):
    model = model_for(architecture, "sdpa", seed=2)
    prompt = repetitive_prompt(2, VOCAB, length=24)  # 35 tokens, past Gemma 3's window
    expected = hf_greedy(model, prompt, 48)  # transformers' generate, on its own DynamicCache
    for config in (AUTOREGRESSIVE, CHAIN_PLD, DSIA_TREE):
        got = load_pipeline(config, model=model, tokenizer=IdTokenizer()).generate(prompt, max_new_tokens=48)
        assert got.token_ids == expected, config["scheduler"]
    levels = got.stats.levels.values()  # the tree pipeline committed drafts and rolled rejected ones back
    assert sum(v.accepted for v in levels) > 0 and sum(v.drafted - v.accepted for v in levels) > 0


# -- random operations against recomputation -----------------------------------------------------
operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 6)),
        st.tuples(st.just("rollback"), st.integers(0, 9)),
        st.tuples(st.just("scribble"), st.integers(1, 5), st.lists(st.booleans(), min_size=4, max_size=4)),
        st.tuples(st.just("tree"), st.lists(st.integers(0, 20), min_size=1, max_size=9), st.integers(0, 20)),
        st.tuples(st.just("view"), st.integers(0, 14), st.integers(1, 4)),
    ),
    min_size=1,
    max_size=10,
)


class Run:
    """One cache under random operations, and what it must hold: `tokens`. `low` is the shortest
    length a sliding layer is guaranteed to stand at again (rollback, view) by the documented
    history: SLIDING_HISTORY tokens behind a rollback or commit, 2 × that behind updates."""

    def __init__(self, model, history: int, seed: int):
        self.model, self.history = model, history
        self.cache = resolve_adapter(model).new_cache()
        for layer in self.cache.layers:
            if layer.is_sliding:
                layer.history = history
        self.fresh = iter(random_tokens(seed, 400))
        self.tokens: list[int] = []
        self.low = 0
        self.was_cut = False  # whether the last operation was a rollback or commit
        self.append(10)

    def new(self, n: int) -> list[int]:
        return [next(self.fresh) for _ in range(n)]

    def updated(self) -> None:  # an update at the current length, then more states
        self.low = max(self.low, len(self.tokens) - 2 * self.history)

    def cut(self) -> None:  # a rollback or commit to the current length
        self.low = max(self.low, len(self.tokens) - self.history)
        self.was_cut = True

    def append(self, n: int) -> None:
        ids = self.new(n)
        self.updated()
        forward(self.model, self.cache, ids, len(self.tokens))
        self.tokens += ids

    def rollback(self, back: int) -> None:
        length = max(0, len(self.tokens) - back)
        before = snapshot(self.cache)
        try:
            self.cache.rollback(length)
        except CacheHistoryError:
            assert length < self.low
            assert_unchanged(self.cache, before)
            return
        self.tokens = self.tokens[:length]
        self.cut()

    def scribble(self, n: int, layers: list[bool]) -> None:
        """A partial-depth draft: states written into some layers only, then rolled back."""
        length = len(self.tokens)
        self.updated()
        g = torch.Generator().manual_seed(n)
        for index, layer in enumerate(self.cache.layers):
            if layers[index % len(layers)]:
                shape = (*layer.keys.shape[:2], n, layer.keys.shape[-1])
                with torch.inference_mode():
                    self.cache.update(torch.randn(shape, generator=g), torch.randn(shape, generator=g), index)
        self.cache.rollback(length)
        self.cut()

    def tree(self, parents: list[int], pick: int) -> None:
        """Verify a random tree rooted at a new token, commit the path to one of its nodes."""
        length = len(self.tokens)
        builder = TreeBuilder(self.new(1)[0])
        for choice, token in zip(parents, self.new(len(parents)), strict=True):
            builder.add(choice % builder.size, token, level="test")
        tree = builder.build()
        mask = resolve_adapter(self.model).tree_attention_mask(tree, length, self.model.dtype, "cpu")
        self.updated()
        with torch.inference_mode():
            self.model(
                tree.tokens[None],
                **cache_argument(self.model, self.cache),
                use_cache=True,
                attention_mask=mask,
                position_ids=tree_position_ids(tree, length, "cpu"),
            )
        keep = [0, *path_to(tree, pick % tree.size)]
        self.cache.keep(length, torch.tensor(keep))
        self.tokens += [int(tree.tokens[i]) for i in keep]
        self.cut()

    def view(self, back: int, n: int) -> None:
        """Score n new tokens through a prefix view; the original must not change at all."""
        length = max(0, len(self.tokens) - back)
        before = snapshot(self.cache)
        try:
            view = self.cache.prefix_view(length)
        except CacheHistoryError:
            assert length < self.low
            assert_unchanged(self.cache, before)
            return
        assert view.lengths() == [length] * len(self.cache.layers)
        ids = self.new(n)
        got = forward(self.model, view, ids, length)
        reference = rebuilt(self.model, self.tokens[:length])
        torch.testing.assert_close(got, forward(self.model, reference, ids, length), atol=1e-5, rtol=1e-5)
        assert_unchanged(self.cache, before)


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
@settings(max_examples=25)
@given(ops=operations, history=st.sampled_from([2, 5, 128]), seed=st.integers(0, 1000))
def test_random_operations_hold_what_one_forward_over_the_kept_tokens_computes(architecture, ops, history, seed):
    run = Run(model_for(architecture), history, seed)
    assert_holds(run.cache, run.model, run.tokens)
    for op, *args in ops:
        run.was_cut = False
        getattr(run, op)(*args)
        assert_holds(run.cache, run.model, run.tokens)
        if run.was_cut:  # after a rollback or commit a sliding layer holds window - 1 + history
            for layer in run.cache.layers:
                if layer.is_sliding:
                    assert layer.held <= layer.sliding_window - 1 + history


def test_rollback_behind_the_history_raises_and_changes_nothing():
    run = Run(model_for("gemma3"), history=2, seed=0)
    run.append(30)
    run.cache.rollback(40)  # storage bounded to window - 1 + 2 tokens
    before = snapshot(run.cache)
    with pytest.raises(CacheHistoryError):
        run.cache.rollback(35)
    assert_unchanged(run.cache, before)
    with pytest.raises(CacheHistoryError):
        run.cache.prefix_view(30)
    run.cache.rollback(38)  # within the history
    assert_holds(run.cache, run.model, run.tokens[:38])


# -- memory and copies ---------------------------------------------------------------------------
def test_capacity_grows_geometrically_and_shrinks_after_a_long_rollback():
    model = model_for("llama")
    cache = resolve_adapter(model).new_cache()
    layer = cache.layers[0]
    relocations, buffers = 0, None
    for i, token in enumerate(random_tokens(3, 400)):
        forward(model, cache, [token], i)
        relocations += layer.buffers is not buffers
        buffers = layer.buffers
        assert layer.capacity <= 2 * layer.length + BLOCK
    assert relocations <= 8  # 64, 128, 192, 320, 512: amortised, not one per token
    cache.rollback(40)
    assert all(layer.capacity <= 2 * 40 + BLOCK for layer in cache.layers)
    assert_holds(cache, model, random_tokens(3, 400)[:40])


def test_update_returns_views_of_the_buffer_and_sliding_layers_their_window():
    cache = KVCache(model_for("gemma3").config)  # layers 0, 1, 3 slide (window 8), layer 2 is full
    with torch.inference_mode():
        for n in (12, 1, 3, 9):
            past = cache.get_seq_length(0)
            states = torch.randn(1, 1, n, 16)
            for index in (0, 2):
                keys, values = cache.update(states, states, index)
                layer = cache.layers[index]
                assert keys.untyped_storage().data_ptr() == layer.buffers.keys.untyped_storage().data_ptr()
                assert torch.equal(keys[..., -n:, :], states) and torch.equal(values[..., -n:, :], states)
                assert keys.shape[-2] == (min(past, 7) + n if layer.is_sliding else past + n)
            length = past + n
            assert cache.get_mask_sizes(2, 0) == (min(length, 7) + 2, max(length - 7, 0))
            assert cache.get_mask_sizes(2, 2) == (length + 2, 0)


def test_crop_has_transformers_semantics():
    model = model_for("gemma3")
    cache = resolve_adapter(model).new_cache()
    ids = random_tokens(4, 30)
    forward(model, cache, ids, 0)
    cache.crop(-4)
    assert cache.get_seq_length() == 26 and cache.lengths() == [26] * 4
    with pytest.raises(ValueError):
        cache.crop(3)
    cache.crop(0)  # bounds sliding storage, keeps the length
    assert_holds(cache, model, ids[:26])


def test_a_view_never_writes_into_the_shared_buffers_and_survives_the_original_moving_on():
    model = model_for("llama")
    ids = random_tokens(5, 40)
    cache = resolve_adapter(model).new_cache()
    forward(model, cache, ids[:30], 0)
    before = snapshot(cache)
    view = cache.prefix_view(20)
    got = forward(model, view, ids[20:26], 20)  # the view's first write copies what it reads
    assert_unchanged(cache, before)
    cache.rollback(10)  # the original goes below the view's length and writes there
    forward(model, cache, ids[30:38], 10)
    assert_holds(cache, model, ids[:10] + ids[30:38])
    forward(model, view, ids[26:27], 26)  # the view still reads its own tokens
    torch.testing.assert_close(got, forward(model, rebuilt(model, ids[:20]), ids[20:26], 20), atol=1e-5, rtol=1e-5)
    assert_holds(view, model, ids[:27])


def test_a_cache_built_under_inference_mode_continues_under_no_grad_and_commits_outside_both():
    model = model_for("gemma3")
    ids = random_tokens(6, 30)
    cache = resolve_adapter(model).new_cache()
    forward(model, cache, ids[:20], 0)  # inference mode: inference-tensor buffers
    tree = build_tree(ids[20], [(0, 5), (0, ids[21]), (2, ids[22])])
    with torch.no_grad():
        model(
            tree.tokens[None],
            **cache_argument(model, cache),
            use_cache=True,
            position_ids=tree_position_ids(tree, 20, "cpu"),
            attention_mask=resolve_adapter(model).tree_attention_mask(tree, 20, model.dtype, "cpu"),
        )
    cache.keep(20, torch.tensor([0, 2, 3]))  # outside any mode, as `Target.commit` runs
    assert_holds(cache, model, ids[:23])


def test_time_forwards_runs_on_the_cache_it_is_given():
    from cas_spec.kernels import time_forwards

    model = model_for("gemma3")
    made: list[KVCache] = []

    def new_cache() -> KVCache:
        made.append(resolve_adapter(model).new_cache())
        return made[-1]

    times = time_forwards(
        model, {"a": contextlib.nullcontext}, ns=(1, 3), cache_tokens=12, repeats=2, progress=False, new_cache=new_cache
    )
    assert len(times[3]["a"]) == 2 and len(made) == 1 and made[0].lengths() == [12] * 4


def test_layers_follow_the_config_and_history_is_read_when_built(monkeypatch):
    monkeypatch.setattr(kvlayers, "SLIDING_HISTORY", 7)
    cache = KVCache(model_for("gemma3").config)
    assert [layer.is_sliding for layer in cache.layers] == [True, True, False, True]
    assert {layer.history for layer in cache.layers if layer.is_sliding} == {7}
    assert not any(layer.is_sliding for layer in KVCache(model_for("qwen2").config).layers)
    assert all(layer.is_sliding for layer in KVCache(model_for("mistral").config).layers)  # window 4096
