"""The decoding loop: prefill, then plan → draft → verify → commit until a stop condition.

The engine owns the loop and the KV cache; the scheduler owns policy (it drafts through the
levels and returns a token tree); the verifier owns the acceptance rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from cas_spec.core.cost_model import UNCALIBRATED, CostModel
from cas_spec.core.interfaces import Scheduler, Verifier
from cas_spec.core.levels import Level
from cas_spec.core.sampling import make_generator
from cas_spec.core.state import DecodingState
from cas_spec.core.stats import StatsRecorder
from cas_spec.core.target import Target
from cas_spec.core.types import GenerationStats, SamplingParams, StepTimings, TokenTree, Verdict

TokenCallback = Callable[[list[int]], None]
LogitsCallback = Callable[[torch.Tensor], None]  # [n, V]: the target logits of a step's n committed tokens
# (tokens so far, a step's new tokens) -> how many of the new tokens to keep when generation ends
# inside them (at least 1), or None to go on: stopping criteria beyond EOS, checked token by token.
StopCheck = Callable[[Sequence[int], Sequence[int]], int | None]


def generate_tokens(
    target: Target,
    scheduler: Scheduler,
    verifier: Verifier,
    levels: Sequence[Level],
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    sampling: SamplingParams,
    eos_token_ids: Sequence[int] = (),
    on_tokens: TokenCallback | None = None,
    on_logits: LogitsCallback | None = None,
    costs: CostModel = UNCALIBRATED,
    stop: StopCheck | None = None,
) -> tuple[list[int], GenerationStats]:
    """Generate up to `max_new_tokens` tokens after `prompt_ids`; returns (new tokens, statistics).

    Callers validate inputs (`Pipeline.generate` does); here `prompt_ids` is non-empty and fits
    the context. After each step `on_tokens` receives the committed tokens and `on_logits` the
    target logits each of them was verified or sampled against (one row per token). `costs` is the
    read-only cost view the scheduler and strategies see on the state. `stop` ends generation
    inside a step's tokens as plain decoding would have ended it after one of them.
    """
    context_length = target.adapter.context_length
    eos = set(eos_token_ids)
    recorder = StatsRecorder(levels)
    start = time.perf_counter()
    target.prefill(list(prompt_ids[:-1]))
    target.synchronize()
    prefill_seconds = time.perf_counter() - start

    state = DecodingState(
        tokens=list(prompt_ids),
        prompt_length=len(prompt_ids),
        sampling=sampling,
        generator=make_generator(sampling, target.device),
        costs=costs,
        context_length=target.length,
    )
    for level in levels:
        level.reset_counters()
        level.strategy.start(state)
    scheduler.start(state)

    stop_reason = "max_new_tokens"
    decode_start = time.perf_counter()
    while True:
        if state.new_tokens >= max_new_tokens:
            break
        if len(state.tokens) >= context_length:
            stop_reason = "context_limit"
            break
        state.max_depth = min(max_new_tokens - state.new_tokens, context_length - len(state.tokens)) - 1

        step_start = time.perf_counter()
        try:
            tree = scheduler.build_tree(state)
        except BaseException:
            target.restore()  # a drafter that raised midway leaves no trace in the cache
            raise
        drafted_at = time.perf_counter()
        _check_tree(tree, state, scheduler)
        target_logits = target.forward_tree(tree)
        target.synchronize()  # time the verification forward, not its launch
        verified_at = time.perf_counter()
        verdict = verifier.verify(tree, target_logits, sampling, state.generator)
        target.commit(tree, verdict.accepted_nodes)
        state.context_length = target.length

        new = list(verdict.new_tokens)
        hit_eos = next((i for i, t in enumerate(new) if t in eos), None)
        if hit_eos is not None:
            new = new[: hit_eos + 1]
        kept = stop(state.tokens, new) if stop is not None else None
        if kept is not None and hit_eos is not None and kept >= len(new):
            kept = None  # the same token ends it: EOS says why
        if kept is not None:
            new, hit_eos = new[: max(kept, 1)], None
        state.tokens.extend(new)
        state.step += 1
        timings = StepTimings(
            draft=drafted_at - step_start, verify=verified_at - drafted_at, total=time.perf_counter() - step_start
        )
        recorder.record_step(tree, verdict, timings, committed=len(new))
        scheduler.observe(tree, verdict, timings)
        for level in levels:  # online adaptation, outside the step's timings
            level.observe(state)
        if on_tokens is not None:
            on_tokens(new)
        if on_logits is not None:
            on_logits(_committed_logits(target_logits, verdict, len(new)))
        if hit_eos is not None:
            stop_reason = "eos"
            break
        if kept is not None:
            stop_reason = "stopping_criteria"
            break

    new_tokens = state.tokens[state.prompt_length :]
    stats = recorder.finish(
        prompt_tokens=len(prompt_ids),
        new_tokens=len(new_tokens),
        prefill_seconds=prefill_seconds,
        decode_seconds=time.perf_counter() - decode_start,
        stop_reason=stop_reason,
    )
    return new_tokens, stats


def _committed_logits(target_logits: torch.Tensor, verdict: Verdict, count: int) -> torch.Tensor:
    """[count, V]: the rows of the target forward that chose the committed tokens.

    Row i of the forward is the target's distribution after tree node i, so the root's row
    chose the first accepted token, each accepted node's row the next one, and the last row on
    the path the bonus token.
    """
    rows = (0, *verdict.accepted_nodes)[:count]
    return target_logits[torch.tensor(rows, dtype=torch.long, device=target_logits.device)]


def _check_tree(tree: TokenTree, state: DecodingState, scheduler: Scheduler) -> None:
    if int(tree.tokens[0]) != state.root_token:
        raise RuntimeError(f"scheduler '{scheduler.name}' built a tree whose root is not the newest token")
    depth = int(tree.depths.max()) if tree.size > 1 else 0
    if depth > state.max_depth:
        raise RuntimeError(
            f"scheduler '{scheduler.name}' built a tree of depth {depth}; this step allows {state.max_depth}"
        )


__all__ = ["LogitsCallback", "StopCheck", "TokenCallback", "generate_tokens"]
