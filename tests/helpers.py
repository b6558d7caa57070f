"""Helpers shared by test modules: the exact 2-token output distribution of a tiny target, and
a spy on the trees a pipeline verifies."""

from __future__ import annotations

import torch

from tests.conftest import tiny_llama

PROMPT = [5, 7, 5, 7, 5]
EOS = 2  # tiny_llama's eos_token_id: generation stops right after it


def peaked_tiny_model(seed: int = 0, scale: float = 6.0, vocab: int = 12):
    """A 4-layer tiny Llama with its LM head scaled up: a peakier target, so that drafts are both
    accepted and rejected often enough for a distribution test to mean something."""
    model = tiny_llama(seed, vocab=vocab, hidden=16, layers=4, heads=2, kv_heads=1, intermediate=16)
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model


@torch.no_grad()
def two_token_distribution(model, prompt: list[int] = PROMPT) -> dict[tuple[int, ...], float]:
    """{(a, b): p(a) p(b | a)} of plain sampling at temperature 1, with (EOS,) for runs that stop."""
    vocab = model.config.vocab_size
    first = torch.softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1].double(), -1)
    batch = torch.tensor([prompt + [a] for a in range(vocab)])
    second = torch.softmax(model(input_ids=batch).logits[:, -1].double(), -1)
    exact = {(a, b): float(first[a] * second[a, b]) for a in range(vocab) for b in range(vocab) if a != EOS}
    exact[(EOS,)] = float(first[EOS])
    return exact


def record_trees(pipe) -> list:
    """Spy on the scheduler: (tree, verdict) of every verified step."""
    seen = []
    observe = pipe.scheduler.observe

    def spy(tree, verdict, timings):
        seen.append((tree, verdict))
        observe(tree, verdict, timings)

    pipe.scheduler.observe = spy
    return seen
