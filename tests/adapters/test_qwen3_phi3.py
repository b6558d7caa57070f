"""Qwen3 and Phi-3: resolution and layer types, greedy identity with transformers' own `generate`
(the default pipeline, a chain over each self-draft level, the tree presets; across Phi-3's and a
windowed Qwen3's sliding window), token trees past the window, int8 twins of Phi-3's fused
projections against twins of the same weights split Mistral-style, layer sparsity and early exit
against independently computed forwards, and Phi-3's LongRoPE context limit. Negative controls
show the checks fail for the adapter behaviour they guard against."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import transformers
from torch import nn

from cas_spec import load_pipeline
from cas_spec.adapters import LlamaAdapter, Phi3Adapter, resolve_adapter
from cas_spec.compat import cache_argument
from cas_spec.core.errors import UnsupportedModelError
from cas_spec.core.target import Target
from cas_spec.core.tree import TreeBuilder, tree_attention_mask
from cas_spec.core.types import SamplingParams
from cas_spec.kernels import attention_kernel
from cas_spec.kernels import linear as linear_mod
from cas_spec.kernels.linear import KERNELS, LinearPlan, available_kernels, linear_kernels
from cas_spec.strategies.dsia import quantization as qz
from cas_spec.strategies.dsia.twins import target_linears
from cas_spec.strategies.dsia.variants import ATTENTION, MLP, Sublayer, build_variant
from cas_spec.verifiers.greedy import GreedyVerifier
from tests.helpers import (
    AUTOREGRESSIVE,
    SELF_DRAFT_LEVELS,
    IdTokenizer,
    cached_logits,
    hf_greedy,
    repetitive_prompt,
    self_draft_chain,
    tiny_phi3,
    tiny_qwen3,
)

MODELS = {  # the windowed Qwen3 slides from layer 1 on, so SELF_DRAFT_LEVELS' skip set is allowed
    "qwen3": lambda seed: tiny_qwen3(seed),
    "qwen3-window": lambda seed: tiny_qwen3(seed, window=8, full_layers=1),
    "phi3": lambda seed: tiny_phi3(seed),
    "phi3-no-window": lambda seed: tiny_phi3(seed, window=None),
}
AVAILABLE = qz.available_backends()
BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(AVAILABLE[name] is not None, reason=str(AVAILABLE[name])))
    for name in qz.BACKENDS
]


def tokens(seed: int, n: int, vocab: int = 96) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g).tolist()


# -- resolution and layer types ----------------------------------------------------------------
def test_qwen3_resolves_to_the_llama_adapter_and_phi3_to_its_own():
    qwen, phi = tiny_qwen3(), tiny_phi3()
    assert type(resolve_adapter(qwen)) is LlamaAdapter and qwen.config.model_type == "qwen3"
    adapter = resolve_adapter(phi)
    assert type(adapter) is Phi3Adapter and adapter.name == "phi3" and phi.config.model_type == "phi3"
    assert adapter.num_layers == 4 and adapter.lm_head is phi.lm_head and adapter.final_norm is phi.model.norm
    with pytest.raises(UnsupportedModelError) as info:
        resolve_adapter(SimpleNamespace(config=SimpleNamespace(model_type="gpt2")))
    assert "phi3" in str(info.value) and "qwen3" in str(info.value)


def test_layer_types_follow_what_transformers_builds_caches_from():
    """Phi-3 sets no `layer_types`: with `sliding_window` every layer slides (as transformers'
    own caches and masks do), without it none does; Qwen3 lists them."""
    cases = {
        "qwen3": ((), (0,), [False] * 4),
        "qwen3-window": ((1, 2, 3), (0, 1), [False, True, True, True]),
        "phi3": ((0, 1, 2, 3), (0,), [True] * 4),
        "phi3-no-window": ((), (0,), [False] * 4),
    }
    for name, (sliding, references, cache_slides) in cases.items():
        model = MODELS[name](0)
        adapter = resolve_adapter(model)
        assert adapter.sliding_window_layers == sliding, name
        assert adapter.mask_reference_layers == references, name
        cache = adapter.new_cache()
        assert [layer.is_sliding for layer in cache.layers] == cache_slides, name
        stock = transformers.DynamicCache(config=model.config)
        assert [layer.is_sliding for layer in stock.layers] == cache_slides, name
    assert all(layer.sliding_window == 10 for layer in resolve_adapter(tiny_phi3()).new_cache().layers)


def test_the_int8_twins_cover_every_projection_and_leave_the_norms_float():
    for model, per_layer in ((tiny_qwen3(), 7), (tiny_phi3(), 4)):  # q k v o gate up down | qkv o gate_up down
        target = Target(model, resolve_adapter(model))
        linears = target_linears(target)
        assert len(linears) == 4 * per_layer + 1 and linears[-1] is model.lm_head
        assert all(type(m) is nn.Linear for m in linears)
    names = {n.rsplit(".", 1)[-1] for n, m in tiny_phi3().named_modules() if isinstance(m, nn.Linear)}
    assert names == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head"}


# -- greedy identity -----------------------------------------------------------------------------
PIPELINES = ["default", "static-tree", "lookup-tree", *sorted(SELF_DRAFT_LEVELS)]


@pytest.mark.parametrize("name", list(MODELS))
def test_every_pipeline_equals_transformers_generate(name):
    """The default pipeline, the tree presets and a chain over each self-draft level against
    transformers' greedy `generate`; 51 prompt tokens and 40 new ones cross Phi-3's window of 10
    and the windowed Qwen3's 8."""
    model = MODELS[name](1)
    prompt = repetitive_prompt(1, 96)
    want = hf_greedy(model, prompt, 40)
    drafted = {}
    for pipeline in PIPELINES:
        config = self_draft_chain(pipeline) if pipeline in SELF_DRAFT_LEVELS else pipeline
        got = load_pipeline(config, model=model, tokenizer=IdTokenizer()).generate(prompt, max_new_tokens=40)
        assert got.token_ids == want, f"{name}, {pipeline}"
        drafted[pipeline] = sum(level.drafted for level in got.stats.levels.values())
    assert all(drafted[level] > 0 for level in SELF_DRAFT_LEVELS), drafted
    plain = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer())
    assert plain.generate(prompt, max_new_tokens=40).token_ids == want


