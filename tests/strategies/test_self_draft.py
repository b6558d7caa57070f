"""The self-speculative (DSIA) strategies: layer_sparsity, early_exit, quanto_activation.

Greedy identity with plain decoding on every architecture the adapters claim and on the stories
fixture; the q handed to the verifier is the q sampled from; seeded sampling matches the target
distribution (slow); and a strategy that raises midway leaves the model and cache untouched.
"""

from __future__ import annotations

import pytest
import torch

from cas_spec import load_pipeline
from cas_spec.compat import cache_argument
from cas_spec.testing.stats import chi2_critical, chi2_goodness
from tests.helpers import (
    AUTOREGRESSIVE,
    PROMPT,
    SELF_DRAFT_LEVELS,
    STORIES_SELF_DRAFT_LEVELS,
    IdTokenizer,
    RoundRobinTree,
    peaked_tiny_model,
    repetitive_prompt,
    self_draft_chain,
    tiny_llama,
    two_token_distribution,
)

FAMILIES = [
    dict(family="llama", layers=4),
    dict(family="qwen2", layers=4, kv_heads=1),
    dict(family="mistral", layers=4),
    dict(family="llama", layers=4, attn="eager"),
]


@pytest.mark.parametrize("level", sorted(SELF_DRAFT_LEVELS))
@pytest.mark.parametrize("shape", FAMILIES, ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_greedy_output_equals_plain_decoding_on_tiny_models(level, shape):
    model = tiny_llama(3, **shape)
    prompt = repetitive_prompt(3, model.config.vocab_size)
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer()).generate(prompt, max_new_tokens=40)
    speculative = load_pipeline(self_draft_chain(level), model=model, tokenizer=IdTokenizer())
    got = speculative.generate(prompt, max_new_tokens=40)
    assert got.token_ids == plain.token_ids
    assert got.stats.levels[level].drafted > 0


@pytest.mark.parametrize("level", ["early_exit", "layer_sparsity", "quanto_activation"])
def test_greedy_output_equals_plain_decoding_on_stories(stories, level):
    model, tokenizer = stories
    levels = STORIES_SELF_DRAFT_LEVELS
    config = {
        "scheduler": {"kind": "chain", "options": {"k": 4, "adaptive": False}},
        "calibration": "off",
        "levels": [{"name": level, **levels[level]}],
    }
    prompt = "Once upon a time, there was a little girl named Lily. She"
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=tokenizer).generate(
        prompt, max_new_tokens=60, chat=False
    )
    got = load_pipeline(config, model=model, tokenizer=tokenizer).generate(prompt, max_new_tokens=60, chat=False)
    assert got.token_ids == plain.token_ids
    assert got.stats.mean_acceptance_length > 1.0


def test_three_dsia_levels_in_one_pipeline_draft_a_shared_tree_losslessly():
    from cas_spec.core.config import load_config
    from cas_spec.core.hookspecs import hookimpl
    from cas_spec.core.plugins import build_plugins
    from cas_spec.pipeline import build_pipeline

    class Plugin:
        @hookimpl
        def register_schedulers(self, registry):
            registry.add(RoundRobinTree)

    plugins = build_plugins(entry_points=(), extra=[Plugin()])
    config = load_config(
        {
            "scheduler": {"kind": "round_robin_tree"},
            "calibration": "off",
            "levels": [
                {"name": n, **SELF_DRAFT_LEVELS[n]} for n in ("quanto_activation", "layer_sparsity", "early_exit")
            ],
        },
        plugins=plugins,
    )
    for seed in (0, 1):
        model = tiny_llama(seed, layers=4)
        prompt = repetitive_prompt(seed, model.config.vocab_size)
        plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer()).generate(prompt, max_new_tokens=40)
        got = build_pipeline(config, model, IdTokenizer(), plugins=plugins).generate(prompt, max_new_tokens=40)
        assert got.token_ids == plain.token_ids
        assert all(stats.drafted > 0 for stats in got.stats.levels.values())


