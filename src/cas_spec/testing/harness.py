"""What the contracts use to drive a pipeline and to look inside it, usable on its own.

- `plugin_set`: the plugins a contract runs with: the built-ins, a plugin object handed in, and,
  when the plugin under test is not among those, the installed entry points of group `cas_spec`
  (which `cas_spec.core.plugins.get_plugins` skips under pytest unless asked).
- `build_pipeline`: `cas_spec.load_pipeline` for a dict, a model and that plugin set.
- `Recorder`: every verified step (tree, target logits, verdict) of a pipeline's generations.
- `prepared_state`: a prefilled `DecodingState`, to call a strategy's `draft` by hand.
- `Tripwire`: fault injection: a chosen decoding step fails midway through a draft call.
- `ModelSnapshot`: parameters, buffers, module tree, hooks, patched methods, config and torch
  grad mode of a model, to prove that nothing of it changed.
- `cache_problems`: how a target's KV cache differs from a plain forward over the committed tokens.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch

from cas_spec import pipeline as _pipeline
from cas_spec.core.config import load_config
from cas_spec.core.plugins import ENTRY_POINT_GROUP, Plugins, build_plugins
from cas_spec.core.sampling import make_generator
from cas_spec.pipeline import Pipeline
from cas_spec.plugin import DecodingState, SamplingParams, TokenTree, Verdict, Verifier
from cas_spec.testing.models import IdTokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

_PLUGIN_SETS: list[tuple[tuple, bool, Plugins]] = []  # (extra, with entry points, plugins), built once each


def _cached(extra: tuple, entry_points: bool) -> Plugins:
    for objects, with_eps, plugins in _PLUGIN_SETS:
        if with_eps == entry_points and len(objects) == len(extra) and all(a is b for a, b in zip(objects, extra)):
            return plugins
    points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if entry_points else ()
    plugins = build_plugins(entry_points=points, extra=extra)
    _PLUGIN_SETS.append((extra, entry_points, plugins))
    return plugins


def plugin_set(plugin_name: str, kind: str, extra: Iterable[object] = ()) -> Plugins:
    """Built-ins plus `extra`; installed entry points too when `plugin_name` is not among them
    (`CAS_SPEC_PLUGINS` still limits which load)."""
    extra = tuple(extra)
    plugins = _cached(extra, entry_points=False)
    return plugins if plugin_name in plugins.registry(kind) else _cached(extra, entry_points=True)


def build_pipeline(
    config: Mapping[str, Any], model: torch.nn.Module, plugins: Plugins, tokenizer: Any = None
) -> _pipeline.Pipeline:
    """A `Pipeline` of `config` (a dict as in YAML) on `model`, with `plugins`."""
    return _pipeline.build_pipeline(
        load_config(dict(config), plugins=plugins), model, tokenizer or IdTokenizer(), plugins=plugins
    )


# -- cost models -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SlopedCosts:
    """A verification cost table (a `CostTable` stand-in): a forward over n tokens costs
    1 + slope · (n − 1) one-token forwards, at any context."""

    slope: float

    def cost(self, n: int, context: int = 0) -> float:
        return 1.0 + self.slope * (n - 1)


@dataclass(frozen=True)
class PriorCost:
    """A calibrated draft cost (a `LevelDraftCost` stand-in): per call + per token, in forwards."""

    per_call: float
    per_token: float
    agreement: float | None = None

    def cost(self, calls: int, tokens: int, context: int) -> float:
        return calls * self.per_call + tokens * self.per_token


# -- observing steps -------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One verified step: the tree, the target's [N, V] logits over it, the verdict."""

    tree: TokenTree
    target_logits: torch.Tensor
    verdict: Verdict


class StopGeneration(BaseException):
    """Raised by a `Recorder` once it has recorded `stop_after` steps (ends a generation early)."""


class _RecordingVerifier:
    def __init__(self, inner: Verifier, recorder: Recorder):
        self.inner, self.recorder, self.name = inner, recorder, inner.name

    def verify(
        self, tree: TokenTree, target_logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator | None
    ) -> Verdict:
        verdict = self.inner.verify(tree, target_logits, sampling, generator)
        steps = self.recorder.steps
        steps.append(Step(tree, target_logits.detach().clone(), verdict))
        if self.recorder.stop_after is not None and len(steps) >= self.recorder.stop_after:
            raise StopGeneration
        return verdict