def full_tree_mask(adapter, tree, past_length, dtype, device):
    """A wrong adapter's mask: one over every cached token, as for a Llama without a window."""
    return tree_attention_mask(tree, past_length, dtype, device)


def test_a_full_tree_mask_on_sliding_layers_fails_past_the_window(monkeypatch):
    """Negative control: with the previous default mask the tree presets break on Phi-3 as soon
    as the cache holds more than the window (the key count and the mask disagree)."""
    model = tiny_phi3(1)
    prompt = repetitive_prompt(1, 96)
    monkeypatch.setattr(Phi3Adapter, "tree_attention_mask", full_tree_mask)
    with pytest.raises(RuntimeError, match="size of tensor"):
        load_pipeline("lookup-tree", model=model, tokenizer=IdTokenizer()).generate(prompt, max_new_tokens=40)


# -- token trees past the window -----------------------------------------------------------------
def forward(model, cache, ids: list[int], start: int) -> torch.Tensor:
    with torch.inference_mode():
        return model(
            torch.tensor([ids]),
            **cache_argument(model, cache),
            use_cache=True,
            position_ids=torch.arange(start, start + len(ids))[None],
        ).logits[0]


def greedy_continuation(model, prompt: list[int], n: int) -> list[int]:
    cache = resolve_adapter(model).new_cache()
    out = [int(forward(model, cache, prompt, 0)[-1].argmax())]
    for i in range(n - 1):
        out.append(int(forward(model, cache, out[-1:], len(prompt) + i)[-1].argmax()))
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", ["phi3", "qwen3-window"])
def test_a_tree_deeper_than_the_window_gives_each_node_its_path_logits_and_commits_exactly(name, attn):
    model = tiny_phi3(3, attn=attn) if name == "phi3" else tiny_qwen3(3, window=8, full_layers=1, attn=attn)
    vocab = model.config.vocab_size
    prompt = tokens(7, 30)
    greedy = greedy_continuation(model, prompt, 13)
    wrong = [(t + 1) % vocab for t in greedy]
    builder, parent = TreeBuilder(prompt[-1]), 0
    builder.add(0, wrong[0], "hand")
    for depth in range(12):  # the greedy path 12 deep (past both windows), a wrong sibling at each depth
        if depth:
            builder.add(parent, wrong[depth], "hand")
        parent = builder.add(parent, greedy[depth], "hand")
    tree = builder.build()
    adapter = resolve_adapter(model)
    target = Target(model, adapter)
    target.prefill(prompt[:-1])
    logits = target.forward_tree(tree)
    for node in range(tree.size):
        path, n = [], node
        while n > 0:
            path.append(int(tree.tokens[n]))
            n = tree.parents[n]
        expected = forward(model, adapter.new_cache(), prompt + path[::-1], 0)[-1]
        torch.testing.assert_close(logits[node], expected, atol=1e-5, rtol=1e-5)
    verdict = GreedyVerifier().verify(tree, logits, SamplingParams(), None)
    assert list(verdict.accepted_tokens) == greedy[:12] and verdict.bonus_token == greedy[12]
    target.commit(tree, verdict.accepted_nodes)
    reference = Target(model, adapter)
    reference.prefill(prompt + greedy[:12])
    follow = TreeBuilder(greedy[12])
    follow.add(follow.add(0, 5, "hand"), 6, "hand")
    follow.add(0, 7, "hand")
    torch.testing.assert_close(
        target.forward_tree(follow.build()), reference.forward_tree(follow.build()), atol=1e-5, rtol=1e-5
    )


