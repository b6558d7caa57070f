"""A decoding-like sequence of cached forwards (prefill, then chunks of 1, 3, 8) under every lever."""

from __future__ import annotations

import pytest
import torch

from cas_spec.kernels import LinearPlan, attention_kernel, linear_kernels
from tests.helpers import cached_logits, gqa_llama, tied_llama

CHUNKS = [20, 1, 3, 8, 1, 3, 8]
PLANS = {
    "mixed": LinearPlan.from_mapping({1: "xwt", 2: "wxt", 3: "onednn", 8: "wxt"}, default="onednn"),
    "xwt": LinearPlan.uniform("xwt"),
    "onednn": LinearPlan.uniform("onednn"),
}


@pytest.mark.parametrize("attention", [None, "cas_sdpa"])
@pytest.mark.parametrize("plan", list(PLANS))
@pytest.mark.parametrize("build", [gqa_llama, tied_llama], ids=["untied", "tied"])
def test_cached_steps_equal_stock(build, plan, attention):
    model = build()
    ids = torch.randint(0, 256, (1, sum(CHUNKS)), generator=torch.Generator().manual_seed(5))
    reference = cached_logits(model, ids, CHUNKS)
    with attention_kernel(model, attention), linear_kernels(model, PLANS[plan]):
        got = cached_logits(model, ids, CHUNKS)
    for size, a, b in zip(CHUNKS, got, reference, strict=True):
        assert a.shape == b.shape == (1, size, 256)
        assert (a - b).abs().max().item() < 1e-4
        assert torch.equal(a.argmax(-1), b.argmax(-1))
