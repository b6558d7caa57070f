"""The built-in strategies and schedulers pass the plugin contracts of `cas_spec.testing`.

Options are chosen for the contracts' tiny models (4 layers): early exit after layer 1, an
explicit skip set that every architecture allows (layers 0 and 2 size Gemma 3's masks). Greedy
identity and no leakage run on every architecture. The sampling checks run on the Llama, and
also on Qwen3 and Phi-3 (`SampledOnEachArchitecture`) where a level drafts with the target itself, so that its q
comes from that architecture's layers; lookup levels draft point masses from the text whatever
the model (the target rows each sampling run is checked against come from the same tree
forwards in both cases). The slow end-to-end χ² check samples 3000 outputs per architecture
(about 26 seconds each on the dev box), so it stays on the Llama (`slow_sampling_architectures`);
the per-run exact laws above are what prove Qwen3 and Phi-3.
"""

from __future__ import annotations

from cas_spec.testing import SchedulerContract, StrategyContract


class SampledOnEachArchitecture:
    """Sampling checks on the Llama, Qwen3 and Phi-3 (levels that draft with the target itself);
    the slow χ² check on the Llama only."""

    sampling_architectures = ("llama", "qwen3", "phi3")
    slow_sampling_architectures = ("llama",)


PLD = {"name": "pld", "kind": "prompt_lookup", "options": {"max_ngram": 3, "min_ngram": 1, "num_tokens": 6}}
EXIT1 = {"name": "exit1", "kind": "early_exit", "options": {"exit_layer": 1}}


# -- strategies ---------------------------------------------------------------------------------------
class TestPromptLookup(StrategyContract):
    plugin_name = "prompt_lookup"
    options = {"max_ngram": 3, "min_ngram": 1, "num_tokens": 6}
    invalid_options = [{"max_ngram": 0}, {"num_tokens": 300}, {"min_ngram": 4, "max_ngram": 2}]


class TestMaxGram(StrategyContract):
    plugin_name = "max_gram"
    options = {"max_ngram": 8, "num_tokens": 6}
    invalid_options = [{"num_tokens": 0}, {"occurrence": "middle"}]


class TestLayerSparsity(SampledOnEachArchitecture, StrategyContract):
    plugin_name = "layer_sparsity"
    options = {"skip": ["1.attention", "2.mlp"], "stop_below": 0.0}  # tiny random models are never sure
    invalid_options = [{"sparsity": 1.5}, {"skip": ["1.ffn"]}]


class TestEarlyExit(SampledOnEachArchitecture, StrategyContract):
    plugin_name = "early_exit"
    options = {"exit_layer": 1}
    invalid_options = [{"exit_layer": 0}, {"stop_below": 2.0}]


class TestQuantoActivation(SampledOnEachArchitecture, StrategyContract):
    plugin_name = "quanto_activation"
    options = {"backend": "dynamic_int8"}
    invalid_options = [{"backend": "fp4"}]


class TestQuantoActivationAuto(SampledOnEachArchitecture, StrategyContract):
    """The default backend: the native W8A8 kernel where it compiles (this project's machines), else
    torch's dynamic int8 (`tests/strategies/test_quantization.py` checks which `auto` picks)."""

    plugin_name = "quanto_activation"
    options = {"backend": "auto"}
    invalid_options = [{"backend": "int4"}]


class TestQuantoActivationDraftVocab(SampledOnEachArchitecture, StrategyContract):
    """An int8 level drafting over a frequency-ranked subset of the vocabulary (FR-Spec,
    `strategies/dsia/draft_head.py`): 4 tokens (the test tokenizer ranks by id) plus the context's,
    smaller than the tiny models' 96 and the sampling model's 10, so tokens outside the subset have
    q = 0 and the verifier must still reproduce the target exactly."""

    plugin_name = "quanto_activation"
    options = {"backend": "auto", "draft_vocab": 4}
    invalid_options = [{"draft_vocab": 0}]


class TestLayerSparsityDraftVocab(SampledOnEachArchitecture, StrategyContract):
    """A float32 level (skipped sublayers) with the subset head of `draft_vocab` 4."""

    plugin_name = "layer_sparsity"
    options = {"skip": ["1.attention", "2.mlp"], "stop_below": 0.0, "draft_vocab": 4}
    invalid_options = [{"draft_vocab": -3}]


# -- schedulers ---------------------------------------------------------------------------------------
class TestChain(SchedulerContract):
    plugin_name = "chain"
    options = {"k": 4, "adaptive": False}
    invalid_options = [{"k": 0}, {"level": "nope"}]
    levels = [PLD]


class TestDytc(SampledOnEachArchitecture, SchedulerContract):
    plugin_name = "dytc"
    options = {"warmup": 2, "probe_interval": 4}
    invalid_options = [{"max_nodes": 1}, {"objective": "best"}]
    levels = [EXIT1, PLD]


class TestCsDrafting(SampledOnEachArchitecture, SchedulerContract):
    plugin_name = "cs_drafting"
    options = {"k_matrix": [[2, 4], [0, 4]]}
    invalid_options = [{"leniency": 0.5}, {"k_matrix": [[1, 2, 3], [0, 1, 1], [0, 0, 1]]}]
    levels = [EXIT1, PLD]


class TestStaticTree(SampledOnEachArchitecture, SchedulerContract):
    plugin_name = "static_tree"
    options = {"k": 4, "max_nodes": 12}
    invalid_options = [{"max_nodes": 0}, {"thresholds": [0.9, 0.1, 0.95]}]
    levels = [EXIT1]


class TestLookupTree(SchedulerContract):
    plugin_name = "lookup_tree"
    options = {"level": "pld", "adaptive": False}
    invalid_options = [{"candidates": 0}, {"level": "nope"}]
    levels = [PLD]


class TestAutoregressive(SchedulerContract):
    """Plain decoding through the engine: `expects_drafts = False`, so the checks confirm that it
    never drafts and stays exact; registration, options and leakage as for any scheduler."""

    plugin_name = "autoregressive"
    invalid_options = [{"k": 4}]
    levels = []
    expects_drafts = False
