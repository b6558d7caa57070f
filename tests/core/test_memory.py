"""`Pipeline.memory()`: the model, the KV cache and each level's own tensors, shared ones once."""

from __future__ import annotations

import torch

from cas_spec import load_pipeline
from cas_spec.core.memory import owned_bytes, storage_bytes
from tests.helpers import CHAIN_PLD, SELF_DRAFT_LEVELS, IdTokenizer, repetitive_prompt, tiny_llama


def test_storages_count_once_and_shared_ones_not_at_all():
    model = torch.nn.Linear(4, 3)
    weight_bytes = 4 * 3 * 4
    assert storage_bytes([model.weight, model.weight.view(-1), model.bias]) == weight_bytes + 3 * 4
    own = torch.zeros(10)
    assert owned_bytes([model.weight, own], shared_with=model) == 40


def test_the_report_names_the_model_the_cache_and_each_level():
    model = tiny_llama(0, layers=4)
    config = {
        "scheduler": {"kind": "chain", "options": {"level": "int8", "k": 4, "adaptive": False}},
        "levels": [{"name": "int8", **SELF_DRAFT_LEVELS["quanto_activation"]}, *CHAIN_PLD["levels"]],
        "calibration": "off",
    }
    pipe = load_pipeline(config, model=model, tokenizer=IdTokenizer())
    pipe.generate(repetitive_prompt(0, model.config.vocab_size), max_new_tokens=8)
    report = pipe.memory()
    assert report.model == sum(t.numel() * 4 for t in (*model.parameters(), *model.buffers()))  # all float32
    assert report.kv_cache > 0
    assert report.levels["pld"] == 0  # prompt lookup holds no tensors
    linear_weights = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    assert linear_weights <= report.levels["int8"] < 4 * linear_weights  # int8 twins: a byte a weight, plus scales
    text = report.format()
    assert text.startswith("memory") and "level int8 +" in text and "pld" not in text