class Recorder:
    """Records every verified step of `pipe` (wraps the verifier it chooses); `clear()` between
    runs. With `stop_after`, the generation stops with `StopGeneration` after that many steps."""

    def __init__(self, pipe: Pipeline, stop_after: int | None = None):
        self.steps: list[Step] = []
        self.stop_after = stop_after
        choose = pipe.verifier_for
        vars(pipe)["verifier_for"] = lambda sampling: _RecordingVerifier(choose(sampling), self)  # shadows the method

    def clear(self) -> None:
        self.steps.clear()

    def first_step(self, pipe: Pipeline, prompt: Sequence[int], max_new_tokens: int, seed: int | None) -> Step:
        """The first verified step of a generation of `pipe` (this recorder's), which stops there:
        what the law of the whole generation given its first tree needs (`exact.first_step_law`)."""
        self.clear()
        stop, self.stop_after = self.stop_after, 1
        try:
            pipe.generate(list(prompt), max_new_tokens=max_new_tokens, seed=seed)
        except StopGeneration:
            pass
        finally:
            self.stop_after = stop
        return self.steps[0]

    def committed(self) -> list[int]:
        """Tokens the recorded steps committed, in order."""
        return [t for step in self.steps for t in step.verdict.new_tokens]


def prepared_state(
    pipe: Pipeline, prompt: Sequence[int], sampling: SamplingParams, max_depth: int = 8
) -> DecodingState:
    """The state a scheduler sees at the first step after `prompt`: the target prefilled, every
    level's `start` called. Draft with `pipe.levels[i].strategy.draft(state, prefix, k)`."""
    pipe.target.prefill(list(prompt[:-1]))
    state = DecodingState(
        tokens=list(prompt),
        prompt_length=len(prompt),
        sampling=sampling,
        generator=make_generator(sampling, pipe.target.device),
        costs=pipe.costs,
        context_length=pipe.target.length,
        max_depth=max_depth,
    )
    for level in pipe.levels:
        level.strategy.start(state)
    return state


# -- fault injection ------------------------------------------------------------------------------
_MISSING = object()


class InjectedFault(BaseException):
    """Raised on purpose by a `Tripwire`. A BaseException, like KeyboardInterrupt: a plugin's
    `except Exception` does not swallow it, and the plugin must still restore what it changed."""


class Tripwire:
    """Makes decoding step `step` (1-based) fail midway, while installed (`with Tripwire(...)`).

    The first draft or review call of that step raises inside its `forward`-th model forward (a
    forward pre-hook on the input embeddings, which every variant of the target runs) or, when it
    makes fewer forwards, right after it returns; a step that calls no level fails when the
    scheduler's `build_tree` returns. `fired` says where it fired (None: it did not).
    """

    def __init__(self, pipe: Pipeline, step: int, forward: int = 1):
        self.pipe, self.step, self.forward = pipe, step, forward
        self.steps = 0
        self.fired: str | None = None
        self._live = False
        self._patched: list[tuple[object, str, object]] = []

    def _fire(self, where: str) -> None:
        self.fired = where
        raise InjectedFault(f"injected fault in step {self.step}: {where}")

    def _patch(self, obj: object, name: str, make: Callable[[Any, str], Callable[..., Any]]) -> None:
        self._patched.append((obj, name, vars(obj).get(name, _MISSING)))
        setattr(obj, name, make(getattr(obj, name), name))

    def __enter__(self) -> Tripwire:
        def build_tree(original: Callable[[DecodingState], TokenTree], name: str) -> Callable[..., Any]:
            def wrapper(state: DecodingState) -> TokenTree:
                self.steps += 1
                self._live = self.steps == self.step
                try:
                    tree = original(state)
                finally:
                    live, self._live = self._live, False
                if live and self.fired is None:
                    self._fire("when build_tree returned (no level was called)")
                return tree

            return wrapper

        def level_call(original: Callable[..., Any], name: str) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if not self._live or self.fired is not None:
                    return original(*args, **kwargs)
                count = 0

                def hook(module: torch.nn.Module, inputs: tuple[Any, ...]) -> None:
                    nonlocal count
                    count += 1
                    if count == self.forward and self.fired is None:
                        self._fire(f"inside model forward {count} of {name}")

                handle = self.pipe.adapter.embed_tokens.register_forward_pre_hook(hook)
                try:
                    original(*args, **kwargs)
                finally:
                    handle.remove()
                if self.fired is not None:
                    raise AssertionError(
                        f"the plugin swallowed the exception raised in its model forward ({self.fired}) and went on"
                    )
                self._fire(f"after {name} returned ({count} model forwards)")

            return wrapper

        self._patch(self.pipe.scheduler, "build_tree", build_tree)
        for level in self.pipe.levels:
            self._patch(level.strategy, "draft", level_call)
            self._patch(level.strategy, "review", level_call)
        return self

    def __exit__(self, *exc: object) -> None:
        for obj, name, before in reversed(self._patched):
            if before is _MISSING:
                delattr(obj, name)  # the instance attribute goes; the class's method shows again
            else:
                setattr(obj, name, before)
        self._patched.clear()


# -- the model and its cache -------------------------------------------------------------------------
_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


