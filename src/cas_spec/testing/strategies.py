"""Hypothesis strategies for property tests of plugins and kernels (needs `hypothesis`).

- `distributions(vocab)`: [V] float64 probability vectors: small integer weights (exact ties and
  zeros), float weights with zeros, and point masses.
- `token_sequences(vocab, min_size, max_size)`: lists of token ids.
- `token_trees(vocab, max_nodes)`: `TokenTree`s built with `TreeBuilder`: any parent, repeated
  tokens (so branches may share prefixes and siblings may coincide), and, with `sampled=True`,
  some nodes carrying a q whose support holds their token.
- `sampling_params()`: `SamplingParams`, greedy or with temperature, top-k and top-p.
- `draft_results(vocab, max_tokens)`: `DraftResult`s with consistent confidence, q rows and
  runners-up, as a strategy would return them (to drive a scheduler without a model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from hypothesis import strategies as st

from cas_spec.plugin import DraftResult, SamplingParams, TokenTree, TreeBuilder
from cas_spec.testing.exact import as_distribution, point_mass


@st.composite
def distributions(draw: st.DrawFn, vocab: int) -> torch.Tensor:
    """A [V] float64 distribution. Small integer weights make exact coincidences (p == q, ties,
    zeros) common; float weights cover the generic case; point masses the extremes."""
    kind = draw(st.sampled_from(["int", "float", "point"]))
    if kind == "point":
        return point_mass(vocab, draw(st.integers(0, vocab - 1)))
    weights: Sequence[float]
    if kind == "int":
        weights = draw(st.lists(st.integers(0, 3), min_size=vocab, max_size=vocab).filter(lambda w: sum(w) > 0))
    else:
        weights = draw(
            st.lists(st.one_of(st.just(0.0), st.floats(0.01, 1.0)), min_size=vocab, max_size=vocab).filter(
                lambda w: sum(w) > 0
            )
        )
    return as_distribution(weights)


def token_sequences(vocab: int, min_size: int = 0, max_size: int = 16) -> st.SearchStrategy[list[int]]:
    """Lists of token ids in [0, vocab)."""
    return st.lists(st.integers(0, vocab - 1), min_size=min_size, max_size=max_size)


@st.composite
def _sampled_token(draw: st.DrawFn, vocab: int) -> tuple[int, torch.Tensor]:
    q = draw(distributions(vocab))
    support = [t for t, w in enumerate(q.tolist()) if w > 0]
    return draw(st.sampled_from(support)), q.float()


@st.composite
def token_trees(draw: st.DrawFn, vocab: int, max_nodes: int = 12, sampled: bool = True) -> TokenTree:
    """A `TokenTree` of 1 to `max_nodes` nodes. Each node's parent is any earlier node and its
    token any id (a small vocabulary makes shared prefixes and equal siblings frequent); with
    `sampled`, a node may carry the q it was "drawn" from (its token in q's support)."""
    builder = TreeBuilder(draw(st.integers(0, vocab - 1)))
    for _ in range(draw(st.integers(0, max_nodes - 1))):
        parent = draw(st.integers(0, builder.size - 1))
        if sampled and draw(st.booleans()):
            token, q = draw(_sampled_token(vocab))
            builder.add(parent, token, "sampled", confidence=float(q[token]), draft_probs=q)
        else:
            builder.add(parent, draw(st.integers(0, vocab - 1)), "point")
    return builder.build()


@st.composite
def sampling_params(draw: st.DrawFn, greedy: bool | None = None) -> SamplingParams:
    """Greedy (temperature 0) or temperature in [0.1, 2] with optional top-k and top-p."""
    if greedy or (greedy is None and draw(st.booleans())):
        return SamplingParams()
    return SamplingParams(
        temperature=draw(st.floats(0.1, 2.0)),
        top_k=draw(st.one_of(st.none(), st.integers(1, 64))),
        top_p=draw(st.one_of(st.none(), st.floats(0.05, 1.0))),
        seed=draw(st.one_of(st.none(), st.integers(0, 2**31 - 1))),
    )


def _other_than(token: int) -> Callable[[int], bool]:
    return lambda t: t != token


@st.composite
def draft_results(draw: st.DrawFn, vocab: int, max_tokens: int = 8, sampled: bool | None = None) -> DraftResult:
    """A `DraftResult` of 0 to `max_tokens` tokens: point masses (no q) or, with `sampled`, each
    token with the q row it was drawn from (its token in the support); confidence per token, and
    runners-up (distinct tokens, never the drafted one) with probabilities."""
    size = draw(st.integers(0, max_tokens))
    with_q = draw(st.booleans()) if sampled is None else sampled
    tokens, rows, confidence, alternatives = [], [], [], []
    for _ in range(size):
        if with_q:
            token, q = draw(_sampled_token(vocab))
            rows.append(q)
            confidence.append(float(q[token]))
        else:
            token = draw(st.integers(0, vocab - 1))
            confidence.append(draw(st.floats(0.0, 1.0)))
        tokens.append(token)
        others = draw(st.lists(st.integers(0, vocab - 1).filter(_other_than(token)), unique=True, max_size=3))
        alternatives.append(tuple((t, draw(st.floats(0.0, 1.0))) for t in others))
    return DraftResult(
        tokens=tuple(tokens),
        confidence=tuple(confidence),
        draft_probs=torch.stack(rows) if rows and with_q else None,
        alternatives=tuple(alternatives),
    )


__all__ = ["distributions", "draft_results", "sampling_params", "token_sequences", "token_trees"]
