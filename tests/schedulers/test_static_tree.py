"""`static_tree` (SWIFT's confidence-based tree): its shape from fake levels (no model), the exact
algebra of the trees it builds under the sampling verifier, greedy identity with plain decoding on
tiny models and the stories fixture, and a seeded distribution test (slow)."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from cas_spec import load_pipeline
from cas_spec.core.config import ConfigError, load_config
from cas_spec.core.interfaces import DraftStrategy
from cas_spec.core.levels import Level
from cas_spec.core.state import DecodingState
from cas_spec.core.types import DraftResult, SamplingParams
from cas_spec.core.verify import emission_distribution
from cas_spec.schedulers.static_tree import StaticTreeOptions, StaticTreeScheduler, static_tree, width_for
from cas_spec.testing.stats import chi2_critical, chi2_goodness
from tests.helpers import (
    AUTOREGRESSIVE,
    PROMPT,
    SELF_DRAFT_LEVELS,
    STORIES_SELF_DRAFT_LEVELS,
    IdTokenizer,
    peaked_tiny_model,
    record_trees,
    repetitive_prompt,
    tiny_llama,
    two_token_distribution,
)

# -- fake levels ----------------------------------------------------------------------------------


def runners_up(chosen: int, probs: list[float], start: int = 50) -> tuple[tuple[int, float], ...]:
    return tuple((start + 10 * chosen + i, p) for i, p in enumerate(probs))


class Scripted(DraftStrategy):
    """Drafts tokens 1, 2, 3, … with the given confidences; 8 runners-up per token."""

    name = "scripted"

    def __init__(self, confidence, alternatives=True):
        super().__init__()
        self.confidence, self.alternatives, self.asked = list(confidence), alternatives, []

    def draft(self, state, prefix, max_tokens):
        self.asked.append(max_tokens)
        conf = self.confidence[:max_tokens]
        alts = tuple(runners_up(i, [min(c, 1 - c) * 0.9**j for j in range(8)]) for i, c in enumerate(conf))
        return DraftResult(
            tokens=tuple(range(1, len(conf) + 1)),
            confidence=tuple(conf),
            alternatives=alts if self.alternatives else (),
        )


def make(confidence, *, max_depth=16, temperature=0.0, alternatives=True, **options):
    strategy = Scripted(confidence, alternatives)
    scheduler = StaticTreeScheduler(StaticTreeOptions(**options), [Level("s", strategy)])
    state = DecodingState(
        tokens=[7] * 20,
        prompt_length=20,
        sampling=SamplingParams(temperature=temperature),
        generator=None,
        context_length=19,
        max_depth=max_depth,
    )
    scheduler.start(state)
    return scheduler, strategy, state


def chain_length(tree) -> int:
    """Nodes 1..L form the drafted chain (added first); siblings come after."""
    length = 0
    while length + 1 < tree.size and tree.parents[length + 1] == length:
        length += 1
    return length


def siblings_per_position(tree) -> list[int]:
    length = chain_length(tree)
    return [len(tree.children[node]) - (1 if node < length else 0) for node in range(length)]


# -- shape ----------------------------------------------------------------------------------------


def test_width_for_follows_swifts_thresholds():
    thresholds, widths = (0.5, 0.8, 0.95), (10, 8, 5, 3)
    got = [width_for(t, thresholds, widths) for t in (0.99, 0.951, 0.95, 0.9, 0.8, 0.6, 0.5, 0.2)]
    assert got == [3, 3, 5, 5, 8, 8, 10, 10]


def test_greedy_widths_follow_the_thresholds():
    scheduler, _, state = make([0.97, 0.85, 0.6, 0.3, 0.96], k=5, max_nodes=100)
    tree = scheduler.build_tree(state)
    assert chain_length(tree) == 5
    # width - 1 siblings per position; width 10 is capped by the 8 runners-up a drafter reports
    assert siblings_per_position(tree) == [2, 4, 7, 8, 2]


def test_sampling_widths_follow_the_thresholds():
    scheduler, _, state = make([0.97, 0.85, 0.6, 0.3, 0.96], k=5, max_nodes=100, temperature=1.0)
    assert siblings_per_position(scheduler.build_tree(state)) == [0, 2, 4, 8, 0]
    scheduler, _, state = make([0.9, 0.9], k=2, temperature=1.0, sampling_widths=(4, 4, 2, 3))
    assert siblings_per_position(scheduler.build_tree(state)) == [1, 1]


def test_the_width_uses_the_top_probability_even_when_a_runner_up_was_sampled():
    # sampled token with q = 0.05, the top token (a runner-up) with q = 0.9: a confident position
    draft = DraftResult(tokens=(1,), confidence=(0.05,), alternatives=(((9, 0.9), (8, 0.03), (7, 0.02)),))
    tree = static_tree(0, draft, "s", (0.5, 0.8, 0.95), (10, 5, 3, 1), 32)
    assert tree.children[0] == (1, 2, 3) and tree.tokens.tolist()[2:] == [9, 8]  # width 3, not 10
    tree = static_tree(0, draft, "s", (0.5, 0.8, 0.95), (10, 8, 2, 1), 32)
    assert tree.children[0] == (1, 2)


def test_branches_grow_only_along_the_top1_chain():
    scheduler, _, state = make([0.3, 0.4, 0.2, 0.6], k=4, max_nodes=64)
    tree = scheduler.build_tree(state)
    length = chain_length(tree)
    assert length == 4 and tree.size == 1 + 4 + 8 + 8 + 8 + 7
    for node in range(length + 1, tree.size):
        assert tree.children[node] == ()  # siblings are leaves
        assert tree.parents[node] < length  # ... below the root or a chain node
        assert int(tree.depths[node]) == tree.parents[node] + 1
    for node in range(tree.size):
        assert tree.children[node][:1] == ((node + 1,) if node < length else ())  # chain child first
    assert all(p is None for p in tree.draft_probs)  # greedy: point masses


def test_max_nodes_keeps_the_chain_then_the_likeliest_siblings():
    scheduler, _, state = make([0.4, 0.3, 0.2], k=3, max_nodes=8)
    tree = scheduler.build_tree(state)
    assert tree.size == 8 and chain_length(tree) == 3
    # reach · q: position 0 siblings 0.4·0.9^j, position 1: 0.4·0.3·0.9^j, position 2 below that
    assert siblings_per_position(tree) == [4, 0, 0]
    scheduler, strategy, state = make([0.9] * 10, k=10, max_nodes=4)
    tree = scheduler.build_tree(state)
    assert tree.is_chain and tree.size == 4 and strategy.asked == [3]  # not drafted past the cap
    scheduler, strategy, state = make([0.9] * 10, k=10, max_nodes=1)
    assert scheduler.build_tree(state).size == 1 and strategy.asked == []


def test_max_depth_is_respected():
    scheduler, strategy, state = make([0.3] * 8, k=8, max_depth=2, max_nodes=64)
    tree = scheduler.build_tree(state)
    assert int(tree.depths.max()) == 2 and strategy.asked == [2]
    assert siblings_per_position(tree) == [8, 8]
    state.max_depth = 0
    assert scheduler.build_tree(state).size == 1


def test_a_level_without_alternatives_gives_a_chain():
    scheduler, _, state = make([0.3] * 5, k=5, alternatives=False)
    tree = scheduler.build_tree(state)
    assert tree.is_chain and tree.size == 6
    scheduler, _, state = make([0.3] * 5, k=5, widths=(1, 1, 1, 1))
    assert scheduler.build_tree(state).is_chain


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(thresholds=(0.5, 0.8)), r"widths needs one entry more than thresholds \(3.*got 4"),
        (dict(widths=(10, 5)), r"widths needs one entry more than thresholds \(4.*got 2"),
        (dict(thresholds=(0.8, 0.5, 0.95)), r"thresholds must be strictly ascending, got \[0.8, 0.5, 0.95\]"),
        (dict(thresholds=(0.5, 1.5, 2.0)), r"thresholds must lie in \[0, 1\]"),
        (dict(sampling_widths=(10, 5, 0, 1)), r"sampling_widths must be at least 1"),
    ],
)
def test_options_are_validated_with_clear_messages(options, message):
    with pytest.raises(ValidationError, match=message):
        StaticTreeOptions(**options)


def test_options_errors_name_the_option_in_a_pipeline_and_the_level_must_exist():
    base = {"levels": [{"name": "ee", "kind": "early_exit"}], "calibration": "off"}
    with pytest.raises(ConfigError, match="scheduler.options.*strictly ascending"):
        load_config({**base, "scheduler": {"kind": "static_tree", "options": {"thresholds": [0.9, 0.1, 0.95]}}})
    with pytest.raises(ConfigError, match="no level named 'nope'"):
        load_config({**base, "scheduler": {"kind": "static_tree", "options": {"level": "nope"}}})
    options = {"thresholds": [0.6], "widths": [4, 2], "sampling_widths": [3, 1]}
    config = load_config({**base, "scheduler": {"kind": "static_tree", "options": options}})
    assert config.scheduler.kind == "static_tree"


# -- exactness of the trees it builds under the sampling verifier ------------------------------------


def top_runners_up(q: torch.Tensor, chosen: int, count: int = 8):
    top = torch.topk(q, count + 1)
    return tuple((t, p) for t, p in zip(top.indices.tolist(), top.values.tolist()) if t != chosen and p > 0)[:count]


@pytest.mark.parametrize("seed", range(6))
def test_sampled_chain_token_with_point_mass_runners_up_emits_exactly_p(seed):
    """The root of a static tree when sampling: the chain token x ~ q (carrying q), then the
    runners-up of q other than x (point masses, chosen after x was drawn). Averaged over x, the
    token the sampling verifier emits is distributed exactly as p, for every width."""
    g = torch.Generator().manual_seed(seed)
    vocab = 12
    p = torch.softmax(torch.randn(vocab, generator=g, dtype=torch.float64) * 2, -1)
    q = torch.softmax(torch.randn(vocab, generator=g, dtype=torch.float64) * 2, -1).float()
    for widths in [(10, 5, 3, 1), (2, 2, 2, 2), (4, 3, 2, 1)]:
        emitted = torch.zeros(vocab, dtype=torch.float64)
        for x in range(vocab):
            draft = DraftResult(
                tokens=(x,), confidence=(float(q[x]),), draft_probs=q[None], alternatives=(top_runners_up(q, x),)
            )
            tree = static_tree(0, draft, "s", (0.5, 0.8, 0.95), widths, 32)
            candidates = [(int(tree.tokens[c]), tree.draft_probs[c]) for c in tree.children[0]]
            assert candidates[0][0] == x and candidates[0][1] is not None  # the sampled token first, with q
            assert torch.equal(candidates[0][1], q)
            assert all(d is None for _, d in candidates[1:])
            emitted += float(q[x]) * emission_distribution(p, candidates)
        torch.testing.assert_close(emitted, p, atol=1e-6, rtol=0)  # q is float32


def test_point_masses_before_the_sampled_token_would_not_be_exact():
    """Why the chain token goes first: tried after its own runners-up, the emission is biased."""
    g = torch.Generator().manual_seed(0)
    vocab = 6
    p = torch.softmax(torch.randn(vocab, generator=g, dtype=torch.float64) * 2, -1)
    q = torch.softmax(torch.randn(vocab, generator=g, dtype=torch.float64) * 2, -1).float()
    emitted = torch.zeros(vocab, dtype=torch.float64)
    for x in range(vocab):
        candidates = [(t, None) for t, _ in top_runners_up(q, x, 2)] + [(x, q)]
        emitted += float(q[x]) * emission_distribution(p, candidates)
    assert (emitted - p).abs().max() > 1e-3


# -- greedy identity on models --------------------------------------------------------------------

STATIC_LEVELS = ["early_exit", "layer_sparsity", "quanto_activation"]


def static(name: str, **options) -> dict:
    return {
        "scheduler": {"kind": "static_tree", "options": {"level": name, "k": 4, **options}},
        "levels": [{"name": name, **SELF_DRAFT_LEVELS[name]}],
        "calibration": "off",
    }


def assert_real_trees(seen) -> None:
    """Trees with more than one branch were verified (more nodes than depth + 1), and the target
    accepted a sibling (a node off the drafted chain) at least once."""
    assert any(tree.size > int(tree.depths.max()) + 1 for tree, _ in seen)
    assert any(node > chain_length(tree) for tree, verdict in seen for node in verdict.accepted_nodes)


@pytest.mark.parametrize("level", STATIC_LEVELS)
@pytest.mark.parametrize(
    "shape", [dict(family="llama", layers=4), dict(family="qwen2", layers=4, kv_heads=1)], ids=["llama", "qwen2"]
)
def test_greedy_output_equals_plain_decoding_on_tiny_models(level, shape):
    seen_all = []
    for seed in (0, 1, 2):
        model = tiny_llama(seed, **shape)
        prompt = repetitive_prompt(seed, model.config.vocab_size)
        plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer()).generate(prompt, max_new_tokens=40)
        pipe = load_pipeline(static(level), model=model, tokenizer=IdTokenizer())
        seen = record_trees(pipe)
        got = pipe.generate(prompt, max_new_tokens=40)
        seen_all += seen
        assert got.token_ids == plain.token_ids, seed
        assert got.stats.levels[level].drafted > 0
    assert_real_trees(seen_all)


@pytest.mark.parametrize("level", STATIC_LEVELS)
def test_greedy_output_equals_plain_decoding_on_stories(stories, level):
    model, tokenizer = stories
    levels = STORIES_SELF_DRAFT_LEVELS
    config = {
        "scheduler": {"kind": "static_tree", "options": {"k": 4, "max_nodes": 24}},
        "calibration": "off",
        "levels": [{"name": level, **levels[level]}],
    }
    prompt = "Once upon a time, there was a little girl named Lily. She"
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=tokenizer).generate(
        prompt, max_new_tokens=60, chat=False
    )
    pipe = load_pipeline(config, model=model, tokenizer=tokenizer)
    seen = record_trees(pipe)
    got = pipe.generate(prompt, max_new_tokens=60, chat=False)
    assert got.token_ids == plain.token_ids
    assert got.stats.mean_acceptance_length > 1.0
    assert any(tree.size > int(tree.depths.max()) + 1 for tree, _ in seen)
    assert all(tree.size <= 24 for tree, _ in seen)


# -- sampling -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_seeded_sampling_matches_the_target_distribution():
    level = "early_exit"
    # Seed and scale chosen (by the exact algebra) so that the drafted token is rejected about a
    # third of the time and a point-mass sibling then accepted most of the time: both paths count.
    model = peaked_tiny_model(seed=25, scale=20.0)
    prompt = PROMPT
    exact = two_token_distribution(model, prompt)
    config = static(level, k=2, sampling_widths=(4, 4, 4, 4))
    config["sampling"] = {"temperature": 1.0}
    pipe = load_pipeline(config, model=model, tokenizer=IdTokenizer())
    seen = record_trees(pipe)
    runs, counts = 2000, {}
    for seed in range(runs):
        result = pipe.generate(list(prompt), max_new_tokens=2, temperature=1.0, seed=seed)
        key = tuple(result.token_ids)
        counts[key] = counts.get(key, 0) + 1
    chain_hits = sum(1 for tree, v in seen for n in v.accepted_nodes if n <= chain_length(tree))
    sibling_hits = sum(1 for tree, v in seen for n in v.accepted_nodes if n > chain_length(tree))
    assert chain_hits > 0.3 * runs and sibling_hits > 0.15 * runs, (chain_hits, sibling_hits)
    stat, df = chi2_goodness(counts, exact, runs)
    assert stat < chi2_critical(df, 1e-3), (stat, df)
