"""Turning target logits into the distribution p that plain sampling draws from.

Temperature, then top-k, then top-p, then min-p, in float32, in the order and with the tie rules of
transformers' logits warpers. The autoregressive path and the sampling verifier both call
`target_probs`, so speculative sampling reproduces plain sampling's distribution exactly.
"""

from __future__ import annotations

import torch

from cas_spec.core.types import SamplingParams


def warp_logits(logits: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
    """[..., V] logits → [..., V] float32 logits after temperature, top-k, top-p and min-p (-inf = removed)."""
    logits = logits.float()
    if sampling.temperature > 0 and sampling.temperature != 1.0:
        logits = logits / sampling.temperature
    vocab = logits.shape[-1]
    if sampling.top_k is not None and 0 < sampling.top_k < vocab:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p is not None and sampling.top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=False, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - sampling.top_p)
        remove_sorted[..., -1:] = False  # always keep the most likely token
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    if sampling.min_p is not None and sampling.min_p > 0.0:
        probs = logits.softmax(dim=-1)
        remove = probs < sampling.min_p * probs.amax(dim=-1, keepdim=True)  # never the most likely token
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def target_probs(logits: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
    """[..., V] logits → [..., V] float32 probabilities p of the target under `sampling`.

    At temperature 0 (greedy) p is a point mass on the argmax, so sampling from it is greedy.
    """
    if sampling.greedy:
        argmax = logits.argmax(dim=-1, keepdim=True)
        return torch.zeros_like(logits, dtype=torch.float32).scatter_(-1, argmax, 1.0)
    return torch.softmax(warp_logits(logits, sampling), dim=-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """Draw one token id from a [V] distribution."""
    return int(torch.multinomial(probs, 1, generator=generator).item())


def make_generator(sampling: SamplingParams, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A seeded generator when `sampling.seed` is set (reproducible runs), else None."""
    if sampling.greedy or sampling.seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(sampling.seed)
    return generator