@dataclass(frozen=True)
class ModelSnapshot:
    """Everything of a model a drafter could leave changed; `differences` lists what did."""

    modules: tuple[tuple[str, str, int], ...]  # (name, class, id) of every submodule
    hooks: tuple[tuple[str, tuple[int, ...]], ...]  # modules with hooks: counts per hook kind
    patched: tuple[tuple[str, str, int], ...]  # (module, attribute, id): callables set on instances
    training: tuple[str, ...]  # modules in training mode
    config: str
    global_state: tuple[Any, ...]  # global module hooks, grad mode
    tensors: dict[str, torch.Tensor] = field(repr=False)  # state_dict, cloned

    @classmethod
    def take(cls, model: torch.nn.Module) -> ModelSnapshot:
        named = list(model.named_modules(remove_duplicate=False))
        from torch.nn.modules import module as module_mod

        return cls(
            modules=tuple((n, type(m).__qualname__, id(m)) for n, m in named),
            hooks=tuple(
                (n, counts) for n, m in named if any(counts := tuple(len(getattr(m, h, {})) for h in _HOOK_DICTS))
            ),
            patched=tuple(
                (n, a, id(v))
                for n, m in named
                for a, v in sorted(vars(m).items())
                if callable(v) and not isinstance(v, torch.nn.Module) and hasattr(type(m), a)
            ),
            training=tuple(n for n, m in named if m.training),
            config=cast("PreTrainedConfig", model.config).to_json_string() if hasattr(model, "config") else "",
            global_state=(*(len(getattr(module_mod, h, {})) for h in _GLOBAL_HOOKS), torch.is_grad_enabled()),
            tensors={k: v.detach().clone() for k, v in model.state_dict().items()},
        )

    def differences(self, other: ModelSnapshot) -> list[str]:
        out = []
        if self.modules != other.modules:
            before, after = set(self.modules), set(other.modules)
            changed = sorted({n for n, *_ in before ^ after})
            out.append(f"modules replaced, added or removed: {changed[:8]}")
        if self.hooks != other.hooks:
            out.append(f"hooks changed: before {self.hooks}, after {other.hooks}")
        if self.patched != other.patched:
            out.append(f"methods patched on module instances: before {self.patched}, after {other.patched}")
        if self.training != other.training:
            out.append("training mode changed")
        if self.config != other.config:
            out.append("model.config changed")
        if self.global_state != other.global_state:
            out.append(f"global module hooks or grad mode changed: {self.global_state} → {other.global_state}")
        changed = [k for k, v in self.tensors.items() if k not in other.tensors or not torch.equal(v, other.tensors[k])]
        added = sorted(set(other.tensors) - set(self.tensors))
        if changed or added:
            out.append(f"parameters or buffers changed: {(changed + added)[:8]}")
        return out


@torch.inference_mode()
def cache_problems(pipe: Pipeline, committed: Sequence[int], atol: float = 1e-5) -> list[str]:
    """How `pipe.target`'s cache differs from what a never-drafting run holds after `committed`
    (prompt + committed tokens; the newest is the next root, so the cache holds all but it):
    the length of every layer, every stored key and value, and the next logits."""
    target, adapter, model = pipe.target, pipe.adapter, pipe.model
    cache = target.cache
    assert cache is not None, "cache_problems reads the cache of a prefilled target"
    problems = []
    want_length = len(committed) - 1
    if target.length != want_length:
        problems.append(f"target.length is {target.length}; the committed tokens need {want_length}")
    lengths = [layer.get_seq_length() for layer in cache.layers]
    if any(n != want_length for n in lengths):
        problems.append(f"cache layers hold {lengths} tokens; each should hold {want_length}")
    reference = adapter.new_cache()
    device = target.device
    ids = torch.tensor([list(committed)], dtype=torch.long, device=device)
    model(input_ids=ids[:, :-1], past_key_values=reference, use_cache=True)
    for i, (got, want) in enumerate(zip(cache.layers, reference.layers)):
        got_keys, want_keys = got.keys, want.keys
        assert got_keys is not None and want_keys is not None  # layers of prefilled caches
        n = min(got_keys.shape[-2], want_keys.shape[-2])
        for what in ("keys", "values"):
            a, b = getattr(got, what)[..., -n:, :], getattr(want, what)[..., -n:, :]
            if not torch.allclose(a, b, atol=atol, rtol=atol):
                problems.append(
                    f"layer {i} {what} differ from a plain forward over the committed tokens "
                    f"(max {float((a - b).abs().max()):.2e})"
                )
    if problems:
        return problems
    full = model(input_ids=ids).logits[0, -1].float()
    view = adapter.prefix_view(cache, target.length)
    nxt = (
        model(
            input_ids=ids[:, -1:],
            past_key_values=view,
            use_cache=True,
            position_ids=torch.tensor([[target.length]], device=device),
        )
        .logits[0, -1]
        .float()
    )
    if not torch.allclose(nxt, full, atol=10 * atol, rtol=10 * atol):
        problems.append(
            f"the next logits from the cache differ from a plain forward (max {float((nxt - full).abs().max()):.2e})"
        )
    return problems


__all__ = [
    "InjectedFault",
    "ModelSnapshot",
    "Recorder",
    "Step",
    "StopGeneration",
    "Tripwire",
    "build_pipeline",
    "cache_problems",
    "plugin_set",
    "prepared_state",
]
