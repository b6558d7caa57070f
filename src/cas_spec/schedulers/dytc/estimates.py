"""`DytcEstimates`: what DyTC knows about its levels, learned online and kept between generations.

Per level: α̂, its acceptance (`WindowedAcceptance`: an EMA over a window of steps, starting from
the agreement with the target that calibration measured, else `prior_alpha`); a confidence
calibration (the probability that the target takes a drafted token, given the drafter's own
confidence, `ConfidenceCalibration`); its costs (`LatencyModel`: calibrated ahead, refined
online); its probe interval and the step it last drafted. And R, the recent rate (tokens
committed per one-token forward of cost, an EMA over steps in which a step counts for at most
`BURST_CLIP` · R, so a burst of copied text raises the bar for the steps after it only a little).

Everything learns from the step's `Proposal`s, scored against the committed text
(`proposals.py`): what was left out of the tree teaches as much as what was verified.
"""

from __future__ import annotations

from collections.abc import Sequence

from cas_spec.core.cost_model import CostModel, DraftCost
from cas_spec.core.levels import Level
from cas_spec.core.types import StepTimings
from cas_spec.schedulers.dytc.options import DytcOptions
from cas_spec.schedulers.dytc.proposals import Proposal, score
from cas_spec.schedulers.estimators.acceptance import ConfidenceCalibration, WindowedAcceptance
from cas_spec.schedulers.estimators.latency import LatencyModel

PROBE_SURPRISE = 0.1  # a probe that moves α̂ by more than this is followed up at the shortest interval
RATE_DECAY = 0.9  # EMA of R, the recent rate, per step
BURST_CLIP = 2.0  # a step counts for at most this many times R


class DytcEstimates:
    def __init__(self, options: DytcOptions, levels: Sequence[Level], costs: CostModel):
        self.options = options
        self.latency = LatencyModel(costs, levels)
        self.alpha = {
            lv.name: WindowedAcceptance(
                prior=prior(costs.draft(lv.name), options.prior_alpha),
                decay=options.ema_decay,
                window=options.window,
                warmup=options.warmup,
            )
            for lv in levels
        }
        self.calibration = {lv.name: ConfidenceCalibration() for lv in levels}
        self.probe_every = {lv.name: options.probe_interval for lv in levels}
        self.last_used = {lv.name: 0 for lv in levels}
        self.rate = 1.0  # R: plain decoding's rate to start

    def restart(self) -> None:
        """A new generation: the levels' counters were reset. A level never measured is probed
        at once, the others after their interval. Each α̂ starts where it was, judged from then on
        on the new text's window (`WindowedAcceptance.restart`)."""
        self.latency.restart()
        for estimate in self.alpha.values():
            estimate.restart()
        self.last_used = {name: 0 if self.latency.known(name) else -self.probe_every[name] for name in self.probe_every}

    # -- what the scheduler asks -------------------------------------------------------------
    def probability(self, level: str, confidence: float, alternative: bool = False) -> float:
        """Probability that the target takes a token `level` drafted with `confidence`."""
        calibration = self.calibration[level]
        return calibration.probability(calibration.bucket(confidence, alternative), self.alpha[level].alpha)

    def is_free(self, name: str, context: int) -> bool:
        """Whether a full draft of `name` costs less than `free_cost` (a lookup), as known."""
        o = self.options
        return self.latency.known(name) and self.latency.draft(name, 1, o.max_draft, context) < o.free_cost

    def bottom_level(self, context: int) -> str | None:
        """The bottom level of the A* heuristic: the cheapest known level per drafted token."""
        known = [name for name in self.alpha if self.latency.known(name)]
        return min(known, key=lambda n: self.latency.draft(n, 1, 1, context)) if known else None

    def due_probe(self, step: int) -> str | None:
        """The level unused the longest among those unused for their probe interval, if any."""
        due = [name for name in self.alpha if step - self.last_used[name] >= self.probe_every[name]]
        return min(due, key=lambda n: self.last_used[n]) if due else None

    def chosen(self, name: str) -> None:
        """`name` was chosen on its value: probe it at the shortest interval when it falls out of use."""
        self.probe_every[name] = self.options.probe_interval

    # -- learning ---------------------------------------------------------------------------
    def learn(
        self,
        proposals: Sequence[Proposal],
        committed: Sequence[int],
        tree_size: int,
        context: int,
        spent: float,
        timings: StepTimings,
    ) -> None:
        """Learn from a verified step: its timings, its rate, and every proposal scored against
        the `committed` tokens."""
        self.latency.observe(tree_size, context, timings)
        ratio = len(committed) / (spent + self.latency.verify(tree_size, context))
        self.rate = RATE_DECAY * self.rate + (1 - RATE_DECAY) * min(ratio, BURST_CLIP * self.rate)
        scores = score(proposals, committed)
        for level, bucket, hit in scores.buckets:
            self.calibration[level].update(bucket, hit)
        o = self.options
        for name, estimate in self.alpha.items():
            before = estimate.alpha
            estimate.update(scores.eligible.get(name, 0), scores.hits.get(name, 0))
            if name in scores.probed:  # probe again soon if it moved the estimate, else back off
                moved = abs(estimate.alpha - before) > PROBE_SURPRISE
                self.probe_every[name] = (
                    o.probe_interval if moved else min(2 * self.probe_every[name], o.max_probe_interval)
                )


def prior(calibrated: DraftCost | None, default: float) -> float:
    """A level's acceptance before it has drafted: its calibrated agreement with the target
    (`costs/draft_costs.py`, model levels), kept inside (0.05, 0.95), else `default`."""
    agreement = calibrated.agreement if calibrated is not None else None
    return default if agreement is None else min(max(agreement, 0.05), 0.95)


__all__ = ["BURST_CLIP", "PROBE_SURPRISE", "DytcEstimates", "prior"]
