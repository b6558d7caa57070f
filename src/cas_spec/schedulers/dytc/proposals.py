"""What a step's drafters proposed, scored against the text the step committed.

A scheduler that leaves drafted tokens out of its trees (trimmed, pruned, or never inserted) must
still learn from them, or its estimates learn only from what it already liked and grow
optimistic. So every draft call's result is kept as a `Proposal` and, once the step is verified,
scored against the committed tokens (the accepted path and the bonus token): a proposed token is
*eligible* when the committed text passes through its parent, and a *hit* when it is the
committed token there; the tokens after a miss are not eligible (their parent was not
committed), and those past the committed text are censored. Under greedy decoding a hit is
exactly "the target would have accepted it"; under sampling, for a verified node it is the same
event as its acceptance, and for a point mass left out it has the same probability.

A proposal asked for `asked` tokens that stopped early (its drafter's own confidence rule) yielded
nothing at the position where it stopped: when all its tokens hit, that position counts as an
eligible miss, so that the rate is what *asking* the level for a token yields.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Proposal:
    """One draft call's result, kept for learning whether or not its tokens made it into the tree."""

    level: str
    parent_path: tuple[int, ...]  # tokens below the root down to the node it continues
    tokens: tuple[int, ...]
    buckets: tuple[int, ...]  # calibration bucket of each token's confidence
    alternatives: tuple[tuple[tuple[int, int], ...], ...] = ()  # per position: (runner-up, bucket)
    probe: bool = False
    asked: int | None = None  # tokens asked for, when the level was valued before drafting


@dataclass
class Scores:
    """What one step's proposals came to, per level."""

    eligible: dict[str, int] = field(default_factory=dict)  # chain tokens scored (and stopped positions)
    hits: dict[str, int] = field(default_factory=dict)
    buckets: list[tuple[str, int, bool]] = field(default_factory=list)  # (level, bucket, hit), runners-up too
    probed: set[str] = field(default_factory=set)  # levels whose probe was scored


def score(proposals: Iterable[Proposal], committed: Sequence[int]) -> Scores:
    """Score `proposals` against the `committed` tokens of their step (see the module docstring)."""
    scores = Scores()
    committed = tuple(committed)
    for proposal in proposals:
        depth = len(proposal.parent_path)
        if depth >= len(committed) or committed[:depth] != proposal.parent_path:
            continue  # the committed text does not pass through its parent: never tested
        level = proposal.level
        eligible, hits = 0, 0
        for i, token in enumerate(proposal.tokens[: len(committed) - depth]):
            truth = committed[depth + i]
            hit = token == truth
            scores.buckets.append((level, proposal.buckets[i], hit))
            eligible, hits = eligible + 1, hits + hit
            for alternative, bucket in proposal.alternatives[i] if proposal.alternatives else ():
                scores.buckets.append((level, bucket, alternative == truth))
            if proposal.probe and i == 0:
                scores.probed.add(level)
            if not hit:
                break
        else:
            stopped = depth + len(proposal.tokens)
            if proposal.asked is not None and len(proposal.tokens) < proposal.asked and stopped < len(committed):
                eligible += 1
        scores.eligible[level] = scores.eligible.get(level, 0) + eligible
        scores.hits[level] = scores.hits.get(level, 0) + hits
    return scores


__all__ = ["Proposal", "Scores", "score"]
