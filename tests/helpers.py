"""Helpers shared by test modules: the exact 2-token output distribution of a tiny target, and
a spy on the trees a pipeline verifies. The model and the law live in the testing kit
(`cas_spec.testing.models`, `cas_spec.testing.exact`)."""

from __future__ import annotations

from cas_spec.testing.exact import target_law
from cas_spec.testing.models import peaked_llama as peaked_tiny_model  # noqa: F401

PROMPT = [5, 7, 5, 7, 5]
AUTOREGRESSIVE = {"scheduler": {"kind": "autoregressive"}, "calibration": "off"}  # the reference pipeline

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
EOS = 2  # tiny_llama's eos_token_id: generation stops right after it


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