# -- int8 twins of fused projections ---------------------------------------------------------------
def as_mistral(phi: nn.Module) -> nn.Module:
    """The same network as Mistral: `qkv_proj` split into q/k/v, `gate_up_proj` into gate/up
    (Mistral's layers are Llama's, and it slides every layer over the same window as Phi-3)."""
    c = phi.config
    head_dim = c.hidden_size // c.num_attention_heads
    config = transformers.MistralConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=head_dim,
        max_position_embeddings=c.max_position_embeddings,
        sliding_window=c.sliding_window,
        rms_norm_eps=c.rms_norm_eps,
        rope_theta=c.rope_parameters["rope_theta"],
        hidden_act=c.hidden_act,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        attn_implementation="sdpa",
    )
    model = transformers.MistralForCausalLM(config).eval()
    q, kv = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    state = {}
    for key, value in phi.state_dict().items():
        if key.endswith("qkv_proj.weight"):
            base = key.removesuffix("qkv_proj.weight")
            for part, w in zip(("q", "k", "v"), value.split([q, kv, kv]), strict=True):
                state[f"{base}{part}_proj.weight"] = w
        elif key.endswith("gate_up_proj.weight"):
            base = key.removesuffix("gate_up_proj.weight")
            state[f"{base}gate_proj.weight"], state[f"{base}up_proj.weight"] = value.chunk(2)
        else:
            state[key] = value
    model.load_state_dict(state, strict=True)
    return model


