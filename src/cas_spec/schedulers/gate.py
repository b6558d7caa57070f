"""`NeverSlowerGate`: wraps any scheduler so that speculation never runs slower than plain decoding.

Enabled per pipeline with `scheduler: {gate: true}` (on in the `cas-spec` and `cs-drafting`
presets). It measures, in wall-clock time, each speculative step against what plain decoding
would have taken for the same tokens: tokens × the seconds of a plain step, re-estimated every
step as one one-token target forward (an EMA over every step: a plain step's verification time,
or a speculative step's divided by the cost table's cost of its tree size, so it follows the
context as it grows and the machine's load) plus the engine's own time per plain step (an EMA
over plain steps). The excess time is summed as a one-sided CUSUM, deficit ← max(0, deficit +
seconds − (1 + `margin`) · tokens / plain rate), so a step that commits a run of copied tokens
pays off the misses before it: drafters are bursty, and a mean over a few steps misreads them.
When the deficit exceeds `patience` steps, the next `hold` steps decode plainly without calling
the wrapped scheduler; then speculation is probed again, on probation (its deficit starts one
step short of the trigger, so a drafter that keeps losing is caught within one step's worth of
loss, and one that pays clears it), and each failed probe doubles
the hold (up to `max_hold`), so the probes' share of a long generation shrinks; `min_steps`
speculative steps without a trigger restore the first hold. A step, as the unit of patience, is
the larger of a plain step and a speculative one (an EMA of their wall-clock time): a scheduler
whose steps draft several tokens with a model costs several plain steps a step, and one miss of
such a step loses more than one plain step, so patience counted in plain steps would switch off
a drafter that pays overall after two misses in a row.

The wrapped scheduler's own cost model already trims drafts that do not pay; the gate is the
safety net for what the model cannot see (a drafter that got slower, a machine that got busier).
"""

from __future__ import annotations

from typing import Any

from cas_spec.core.interfaces import Scheduler
from cas_spec.core.state import DecodingState
from cas_spec.core.tree import TreeBuilder
from cas_spec.core.types import StepTimings, TokenTree, Verdict


class NeverSlowerGate(Scheduler):
    name = "gate"

    def __init__(
        self,
        inner: Scheduler,
        margin: float = 0.03,
        patience: float = 3.0,
        min_steps: int = 8,
        hold: int = 16,
        max_hold: int = 512,
        decay: float = 0.8,
    ):
        super().__init__(inner.options, inner.levels)
        self.inner = inner
        self.margin, self.patience, self.min_steps, self.decay = margin, patience, min_steps, decay
        self.base_hold, self.max_hold = hold, max_hold
        self.plain_until = 0  # the step the current hold ends at
        self.saved = 0.0  # seconds speculation saved against plain decoding in this generation

    def start(self, state: DecodingState) -> None:
        """Before a generation. What the gate measured (the forward and overhead estimates) and
        the hold length carry over from the pipeline's previous generation, and so does the rest
        of a hold where speculation lost over the whole of that generation (a drafter that does
        not pay is not tried afresh for every prompt, where short generations would pay for it
        most). Where it saved time overall and only its end was held, the new prompt (new text,
        where the drafter may pay again) starts speculating, on probation."""
        self.inner.start(state)
        previous = getattr(self, "_state", None)
        probation = False
        if previous is not None and previous.costs is state.costs and self.plain_until > previous.step:
            # It ended holding: the rest of the hold carries over where speculation lost over that
            # whole generation; either way speculation comes back on probation.
            self.plain_until = self.plain_until - previous.step if self.saved < 0 else 0
            probation = True
        else:
            self.plain_until = 0
        if previous is None or previous.costs is not state.costs:
            self.forward_seconds: float | None = None  # EMA of a one-token target forward
            self.overhead_seconds: float | None = None  # EMA of a plain step's time outside its forward
            self.speculative_seconds: float | None = None  # EMA of a speculative step's time
            self.hold = self.base_hold
        self.saved = 0.0
        self.deficit = self._probation() if probation else 0.0  # seconds lost against plain decoding (CUSUM)
        self.clean_steps = 0  # speculative steps since the last trigger
        self.plain_steps = 0  # steps the gate decoded plainly (for statistics and tests)
        self.triggers = 0  # times the gate switched speculation off
        self._plain = False
        self._state = state
        self._context = state.context_length

    def build_tree(self, state: DecodingState) -> TokenTree:
        self._plain = state.step < self.plain_until
        self._context = state.context_length
        if self._plain:
            self.plain_steps += 1
            return TreeBuilder(state.root_token).build()
        return self.inner.build_tree(state)

    @property
    def plain_step_seconds(self) -> float | None:
        """What a plain decoding step takes now, as measured (None before any measurement)."""
        if self.forward_seconds is None:
            return None
        overhead = self.overhead_seconds if self.overhead_seconds is not None else 0.0
        return self.forward_seconds + overhead

    @property
    def unit_seconds(self) -> float:
        """The unit of `patience`: the larger of a plain step and a speculative one, as measured."""
        return max(self.plain_step_seconds or 0.0, self.speculative_seconds or 0.0)

    def _probation(self) -> float:
        """The deficit a probe starts with: one step's worth of further loss ends it."""
        return max(self.patience - 1.0, 0.0) * self.unit_seconds

    def _ema(self, average: float | None, value: float) -> float:
        """The gate's moving averages: `value` itself at the first measurement, then an EMA."""
        return value if average is None else self.decay * average + (1 - self.decay) * value

    def _measure(self, tree: TokenTree, timings: StepTimings) -> None:
        if timings.verify <= 0:
            return
        forward = timings.verify / self._state.costs.verify(tree.size, self._context)
        self.forward_seconds = self._ema(self.forward_seconds, forward)
        if self._plain:
            self.overhead_seconds = self._ema(self.overhead_seconds, max(timings.total - timings.verify, 0.0))

    def observe(self, tree: TokenTree, verdict: Verdict, timings: StepTimings) -> None:
        if timings.total <= 0:
            return
        self._measure(tree, timings)
        if self._plain:
            return
        self.inner.observe(tree, verdict, timings)
        self.speculative_seconds = self._ema(self.speculative_seconds, timings.total)
        plain_step = self.plain_step_seconds
        if plain_step is None:
            return
        tokens = len(verdict.new_tokens)
        self.deficit = max(0.0, self.deficit + timings.total - (1 + self.margin) * tokens * plain_step)
        self.saved += tokens * plain_step - timings.total
        self.clean_steps += 1
        if self.deficit > self.patience * self.unit_seconds:
            self.plain_until = self._state.step + self.hold
            self.hold = min(2 * self.hold, self.max_hold)
            self.deficit, self.clean_steps = self._probation(), 0
            self.triggers += 1
        elif self.clean_steps >= self.min_steps:
            self.hold = self.base_hold

    def __getattr__(self, name: str) -> Any:  # the wrapped scheduler's state (e.g. a dytc's `alpha`)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)
