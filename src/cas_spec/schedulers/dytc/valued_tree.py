"""`ValuedTree`: a token tree under construction whose every node carries its *value*, the
probability that the target's committed path passes through it.

Notation: target = p, draft = q. A node's value is its parent's value times the probability r
that the target's next token there is the node's token, discounted by what its earlier siblings
already cover: the target takes one token at a node, so siblings are exclusive. With c the value
its earlier siblings hold, a new child gets value(parent) · r · (1 − c / value(parent)): the
probability that the target takes it given that it takes none of them, assuming the new
drafter's being right does not depend on theirs being wrong. Children therefore never hold more
than their parent (Σ children ≤ parent), and a branch is valued by what it adds given its
siblings. A step that verifies the tree commits 1 + Σ values tokens on average (the bonus
token included).

A token proposed again under the same parent joins the existing node (no duplicate siblings);
the node keeps its first value. Nodes are only ever added while drafting; `pruned` returns a
smaller tree for the final, greedy-only pruning (see `dytc.py` for why sampled trees are not
pruned).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from cas_spec.core.tree import TreeBuilder
from cas_spec.core.types import TokenTree


@dataclass(frozen=True)
class NodeInfo:
    """What the scheduler knows of a drafted node."""

    level: str
    sampled: bool  # drawn from a q (draft_probs given); never removed once drawn
    probe: bool = False  # drafted by a probe: never pruned


class ValuedTree:
    """A growing token tree with node values (see the module docstring); node 0 is the root."""

    def __init__(self, root_token: int):
        self.builder = TreeBuilder(root_token)
        self.value: list[float] = [1.0]
        self.covered: list[float] = [0.0]  # Σ values of each node's children
        self.info: list[NodeInfo | None] = [None]
        self.by_token: list[dict[int, int]] = [{}]
        self.expected = 0.0  # Σ values of the drafted nodes

    @property
    def size(self) -> int:
        return self.builder.size

    def depth(self, node: int) -> int:
        return self.builder.depths[node]

    def path(self, node: int) -> tuple[int, ...]:
        """Tokens below the root down to `node`."""
        return self.builder.path_tokens(node)

    def open_mass(self, node: int) -> float:
        """Value at `node` no child covers yet: what a new branch there can add at most."""
        return max(self.value[node] - self.covered[node], 0.0)

    def child_value(self, parent: int, probability: float) -> float:
        """Value a new child of `parent` would get if the target took it with `probability`."""
        value = self.value[parent]
        if value <= 0.0:
            return 0.0
        return value * min(max(probability, 0.0), 1.0) * max(1.0 - self.covered[parent] / value, 0.0)

    def uncovered(self, node: int, depth: int) -> list[float]:
        """For i = 1 … `depth`: the share of `node`'s value that no existing node i levels below it
        holds, 1 − Σ values at relative depth i / value(node); what a new chain's i-th token can
        add at most, if it is right when the tree's nodes are not."""
        value = self.value[node]
        out, level = [], [node]
        for _ in range(depth):
            level = [c for n in level for c in self.builder.children[n]]
            held = sum(self.value[c] for c in level)
            out.append(max(1.0 - held / value, 0.0) if value > 0 else 0.0)
        return out

    def existing_child(self, parent: int, token: int) -> int | None:
        return self.by_token[parent].get(token)

    @property
    def any_sampled(self) -> bool:
        return any(info is not None and info.sampled for info in self.info)

    def add(
        self,
        parent: int,
        token: int,
        probability: float,
        info: NodeInfo,
        confidence: float = 1.0,
        draft_probs: torch.Tensor | None = None,
    ) -> tuple[int, bool]:
        """Add `token` below `parent`, or find the earlier sibling that holds it; returns (node,
        whether new).

        A sampled token (drawn from `draft_probs` = q) that no earlier sibling holds was, given
        that, drawn from q without those siblings' tokens, renormalised: that is the law stored
        with it, and what the verifier's min(1, r/q) needs (a draw that hits an earlier sibling
        joins it and adds no candidate, which leaves the law at this node exact either way)."""
        siblings = self.by_token[parent]
        existing = siblings.get(token)
        if existing is not None:
            return existing, False
        if draft_probs is not None and siblings:
            draft_probs = without_tokens(draft_probs, list(siblings))
        value = self.child_value(parent, probability)
        node = self.builder.add(parent, token, info.level, confidence, draft_probs)
        self.value.append(value)
        self.covered.append(0.0)
        self.info.append(info)
        self.by_token.append({})
        self.by_token[parent][token] = node
        self.covered[parent] += value
        self.expected += value
        return node, True

    def chain_gains(
        self, parent: int, tokens: Sequence[int], probabilities: Sequence[float]
    ) -> list[tuple[int, float]]:
        """For each prefix length m of a chain below `parent`: (new nodes, added value) if its first
        m tokens were added, following nodes that already hold a token (they add nothing)."""
        out: list[tuple[int, float]] = []
        node: int | None = parent
        value = 0.0  # value of the last simulated new node, once off the existing tree
        new, added = 0, 0.0
        for token, probability in zip(tokens, probabilities, strict=True):
            existing = self.by_token[node].get(token) if node is not None else None
            if existing is not None:
                node = existing
            else:
                value = self.child_value(node, probability) if node is not None else value * probability
                node = None
                new += 1
                added += value
            out.append((new, added))
        return out

    def build(self) -> TokenTree:
        return self.builder.build()

    def pruned(self, worth_removing: Callable[[float, float, int], bool]) -> TokenTree:
        """The tree without the leaves whose removal pays, lowest value first: while
        `worth_removing(value of the leaf, Σ values now, nodes now)` holds for the lowest-valued
        removable leaf (not the root, not a probe's), remove it. Probe nodes stay, and so do their
        ancestors."""
        keep = [True] * self.size
        children = [len(c) for c in self.builder.children]
        parents = self.builder.parents
        size, expected = self.size, self.expected
        while size > 1:
            leaves = [
                i
                for i in range(1, self.size)
                if keep[i] and children[i] == 0 and not ((info := self.info[i]) is not None and info.probe)
            ]
            if not leaves:
                break
            worst = min(leaves, key=lambda i: (self.value[i], -i))
            if not worth_removing(self.value[worst], expected, size):
                break
            keep[worst] = False
            children[parents[worst]] -= 1
            size -= 1
            expected -= self.value[worst]
        if size == self.size:
            return self.build()
        kept = [i for i in range(self.size) if keep[i]]
        index = {old: new for new, old in enumerate(kept)}
        builder = TreeBuilder(self.builder.tokens[0])
        for old in kept[1:]:
            builder.add(
                index[parents[old]],
                self.builder.tokens[old],
                self.builder.levels[old],
                self.builder.confidence[old],
                self.builder.draft_probs[old],
            )
        return builder.build()


def expected_gains(tree: ValuedTree, node: int, alpha: float, count: int) -> list[tuple[int, float]]:
    """(new nodes, added value) for k = 1 … `count` new tokens drafted below `node` by a level of
    acceptance α, judged before drafting: its i-th token is the target's with probability α^i and
    adds value where the tree does not hold the target's path already (`ValuedTree.uncovered`)."""
    gains, added, reach = [], 0.0, tree.value[node]
    for k, free_share in enumerate(tree.uncovered(node, count), start=1):
        reach *= alpha
        added += reach * free_share
        gains.append((k, added))
    return gains


def without_tokens(q: torch.Tensor, tokens: list[int]) -> torch.Tensor:
    """q ([V]) conditioned on not drawing any of `tokens`."""
    q = q.clone()
    q[tokens] = 0.0
    return q / q.sum()


__all__ = ["NodeInfo", "ValuedTree", "expected_gains", "without_tokens"]
