"""Token trees: building them, and the tensors that verify one in a single target forward.

Node 0 is the root: the newest committed token, which is not yet in the KV cache. A node's
position is `cache_length + depth`; it attends to the whole committed prefix, to its ancestors
and to itself. A chain (each node the child of the one before) needs no explicit mask.
"""

from __future__ import annotations

import torch

from cas_spec.core.types import DraftResult, TokenTree


class TreeBuilder:
    """Grows a token tree node by node; `build()` freezes it into a `TokenTree`."""

    def __init__(self, root_token: int):
        self.tokens: list[int] = [root_token]
        self.parents: list[int] = [-1]
        self.depths: list[int] = [0]
        self.levels: list[str | None] = [None]
        self.confidence: list[float] = [1.0]
        self.draft_probs: list[torch.Tensor | None] = [None]
        self.children: list[list[int]] = [[]]

    @property
    def size(self) -> int:
        return len(self.tokens)

    def path_tokens(self, node: int) -> tuple[int, ...]:
        """Tokens from below the root down to `node` (the root itself excluded)."""
        out = []
        while node > 0:
            out.append(self.tokens[node])
            node = self.parents[node]
        return tuple(reversed(out))

    def add(
        self,
        parent: int,
        token: int,
        level: str | None,
        confidence: float = 1.0,
        draft_probs: torch.Tensor | None = None,
    ) -> int:
        """Add one node under `parent`; returns its index."""
        if not 0 <= parent < len(self.tokens):
            raise IndexError(f"parent {parent} is not a node of this tree")
        index = len(self.tokens)
        self.tokens.append(int(token))
        self.parents.append(parent)
        self.depths.append(self.depths[parent] + 1)
        self.levels.append(level)
        self.confidence.append(float(confidence))
        self.draft_probs.append(draft_probs)
        self.children.append([])
        self.children[parent].append(index)
        return index

    def add_chain(self, parent: int, draft: DraftResult, level: str | None) -> list[int]:
        """Add a drafted chain below `parent`; returns the new node indices."""
        nodes = []
        for i, token in enumerate(draft.tokens):
            parent = self.add(
                parent,
                token,
                level,
                confidence=draft.confidence[i] if draft.confidence else 1.0,
                draft_probs=None if draft.draft_probs is None else draft.draft_probs[i],
            )
            nodes.append(parent)
        return nodes

    def build(self) -> TokenTree:
        return TokenTree(
            tokens=torch.tensor(self.tokens, dtype=torch.long),
            parents=tuple(self.parents),
            depths=torch.tensor(self.depths, dtype=torch.long),
            levels=tuple(self.levels),
            confidence=tuple(self.confidence),
            draft_probs=tuple(self.draft_probs),
            children=tuple(tuple(c) for c in self.children),
        )


def chain_tree(root_token: int, draft: DraftResult, level: str | None) -> TokenTree:
    """The tree of one drafted chain below the root."""
    builder = TreeBuilder(root_token)
    builder.add_chain(0, draft, level)
    return builder.build()


def ancestor_matrix(tree: TokenTree) -> torch.Tensor:
    """[N, N] bool: entry (i, j) is True when node j is node i or one of its ancestors."""
    n = tree.size
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for i, parent in enumerate(tree.parents):
        if parent >= 0:
            allowed[i] = allowed[parent]
        allowed[i, i] = True
    return allowed


def tree_attention_mask(
    tree: TokenTree, prefix_length: int, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Additive 4-D mask [1, 1, N, prefix_length + N]: 0 where a node may attend, dtype-min elsewhere.

    Additive float, not bool: eager attention adds the mask to the scores, so a bool mask would
    silently mask nothing there.
    """
    n = tree.size
    allowed = torch.ones(n, prefix_length + n, dtype=torch.bool)
    allowed[:, prefix_length:] = ancestor_matrix(tree)
    mask = torch.zeros(n, prefix_length + n, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.to(device)[None, None]


def sliding_tree_attention_mask(
    tree: TokenTree, past_length: int, window: int, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Additive 4-D mask [1, 1, N, K + N] for a sliding-window layer holding `past_length` tokens.

    A sliding cache layer (`core/kvcache.py`, as transformers' own) hands attention its last
    K = min(past_length, window - 1) cached tokens (positions past_length - K ... past_length - 1)
    followed by the N tree nodes. A node at position p = past_length + depth may see a key at
    position j when j is a cached token or one of its ancestors (or itself), and p - j < window.
    """
    n = tree.size
    cached = min(past_length, window - 1)
    query_pos = tree.depths + past_length  # [N]
    cached_pos = torch.arange(past_length - cached, past_length)
    allowed = torch.zeros(n, cached + n, dtype=torch.bool)
    allowed[:, :cached] = (query_pos[:, None] - cached_pos[None, :]) < window
    allowed[:, cached:] = ancestor_matrix(tree) & ((tree.depths[:, None] - tree.depths[None, :]) < window)
    mask = torch.zeros(n, cached + n, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.to(device)[None, None]


def tree_position_ids(tree: TokenTree, prefix_length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[1, N] int64 positions: prefix_length + depth."""
    return (tree.depths + prefix_length).to(device)[None]
