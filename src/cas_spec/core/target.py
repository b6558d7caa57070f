"""`Target`: the target model, its adapter and the KV cache of the sequence being generated.

Invariant between steps: the cache holds exactly the committed tokens except the newest one,
which is the root of the next token tree and is fed by the next verification forward.
"""

from __future__ import annotations

import torch

from cas_spec.adapters.base import ModelAdapter
from cas_spec.core.tree import tree_position_ids
from cas_spec.core.types import TokenTree


class Target:
    def __init__(self, model: torch.nn.Module, adapter: ModelAdapter):
        self.model = model
        self.adapter = adapter
        self.cache = None
        self.length = 0  # committed tokens held by the cache
        self.costs = None  # a measured `CostTable` when the pipeline is calibrated, else None
        self.draft_costs: dict = {}  # level name -> its calibrated `LevelDraftCost` (may be empty)
        self.tokenizer = None  # the pipeline's tokenizer, for strategies that read text (e.g. a corpus)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.inference_mode()
    def prefill(self, tokens: list[int]) -> None:
        """Start a new sequence: a fresh cache holding `tokens` (all but the newest prompt token)."""
        self.cache = self.adapter.new_cache()
        self.length = 0
        if tokens:
            ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
            self.model(input_ids=ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
            self.length = len(tokens)

    def restore(self) -> None:
        """Drop whatever a draft pass wrote into the cache beyond the committed tokens."""
        self.adapter.rollback(self.cache, self.length)

    @torch.inference_mode()
    def forward_tree(self, tree: TokenTree) -> torch.Tensor:
        """One target forward over every node of `tree`; returns [N, V] float32 logits."""
        self.restore()
        device = self.device
        ids = tree.tokens.to(device)[None]
        positions = tree_position_ids(tree, self.length, device)
        mask = None if tree.is_chain else self.adapter.tree_attention_mask(tree, self.length, self.dtype, device)
        out = self.model(input_ids=ids, position_ids=positions, attention_mask=mask,
                         past_key_values=self.cache, use_cache=True)
        return out.logits[0].float()

    def commit(self, tree: TokenTree, accepted_nodes: tuple[int, ...]) -> None:
        """Keep the KV of the root and the accepted path; roll back every other tree node."""
        keep = (0, *accepted_nodes)
        if keep == tuple(range(len(keep))):
            self.adapter.rollback(self.cache, self.length + len(keep))
        else:
            self.adapter.keep(self.cache, self.length, torch.tensor(keep, dtype=torch.long))
        self.length += len(keep)