def quantized_logits(model: nn.Module, backend: str, ids: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """Logits of `model` with every Linear (LM head included) run by its `backend` twin, as the
    int8 drafters build and swap them; calibrated on `ids` where the backend needs it."""
    target = Target(model, resolve_adapter(model))
    twins = qz.build_twins(target_linears(target), backend, per_channel=per_channel)
    variant = build_variant(target.adapter, linear_twins=twins)
    with torch.inference_mode(), target.adapter.swapped(variant.layers, variant.lm_head):
        if qz.needs_calibration(backend):
            with qz.calibrating(backend):
                model(ids)
            qz.finish(twins, backend)
        return model(ids).logits[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_projection_twins_equal_twins_of_the_split_projections(backend):
    """Weights are quantized per output channel (a row of the fused weight) and the three (two)
    projections share their input, so the fused twin is the split twins side by side."""
    phi = tiny_phi3(4)
    reference = as_mistral(phi)
    ids = torch.tensor([tokens(4, 40)])
    with torch.inference_mode():
        float_logits = phi(ids).logits[0]
        torch.testing.assert_close(reference(ids).logits[0], float_logits, atol=1e-5, rtol=1e-5)
    fused = quantized_logits(phi, backend, ids)
    split = quantized_logits(reference, backend, ids)
    torch.testing.assert_close(fused, split, atol=1e-5, rtol=1e-5)
    assert (fused - float_logits).abs().max() > 1e-4  # quantized, so the check compares int8 outputs


@pytest.mark.parametrize("backend", ["native_int8", "dynamic_int8"])
def test_one_weight_scale_across_a_fused_projection_is_told_apart(backend):
    """Negative control: per-tensor weight scales (`build_twins(per_channel=False)`, which no
    pipeline uses) share one scale across q, k and v, unlike split twins; the check sees it."""
    if AVAILABLE[backend] is not None:
        pytest.skip(AVAILABLE[backend])
    phi = tiny_phi3(4)
    ids = torch.tensor([tokens(4, 40)])
    fused = quantized_logits(phi, backend, ids, per_channel=False)
    split = quantized_logits(as_mistral(phi), backend, ids, per_channel=False)
    assert (fused - split).abs().max() > 1e-3


# -- CPU kernels ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("name", ["qwen3", "phi3"])
def test_every_linear_kernel_and_cas_sdpa_run_every_projection_as_stock_does(name, kernel, monkeypatch):
    """The row-count kernels take the fused projections like any Linear (out = 3 heads' worth, or
    twice the MLP width), and `cas_sdpa` attends across Phi-3's window like SDPA: a prefill past
    the window, then 1 to 10 new tokens, as transformers' own cache computes them."""
    model = MODELS[name](8)
    ran: set[int] = set()
    run = linear_mod._run

    def spy(module, which, x):
        ran.add(id(module))
        return run(module, which, x)

    monkeypatch.setattr(linear_mod, "_run", spy)
    ids = torch.tensor([tokens(8, 40)])
    for n in (1, 4, 10):
        reference = cached_logits(model, ids[:, : 30 + n], [30, n])[1]
        with attention_kernel(model, "cas_sdpa"), linear_kernels(model, LinearPlan.uniform(kernel)):
            got = cached_logits(model, ids[:, : 30 + n], [30, n])[1]
        assert (got - reference).abs().max().item() < 1e-4, n
        assert torch.equal(got.argmax(-1), reference.argmax(-1)), n
    linears = {id(m) for m in model.modules() if isinstance(m, nn.Linear)}
    if kernel in ("xwt", "wxt", "native") or (kernel == "onednn" and "onednn" in available_kernels()):
        assert ran == linears  # every projection, the fused ones included, went through the kernel
    if kernel == "stock":
        assert not ran


# -- layer sparsity and early exit ---------------------------------------------------------------
OUTPUT_PROJECTIONS = {ATTENTION: "self_attn.o_proj", MLP: "mlp.down_proj"}


@pytest.mark.parametrize("name", ["qwen3", "phi3"])
@pytest.mark.parametrize("skip", [("1.attention", "2.mlp"), ("1.mlp", "2.attention"), ("2.attention", "2.mlp")])
def test_skipping_sublayers_equals_zeroing_their_output_projections(name, skip):
    """A skipped sublayer adds nothing to the residual stream: the same logits as the model with
    that sublayer's output projection zeroed (fused inputs, q/k norms and dropouts included)."""
    model = MODELS[name](5)
    adapter = resolve_adapter(model)
    ids = torch.tensor([tokens(5, 24)])  # longer than Phi-3's window
    variant = build_variant(adapter, skip=[Sublayer.parse(s) for s in skip])
    with torch.no_grad():
        reference = model(ids).logits
        with adapter.swapped(variant.layers):
            skipped = model(ids).logits
        assert not torch.allclose(skipped, reference, atol=1e-4)
        for text in skip:
            sub = Sublayer.parse(text)
            model.get_submodule(f"model.layers.{sub.layer}.{OUTPUT_PROJECTIONS[sub.kind]}").weight.zero_()
        zeroed = model(ids).logits
    torch.testing.assert_close(skipped, zeroed, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["qwen3", "phi3"])
def test_early_exit_runs_the_first_layers_then_the_final_norm_and_head(name):
    model = MODELS[name](6)
    adapter = resolve_adapter(model)
    ids = torch.tensor([tokens(6, 24)])
    variant = build_variant(adapter, exit_layer=2)
    with torch.no_grad():
        with adapter.swapped(variant.layers):
            logits = model(ids).logits
        hidden = model(ids, output_hidden_states=True).hidden_states[2]
        expected = model.lm_head(model.model.norm(hidden))
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=1e-5)


# -- Phi-3's LongRoPE --------------------------------------------------------------------------------
def longrope_phi3(original: int = 64) -> nn.Module:
    """A tiny Phi-3 with LongRoPE: short factors up to `original` positions, long ones past it."""
    config = transformers.Phi3Config(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        original_max_position_embeddings=original,
        rope_scaling={"type": "longrope", "short_factor": [1.0] * 4, "long_factor": [4.0, 5.0, 6.0, 7.0]},
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return transformers.Phi3ForCausalLM(config).eval()


def test_longrope_context_stops_where_the_rotary_frequencies_switch(monkeypatch):
    model = longrope_phi3(64)
    assert resolve_adapter(model).context_length == 64
    assert resolve_adapter(tiny_phi3()).context_length == 256
    prompt = repetitive_prompt(0, 96)  # 51 tokens
    want = hf_greedy(model, prompt, 40)
    for config in ("default", AUTOREGRESSIVE):
        got = load_pipeline(config, model=model, tokenizer=IdTokenizer()).generate(prompt, max_new_tokens=40)
        assert got.token_ids == want[: 64 - len(prompt)]
    # negative control: past the switch, keeping the cache decodes differently from `generate`
    monkeypatch.setattr(Phi3Adapter, "context_length", property(lambda self: 256))
    got = load_pipeline(AUTOREGRESSIVE, model=model, tokenizer=IdTokenizer()).generate(prompt, max_new_tokens=40)
    assert got.token_ids[: 64 - len(prompt)] == want[: 64 - len(prompt)] and got.token_ids != want
