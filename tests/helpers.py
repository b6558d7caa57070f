"""Everything test modules share, in one place: the tiny models and tokenizer (from the testing
kit), the fixture paths, reference pipelines, prompts, level definitions and small tools. Test
modules import shared things from here only, never from each other or from a conftest."""

from __future__ import annotations

from pathlib import Path

import torch

from cas_spec.compat import cache_argument
from cas_spec.plugin import DecodingState, SamplingParams, Scheduler, TreeBuilder
from cas_spec.testing.exact import target_law
from cas_spec.testing.models import (  # noqa: F401
    IdTokenizer,
    repetitive_prompt,
    tiny_gemma3,
    tiny_llama,
    tiny_phi3,
    tiny_qwen3,
)
from cas_spec.testing.models import peaked_llama as peaked_tiny_model  # noqa: F401

FIXTURES = Path(__file__).parent / "fixtures"
STORIES = FIXTURES / "stories260K"  # a 260K-parameter Llama (MIT, llama2.c), with its tokenizer

# -- reference pipelines --------------------------------------------------------------------------

AUTOREGRESSIVE = {"scheduler": {"kind": "autoregressive"}, "calibration": "off"}  # plain decoding
CHAIN_PLD = {  # prompt lookup under a fixed-length chain: the cheapest speculative pipeline
    "scheduler": {"kind": "chain", "options": {"level": "pld", "k": 6}},
    "levels": [{"name": "pld", "kind": "prompt_lookup", "options": {"max_ngram": 3, "min_ngram": 1, "num_tokens": 6}}],
}

# One level of each self-speculative strategy on the tiny 4-layer test models.
SELF_DRAFT_LEVELS = {
    "early_exit": {"kind": "early_exit", "options": {"exit_layer": 2}},
    "early_exit_no_reuse": {"kind": "early_exit", "options": {"exit_layer": 1, "reuse_kv": False}},
    "layer_sparsity": {"kind": "layer_sparsity", "options": {"skip": ["1.mlp", "2.attention"], "stop_below": 0.0}},
    "quanto_activation": {"kind": "quanto_activation", "options": {"backend": "dynamic_int8"}},
    "skip_int8": {
        "kind": "layer_sparsity",
        "options": {"skip": ["2.mlp"], "quantize": "dynamic_int8", "stop_below": 0.0},
    },
}

# One level of each self-speculative strategy on the stories260K fixture (5 layers).
STORIES_SELF_DRAFT_LEVELS = {
    "early_exit": {"kind": "early_exit", "options": {"exit_layer": 3}},
    "layer_sparsity": {
        "kind": "layer_sparsity",
        "options": {"skip": ["1.mlp", "2.attention", "3.mlp"], "stop_below": 0.0},
    },
    "quanto_activation": {"kind": "quanto_activation"},
}


def self_draft_chain(name: str, k: int = 4, **sampling: float) -> dict:
    """A pipeline with one of SELF_DRAFT_LEVELS under a fixed-length chain (no calibration)."""
    return {
        "scheduler": {"kind": "chain", "options": {"level": name, "k": k, "adaptive": False}},
        "levels": [{"name": name, **SELF_DRAFT_LEVELS[name]}],
        "calibration": "off",
        **({"sampling": sampling} if sampling else {}),
    }


# -- prompts --------------------------------------------------------------------------------------

PROMPT = [5, 7, 5, 7, 5]  # token ids for the tiny random models
EOS = 2  # tiny_llama's eos_token_id: generation stops right after it
STORY_PROMPTS = [  # for the stories260K fixture
    "Once upon a time, there was a little girl named Lily.",
    "Tom had a big red ball. Tom had a big red ball. He",
    "The cat sat on the mat. The dog sat on the mat. The bird",
]
LONG_PROMPT = (  # a long, copy-heavy code prompt (over 1,000 tokens for Gemma 3's tokenizer)
    "Python functions and what they do.\n\n"
    + "".join(f'def add_{i}(x):\n    """Return x plus {i}."""\n    return x + {i}\n\n' for i in range(1, 40))
    + "def add_40(x):\n"
)


# -- references and tools -------------------------------------------------------------------------


def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy `generate`: the reference every greedy pipeline must equal."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(prompt_ids) :].tolist()


def two_token_distribution(model, prompt: list[int] = PROMPT) -> dict[tuple[int, ...], float]:
    """{(a, b): p(a) p(b | a)} of plain sampling at temperature 1, with (EOS,) for runs that stop."""
    return dict(target_law(model, prompt, 2, eos=(EOS,)).law)


def record_trees(pipe) -> list:
    """Spy on the scheduler: (tree, verdict) of every verified step."""
    seen = []
    observe = pipe.scheduler.observe

    def spy(tree, verdict, timings):
        seen.append((tree, verdict))
        observe(tree, verdict, timings)

    pipe.scheduler.observe = spy
    return seen


def make_state(tokens: list[int]) -> DecodingState:
    """A greedy decoding state over `tokens` (all of them prompt), for driving a strategy by hand."""
    return DecodingState(tokens=tokens, prompt_length=len(tokens), sampling=SamplingParams(), generator=None)


class RoundRobinTree(Scheduler):
    """Test scheduler: every level drafts a branch below the root, and the first level extends
    each other branch's first token, so siblings come from different levels and branches share
    prefixes."""

    name = "round_robin_tree"

    def build_tree(self, state):
        builder = TreeBuilder(state.root_token)
        budget = max(state.max_depth, 0)
        for level in self.levels:
            draft = level.draft(state, (), min(3, budget))
            node = builder.add_chain(0, draft, level.name)
            if len(draft) and budget > 1 and level is not self.levels[0]:
                more = self.levels[0].draft(state, builder.path_tokens(node[0]), min(2, budget - 1))
                builder.add_chain(node[0], more, self.levels[0].name)
        return builder.build()


class CountingList(list):
    """A token list that counts every element read through Python-level access or copied."""

    reads = 0

    def __getitem__(self, key):
        item = super().__getitem__(key)
        self.reads += len(item) if isinstance(key, slice) else 1
        return item

    def __iter__(self):
        self.reads += len(self)
        return super().__iter__()

    def __reversed__(self):
        self.reads += len(self)
        return super().__reversed__()

    def __add__(self, other):
        self.reads += len(self)
        return super().__add__(other)

    def copy(self):
        self.reads += len(self)
        return super().copy()

    def index(self, *args):
        self.reads += len(self)
        return super().index(*args)

    def count(self, value):
        self.reads += len(self)
        return super().count(value)


# -- kernels --------------------------------------------------------------------------------------


def gqa_llama(seed: int = 0, **kwargs):
    """A tiny random Llama for kernel tests: hidden 64, vocab 256, GQA (4 heads over 2 KV heads)."""
    options = dict(vocab=256, hidden=64, intermediate=128, layers=3, heads=4, kv_heads=2)
    options.update(kwargs)
    return tiny_llama(seed, **options)


def tied_llama(seed: int = 0):
    """A tiny Llama whose LM head is tied to the embeddings, like SmolLM2's."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def cached_logits(model, ids: torch.Tensor, chunks: list[int]) -> list[torch.Tensor]:
    """Logits of each chunk of `ids`, fed one chunk after the other through a `DynamicCache`
    (stock transformers: the reference for the project's kernels)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    out, start = [], 0
    with torch.inference_mode():
        for size in chunks:
            out.append(
                model(input_ids=ids[:, start : start + size], **cache_argument(model, cache), use_cache=True).logits
            )
            start += size
    return out