@pytest.mark.parametrize("level", ["early_exit", "layer_sparsity", "quanto_activation"])
def test_sampling_draft_probs_are_the_distribution_sampled_from(level):
    """Each returned row of q is the warped softmax of the variant's logits at that position, and
    the token is a draw from it (rebuilt here from the variant directly)."""
    from cas_spec.core.sampling import target_probs
    from cas_spec.core.types import SamplingParams

    model = tiny_llama(5, layers=4)
    sampling = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=1)
    pipe = load_pipeline(
        self_draft_chain(level, temperature=0.8, top_k=20, top_p=0.9), model=model, tokenizer=IdTokenizer()
    )
    strategy = pipe.levels[0].strategy
    seen = []
    original = strategy.draft

    def spy(state, prefix, max_tokens):
        result = original(state, prefix, max_tokens)
        seen.append((list(state.tokens), result))
        return result

    strategy.draft = spy
    pipe.generate(repetitive_prompt(5, 96), max_new_tokens=12, temperature=0.8, top_k=20, top_p=0.9, seed=1)
    assert seen and all(r.draft_probs is not None for _, r in seen if len(r))
    tokens, result = next((t, r) for t, r in seen if len(r) >= 2)
    # Teacher-forced: the committed tokens through the target, then the root and the drafted
    # tokens one at a time (dynamic int8 scales depend on the batch) through the variant, reading
    # the target's KV as the drafter does.
    cache = pipe.adapter.new_cache()
    rows = []
    with torch.no_grad():
        model(input_ids=torch.tensor([tokens[:-1]]), **cache_argument(model, cache), use_cache=True)
        with pipe.adapter.swapped(strategy._variant.layers, strategy._variant.lm_head):
            for i, token in enumerate([tokens[-1], *result.tokens[:-1]]):
                logits = model(
                    input_ids=torch.tensor([[token]]),
                    **cache_argument(model, cache),
                    use_cache=True,
                    position_ids=torch.tensor([[len(tokens) - 1 + i]]),
                ).logits[0, -1]
                rows.append(target_probs(logits.float(), sampling))
    rows = torch.stack(rows)
    torch.testing.assert_close(result.draft_probs, rows, atol=1e-5, rtol=1e-4)
    for i, token in enumerate(result.tokens):
        assert rows[i, token] > 0
        assert result.confidence[i] == pytest.approx(float(rows[i, token]), abs=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("level", ["early_exit", "layer_sparsity", "quanto_activation"])
def test_seeded_sampling_matches_the_target_distribution(level):
    model = peaked_tiny_model()
    prompt = PROMPT
    exact = two_token_distribution(model, prompt)
    pipe = load_pipeline(self_draft_chain(level, k=2, temperature=1.0), model=model, tokenizer=IdTokenizer())
    runs, counts, accepted = 3000, {}, 0
    for seed in range(runs):
        result = pipe.generate(list(prompt), max_new_tokens=2, temperature=1.0, seed=seed)
        key = tuple(result.token_ids)
        counts[key] = counts.get(key, 0) + 1
        accepted += result.stats.levels[level].accepted
    assert accepted > 0.1 * runs, "drafts must be accepted often enough for the test to mean anything"
    stat, df = chi2_goodness(counts, exact, runs)
    assert stat < chi2_critical(df, 1e-3), (stat, df)


@pytest.mark.parametrize("level", ["early_exit", "layer_sparsity"])
def test_review_gives_the_levels_own_distribution_at_each_drafted_token(level):
    """A level reviewing a draft (CS-Drafting's vertical cascade) sees, in one pass, the
    distributions it would draft from one token at a time; the cache is left as it was."""
    from cas_spec.core.state import DecodingState
    from cas_spec.core.types import SamplingParams

    model = tiny_llama(6, layers=4)
    sampling = SamplingParams(temperature=0.9, top_k=30)
    pipe = load_pipeline(self_draft_chain(level), model=model, tokenizer=IdTokenizer())
    strategy = pipe.levels[0].strategy
    prompt = repetitive_prompt(6, 96)
    pipe.target.prefill(prompt[:-1])
    state = DecodingState(
        tokens=list(prompt),
        prompt_length=len(prompt),
        sampling=sampling,
        generator=torch.Generator().manual_seed(0),
        context_length=len(prompt) - 1,
    )
    lengths = [layer.get_seq_length() for layer in pipe.target.cache.layers]
    drafted = strategy.draft(state, (7,), 3)
    reviewed = strategy.review(state, (7,), drafted.tokens)
    assert reviewed.shape == (4, model.config.vocab_size)
    torch.testing.assert_close(reviewed[:3], drafted.draft_probs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reviewed.sum(-1), torch.ones(4))
    assert [layer.get_seq_length() for layer in pipe.target.cache.layers] == lengths
    assert strategy.can_review
    from cas_spec.strategies.prompt_lookup import PromptLookup

    assert not PromptLookup.can_review
    with pytest.raises(NotImplementedError, match="cannot review"):
        PromptLookup().review(state, (), (1, 2))
