"""`Target`: the target model, its adapter and the KV cache of the sequence being generated.

Invariant between steps: the cache holds exactly the committed tokens except the newest one,
which is the root of the next token tree and is fed by the next verification forward.

Strategies that draft with the target itself (`runs_target`) receive it in `setup` and run every
draft pass inside `draft_pass(variant)`, the one place where the model is switched into a draft
mode and the cache is handed out: the cache is cut back to the committed tokens, the variant's
modules are swapped in (`ModelAdapter.swapped`), and in `finally`, whatever the pass raised, the
target's own modules are back and whatever the pass wrote into the cache is dropped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, cast

import torch
from torch import nn

from cas_spec.compat import cache_argument
from cas_spec.core.adapter import ModelAdapter
from cas_spec.core.tree import tree_position_ids
from cas_spec.core.types import TokenTree

if TYPE_CHECKING:
    from cas_spec.core.kvcache import KVCache


class Variant(Protocol):
    """A draft mode of the target: other decoder layers and, optionally, another LM head
    (`cas_spec.strategies.dsia.variants.ModelVariant`)."""

    @property
    def layers(self) -> nn.ModuleList: ...

    @property
    def lm_head(self) -> nn.Module | None: ...


class Target:
    """The target model of a pipeline and the KV cache of the sequence being generated.

    A strategy that declares `runs_target` receives it in `setup` and may read `model`, `adapter`,
    `length`, `device` and `dtype`, and call `draft_pass`, `forward` (inside a draft pass), `score`
    and `forward_uncached`. `prefill`, `forward_tree`, `commit`, `restore` and `synchronize` are the
    engine's."""

    def __init__(self, model: nn.Module, adapter: ModelAdapter):
        self.model = model
        self.adapter = adapter
        self.cache: KVCache | None = None
        self.length = 0  # committed tokens held by the cache

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def synchronize(self) -> None:
        """Wait for the device's queued work (CUDA runs forwards asynchronously), so that a clock
        read next times the work and not its launch; nothing to do on the CPU."""
        device = self.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    @torch.inference_mode()
    def prefill(self, tokens: Sequence[int]) -> None:
        """Start a new sequence: a fresh cache holding `tokens` (all but the newest prompt token)."""
        self.cache = self.adapter.new_cache()
        self.length = 0
        if tokens:
            ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)
            self.model(input_ids=ids, **cache_argument(self.model, self.cache), use_cache=True, logits_to_keep=1)
            self.length = len(tokens)

    def restore(self) -> None:
        """Drop whatever a draft pass wrote into the cache beyond the committed tokens."""
        if self.cache is not None:
            self.adapter.rollback(self.cache, self.length)

    # -- verification ------------------------------------------------------------------------
    @torch.inference_mode()
    def forward_tree(self, tree: TokenTree) -> torch.Tensor:
        """One target forward over every node of `tree`; returns [N, V] float32 logits."""
        self.restore()
        device = self.device
        ids = tree.tokens.to(device)[None]
        positions = tree_position_ids(tree, self.length, device)
        mask = None if tree.is_chain else self.adapter.tree_attention_mask(tree, self.length, self.dtype, device)
        out = self.model(
            input_ids=ids,
            position_ids=positions,
            attention_mask=mask,
            **cache_argument(self.model, self.cache),
            use_cache=True,
        )
        return cast(torch.Tensor, out.logits[0].float())

    def commit(self, tree: TokenTree, accepted_nodes: tuple[int, ...]) -> None:
        """Keep the KV of the root and the accepted path; roll back every other tree node."""
        assert self.cache is not None
        keep = (0, *accepted_nodes)
        if keep == tuple(range(len(keep))):
            self.adapter.rollback(self.cache, self.length + len(keep))
        else:
            self.adapter.keep(self.cache, self.length, torch.tensor(keep, dtype=torch.long))
        self.length += len(keep)

    # -- drafting with the target itself -------------------------------------------------------
    @contextlib.contextmanager
    def draft_pass(self, variant: Variant | None = None) -> Iterator[Target]:
        """A draft pass (see the module docstring): within the block the model is `variant` (None:
        the target itself) and `forward` runs it on the shared cache after the committed tokens.
        Yields this target."""
        self.restore()
        try:
            with self._running(variant):
                yield self
        finally:
            self.restore()

    @torch.inference_mode()
    def forward(self, tokens: Sequence[int], position: int, logits_to_keep: int = 1) -> torch.Tensor:
        """[logits_to_keep, V] float32 logits of the model as it stands (the target, or the variant
        of an enclosing `draft_pass`) over `tokens` at positions `position`…, on the shared cache."""
        device = self.device
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=device)
        positions = torch.arange(position, position + len(tokens), device=device)[None]
        out = self.model(
            input_ids=ids,
            position_ids=positions,
            **cache_argument(self.model, self.cache),
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        return cast(torch.Tensor, out.logits[0].float())

    @torch.inference_mode()
    def score(self, tokens: Sequence[int], start: int, variant: Variant | None = None) -> torch.Tensor:
        """[len(tokens), V] logits of `variant` (None: the target) over committed `tokens` placed at
        positions `start`…, reading the committed KV before `start` through a prefix view: the
        shared cache is never written (to score a draft mode on text the target already verified)."""
        assert self.cache is not None
        view = self.adapter.prefix_view(self.cache, start)
        device = self.device
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=device)
        positions = torch.arange(start, start + len(tokens), device=device)[None]
        with self._running(variant):
            out = self.model(input_ids=ids, position_ids=positions, **cache_argument(self.model, view), use_cache=True)
        return cast(torch.Tensor, out.logits[0].float())

    @torch.inference_mode()
    def forward_uncached(self, tokens: Sequence[int], variant: Variant | None = None) -> torch.Tensor:
        """[1, V] logits of `variant` (None: the target) after `tokens`, without any cache (to
        calibrate a draft mode on text)."""
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)
        with self._running(variant):
            return cast(torch.Tensor, self.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0].float())

    def _running(self, variant: Variant | None) -> contextlib.AbstractContextManager[None]:
        """Within the block the model is `variant`, or the target itself when None."""
        if variant is None:
            return contextlib.nullcontext()
        return self.adapter.swapped(variant.layers, variant.lm_head)


__all__ = ["Target", "Variant"]
