"""`NeverSlowerGate`: wraps any scheduler so that speculation never runs slower than plain decoding.

Enabled per pipeline with `scheduler: {gate: true}` (on in the shipped presets). It measures,
in wall-clock time, the tokens per second of the wrapped scheduler's steps and of plain steps
(one target forward over the root alone; estimated from the verification timings and the cost
table until plain steps have run). When speculation falls more than `margin` below plain
decoding over `min_steps` steps (`probe_steps` for a probe), the next `hold` steps decode plainly without
calling the wrapped scheduler; then speculation is probed again, and each failed probe doubles
the hold (up to `max_hold`), so the probes' share of a long generation shrinks. The wrapped scheduler's own cost model already trims drafts that do not pay; the
gate is the safety net for what the model cannot see (a drafter that got slower, a machine
that got busier).
"""

from __future__ import annotations

from cas_spec.core.interfaces import Scheduler
from cas_spec.core.state import DecodingState
from cas_spec.core.tree import TreeBuilder
from cas_spec.core.types import StepTimings, TokenTree, Verdict


class NeverSlowerGate(Scheduler):
    name = "gate"

    def __init__(self, inner: Scheduler, margin: float = 0.03, min_steps: int = 4, probe_steps: int = 2,
                 hold: int = 16, max_hold: int = 512, decay: float = 0.8):
        super().__init__(inner.options, inner.levels)
        self.inner = inner
        self.margin, self.min_steps, self.probe_steps, self.decay = margin, min_steps, probe_steps, decay
        self.base_hold, self.max_hold = hold, max_hold

    def start(self, state: DecodingState) -> None:
        self.inner.start(state)
        self.speculative_rate: float | None = None
        self.plain_rate: float | None = None
        self.speculative_steps = 0
        self.judge_after = self.min_steps  # speculative steps measured before judging
        self.hold = self.base_hold
        self.plain_until = 0
        self.plain_steps = 0  # steps the gate decoded plainly (for statistics and tests)
        self._plain = False
        self._state = state

    def build_tree(self, state: DecodingState) -> TokenTree:
        self._plain = state.step < self.plain_until
        if self._plain:
            self.plain_steps += 1
            return TreeBuilder(state.root_token).build()
        return self.inner.build_tree(state)

    def observe(self, tree: TokenTree, verdict: Verdict, timings: StepTimings) -> None:
        if timings.total <= 0:
            return
        rate = len(verdict.new_tokens) / timings.total
        if self._plain:
            self.plain_rate = self._ema(self.plain_rate, rate)
            return
        self.inner.observe(tree, verdict, timings)
        self.speculative_rate = self._ema(self.speculative_rate, rate)
        self.speculative_steps += 1
        if self.plain_rate is None:  # no plain step yet: one forward over the root, predicted
            costs = self._state.target.costs
            relative = costs.cost(tree.size, self._state.target.length) if costs is not None else float(tree.size)
            self.plain_rate = relative / timings.verify if timings.verify > 0 else None
        if self.plain_rate is None or self.speculative_steps < self.judge_after:
            return
        if self.speculative_rate < (1 - self.margin) * self.plain_rate:
            self.plain_until = self._state.step + self.hold
            self.hold = min(2 * self.hold, self.max_hold)
            self.speculative_rate, self.speculative_steps = None, 0
            self.judge_after = self.probe_steps  # a probe is judged sooner than the first run
        elif self.speculative_steps >= 2 * self.min_steps:
            self.hold, self.judge_after = self.base_hold, self.min_steps

    def _ema(self, old: float | None, new: float) -> float:
        return new if old is None else self.decay * old + (1 - self.decay) * new

    def __getattr__(self, name):  # the wrapped scheduler's statistics (e.g. scheduling_seconds)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
