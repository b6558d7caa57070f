"""Deliberately wrong plugins, one mistake each, for the negative controls of the contracts.

Each is a small change to a correct built-in, so the contract that should notice is the only
thing standing between the mistake and a wrong output.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from pydantic import BaseModel
from torch import nn

from cas_spec.plugin import EMPTY_DRAFT, DraftResult, DraftStrategy, chain_tree, hookimpl
from cas_spec.schedulers.chain import ChainScheduler
from cas_spec.strategies.early_exit import EarlyExit
from cas_spec.strategies.prompt_lookup import PromptLookup


class ArgmaxLiar(EarlyExit):
    """Drafts the argmax of q but reports q as the law it sampled from."""

    name = "argmax_liar"

    def draft(self, state, prefix, max_tokens):
        result = super().draft(state, prefix, max_tokens)
        if result.draft_probs is None:
            return result
        return replace(result, tokens=tuple(int(t) for t in result.draft_probs.argmax(-1)))


class FlatteningLiar(EarlyExit):
    """Samples from q but reports a flatter q (q^½, renormalised)."""

    name = "flattening_liar"

    def draft(self, state, prefix, max_tokens):
        result = super().draft(state, prefix, max_tokens)
        if result.draft_probs is None:
            return result
        q = result.draft_probs.sqrt()
        return replace(result, draft_probs=q / q.sum(-1, keepdim=True))


class WeightVandal(EarlyExit):
    """Doubles the LM head while drafting and halves it afterwards, but not in `finally`: a draft
    that raises leaves the target's head doubled (greedy output is unaffected otherwise)."""

    name = "weight_vandal"

    def draft(self, state, prefix, max_tokens):
        weight = self.target.adapter.lm_head.weight
        with torch.no_grad():
            weight.mul_(2.0)
        result = super().draft(state, prefix, max_tokens)
        with torch.no_grad():
            weight.div_(2.0)
        return result


class HookLeaver(PromptLookup):
    """Leaves a forward hook (a no-op) on the target's final norm: outputs stay exact, the model
    does not stay as it was."""

    name = "hook_leaver"
    runs_target = True

    def setup(self, context):
        super().setup(context)
        self.target = context.target

    def draft(self, state, prefix, max_tokens):
        self.target.adapter.final_norm.register_forward_hook(lambda module, args, output: None)
        return super().draft(state, prefix, max_tokens)


def scramble_committed_cache(target) -> None:
    """Negate and scale every committed value in the KV cache, in place."""
    with torch.inference_mode():
        for layer in target.cache.layers:
            layer.values[..., : target.length, :].mul_(-3.0)


class CacheCorrupter(PromptLookup):
    """Writes into the committed KV cache (at its first draft of a generation), which the
    engine's rollback cannot undo."""

    name = "cache_corrupter"
    runs_target = True

    def setup(self, context):
        super().setup(context)
        self.target = context.target

    def draft(self, state, prefix, max_tokens):
        if state.step == 0:
            scramble_committed_cache(self.target)
        return super().draft(state, prefix, max_tokens)


class FalselyDeterministic(EarlyExit):
    """Declares `deterministic = True` (never samples) but samples and reports q."""

    name = "falsely_deterministic"
    deterministic = True


class NeverDrafts(PromptLookup):
    """Proposes nothing, so an identity check on it would prove nothing."""

    name = "never_drafts"

    def draft(self, state, prefix, max_tokens):
        return EMPTY_DRAFT


class OverDrafter(PromptLookup):
    """Ignores `max_tokens`."""

    name = "over_drafter"

    def draft(self, state, prefix, max_tokens):
        return DraftResult(tokens=tuple(state.tokens[-6:]))


class LaxOptions(BaseModel):
    num_tokens: int = 4  # no extra="forbid": a misspelt option would be silently ignored


class LaxStrategy(DraftStrategy):
    """Options that do not forbid unknown keys."""

    name = "lax_strategy"
    Options = LaxOptions

    def draft(self, state, prefix, max_tokens):
        return EMPTY_DRAFT


class PickyChain(ChainScheduler):
    """Drafts twice and keeps the draft whose first token the drafter was surer of: each kept
    token is labelled with the q it was drawn from, but the selection biases it."""

    name = "picky_chain"

    def build_tree(self, state):
        limit = min(self.options.k, state.max_depth)
        drafts = [self.level.draft(state, (), limit) for _ in range(2)]
        best = max(drafts, key=lambda d: d.confidence[0] if len(d) else -1.0)
        return chain_tree(state.root_token, best, self.level.name)


class _Wrapped(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


class StickyChain(ChainScheduler):
    """Wraps the LM head while it builds a tree and unwraps it afterwards, but not in `finally`."""

    name = "sticky_chain"

    def build_tree(self, state):
        model = self.level.strategy.target.model  # its level drafts with the target
        head = model.lm_head
        model.lm_head = _Wrapped(head)
        tree = super().build_tree(state)
        model.lm_head = head
        return tree


class CorruptingChain(ChainScheduler):
    """Writes into the committed KV cache while it builds the second tree."""

    name = "corrupting_chain"

    def build_tree(self, state):
        if state.step == 1:
            scramble_committed_cache(self.level.strategy.target)
        return super().build_tree(state)


class BrokenPlugins:
    @hookimpl
    def register_strategies(self, registry):
        for cls in (
            ArgmaxLiar,
            FlatteningLiar,
            WeightVandal,
            HookLeaver,
            CacheCorrupter,
            NeverDrafts,
            OverDrafter,
            LaxStrategy,
            FalselyDeterministic,
        ):
            registry.add(cls)

    @hookimpl
    def register_schedulers(self, registry):
        for cls in (PickyChain, StickyChain, CorruptingChain):
            registry.add(cls)


PLUGIN = BrokenPlugins()
