"""Helpers shared by test modules: the exact 2-token output distribution of a tiny target, and
a spy on the trees a pipeline verifies. The model and the law live in the testing kit
(`cas_spec.testing.models`, `cas_spec.testing.exact`)."""

from __future__ import annotations

from cas_spec.testing.exact import target_law
from cas_spec.testing.models import peaked_llama as peaked_tiny_model  # noqa: F401

PROMPT = [5, 7, 5, 7, 5]
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
