"""The kit's tiny models: every architecture builds deterministically, the builders need neither
pytest nor hypothesis, and the test suite's helpers re-export the kit's builders."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cas_spec.testing import models
from cas_spec.testing.models import ARCHITECTURES, IdTokenizer, repetitive_prompt, sampling_llama, tiny_model


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_each_architecture_builds_the_same_model_for_a_seed(architecture):
    a, b, c = tiny_model(architecture, 3), tiny_model(architecture, 3), tiny_model(architecture, 4)
    assert a.config.model_type.startswith(architecture) and a.config.num_hidden_layers == 4
    assert a.config.vocab_size == 96 and not a.training
    state_a, state_b, state_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert any(not torch.equal(state_a[k], state_c[k]) for k in state_a)


def test_gemma3_has_a_small_sliding_window_and_an_unknown_architecture_is_refused():
    model = tiny_model("gemma3")
    assert model.config.sliding_window == 8 and "full_attention" in model.config.layer_types
    with pytest.raises(ValueError, match="unknown architecture 'gpt2'"):
        tiny_model("gpt2")


def test_phi3_slides_every_layer_and_qwen3_none_as_their_released_models():
    phi, qwen = tiny_model("phi3"), tiny_model("qwen3")
    assert phi.config.sliding_window == 10 and getattr(phi.config, "layer_types", None) is None
    assert qwen.config.sliding_window is None and set(qwen.config.layer_types) == {"full_attention"}
    assert not torch.equal(qwen.model.layers[0].self_attn.q_norm.weight, torch.ones(8))  # random q/k norms


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_each_architecture_has_a_peaked_sampling_model(architecture):
    model = models.sampling_model(architecture)
    assert model.config.vocab_size == 10 and model.config.num_hidden_layers == 4
    with torch.no_grad():
        p = torch.softmax(model(torch.tensor([[5, 7, 5, 7, 5]])).logits[0, -1], -1)
        again = torch.softmax(models.sampling_model(architecture)(torch.tensor([[5, 7, 5, 7, 5]])).logits[0, -1], -1)
    assert torch.equal(p, again) and 0.3 < float(p.max()) < 0.9
    if architecture == "llama":
        assert torch.equal(p, torch.softmax(sampling_llama()(torch.tensor([[5, 7, 5, 7, 5]])).logits[0, -1], -1))


def test_the_sampling_model_is_peaky_but_not_deterministic():
    model = sampling_llama()
    with torch.no_grad():
        p = torch.softmax(model(torch.tensor([[5, 7, 5, 7, 5]])).logits[0, -1], -1)
    assert model.config.vocab_size == 10 and 0.3 < float(p.max()) < 0.9


def test_repetitive_prompt_repeats_its_motif_and_avoids_special_ids():
    prompt = repetitive_prompt(0, 96)
    assert len(prompt) == 51 and min(prompt) >= 3 and max(prompt) < 96
    tail = prompt[-4:]
    assert any(prompt[i : i + 4] == tail for i in range(len(prompt) - 4))


def test_id_tokenizer_round_trips():
    tok = IdTokenizer()
    assert tok("5 7 11")["input_ids"] == [5, 7, 11] and tok.decode([5, 7, 11]) == "5 7 11"
    assert tok.chat_template is None


def test_models_import_without_pytest_or_hypothesis():
    code = (
        "import sys; sys.modules['hypothesis'] = None; sys.modules['pytest'] = None\n"
        "import cas_spec.testing as kit\n"
        "from cas_spec.testing.models import tiny_llama, IdTokenizer\n"
        "assert kit.tiny_llama is tiny_llama and kit.IdTokenizer is IdTokenizer\n"
        "assert 'cas_spec.testing.contracts' not in sys.modules\n"
        "try:\n    kit.StrategyContract\nexcept ImportError:\n    print('contracts need pytest')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "contracts need pytest"


def test_the_test_suite_uses_the_kits_builders():
    import tests.helpers as helpers

    assert helpers.tiny_llama is models.tiny_llama and helpers.tiny_gemma3 is models.tiny_gemma3
    assert helpers.IdTokenizer is models.IdTokenizer and helpers.peaked_tiny_model is models.peaked_llama


def test_the_testing_extra_brings_what_the_kit_imports():
    import tomllib
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {req.split(">")[0].split("=")[0] for req in extras["testing"]}
    assert names == {"pytest", "hypothesis"}
    assert set(extras["testing"]) <= set(extras["dev"])
