"""The composition root: a validated configuration, the plugins, a loaded model and its calibration
make a ready `Pipeline` (`build_pipeline`; `load_pipeline` from a preset, a file or a dict).

This is the one place that knows every layer: it resolves the model's adapter, wraps the model in
a `Target`, builds each level from its strategy and validated options (handing the target only to
strategies that run it), measures or loads the calibration, hands the scheduler its levels and the
read-only cost view, and picks the verifier. Nothing below it builds any of these.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import torch

from cas_spec.core.adapter import ModelAdapter, resolve_adapter
from cas_spec.core.config import PipelineConfig, load_config
from cas_spec.core.cost_model import UNCALIBRATED, CostView
from cas_spec.core.engine import StopCheck, generate_tokens
from cas_spec.core.errors import InputError
from cas_spec.core.interfaces import Scheduler, Verifier
from cas_spec.core.interop import GenerationOptions, StreamerBridge, options_from_generation_config
from cas_spec.core.levels import Level
from cas_spec.core.memory import MemoryReport, module_tensors, storage_bytes
from cas_spec.core.plugins import Plugins, get_plugins
from cas_spec.core.prompts import Prompt, TextStreamer, encode_prompt, scores_of, wants_chat
from cas_spec.core.target import Target
from cas_spec.core.types import GenerationStats, SamplingParams, SetupContext
from cas_spec.costs.calibration import Calibration, kernels_active, measure_levels, measure_target
from cas_spec.hub import load_model
from cas_spec.schedulers.gate import NeverSlowerGate

if TYPE_CHECKING:
    from transformers import GenerationConfig, PreTrainedConfig

    from cas_spec.core.interop import Streamer

CalibrationChoice = Literal["config", "quick", "full", "fresh", "off"] | Calibration


@dataclass(frozen=True)
class GenerationResult:
    text: str  # the decoded new tokens
    token_ids: list[int]  # the new tokens
    prompt_token_ids: list[int]
    stats: GenerationStats
    sequences: torch.Tensor | None = None  # [1, prompt + new] int64, like `model.generate`'s output
    # With output_scores: per new token a [1, V] float32 tensor, the target logits it was verified or
    # sampled against, warped as transformers' `scores` are (raw logits when greedy); else None.
    scores: tuple[torch.Tensor, ...] | None = None


def _progress_default(progress: bool | None) -> bool:
    """None = show progress bars when standard error is a terminal."""
    if progress is not None:
        return progress
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class Pipeline:
    """A model, its levels, a scheduler and a verifier, with the calibration they run under. Made
    by `build_pipeline` (or `load_pipeline`), which gives it everything it holds.

    Safe to share across threads: one pipeline holds one KV cache and one model state, so
    concurrent `generate` calls run one after the other (the time a call waited is
    `stats.wait_seconds`). For parallel generation, build one pipeline per thread."""

    def __init__(
        self,
        config: PipelineConfig,
        model: torch.nn.Module,
        tokenizer: Any,
        adapter: ModelAdapter,
        target: Target,
        levels: list[Level],
        scheduler: Scheduler,
        verifiers: Mapping[str, Verifier],
        calibration: Calibration | None,
    ):
        self.config, self.model, self.tokenizer = config, model, tokenizer
        self.adapter, self.target, self.levels, self.scheduler = adapter, target, levels, scheduler
        self._verifiers = dict(verifiers)
        self.calibration = calibration
        self.costs: CostView = calibration.view() if calibration is not None else UNCALIBRATED
        self._lock = threading.Lock()  # one generation at a time: they share the cache and the model
        self._generating_thread: int | None = None

    # -- inputs ------------------------------------------------------------------------------
    def wants_chat(self, chat: bool | None) -> bool:
        return wants_chat(self.tokenizer, self.config.chat if chat is None else chat)

    def encode(self, prompt: Prompt, chat: bool | None = None) -> list[int]:
        """Prompt token ids (`core.prompts.encode_prompt`)."""
        return encode_prompt(self.tokenizer, prompt, self.config.chat if chat is None else chat)

    def verifier_for(self, sampling: SamplingParams):
        name = self.config.verifier
        if name == "auto":
            name = "greedy" if sampling.greedy else "sampling"
        return self._verifiers[name]

    # -- generation --------------------------------------------------------------------------
    def generate(
        self,
        prompt: Prompt,
        *,
        max_new_tokens: int | None = None,
        chat: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        seed: int | None = None,
        on_text: Callable[[str], None] | None = None,
        generation_config: GenerationConfig | None = None,
        streamer: Streamer | None = None,
        output_scores: bool | None = None,
        eos_token_ids: Sequence[int] | None = None,
        stop: StopCheck | None = None,
    ) -> GenerationResult:
        """Generate a continuation of `prompt` (text or token ids); `on_text` receives streamed text.

        transformers interop: `generation_config` (a `GenerationConfig`, resolved against the
        model's own as `model.generate` does; explicit keyword arguments override it), `streamer`
        (anything with `put(tensor)` and `end()`, fed as `generate` feeds it) and `output_scores`
        (`GenerationResult.scores`). See `cas_spec.core.interop`. `eos_token_ids` replaces the
        model's (and a generation config's) end tokens; `stop` ends generation as other stopping
        criteria would (`cas_spec.core.engine.StopCheck`).
        """
        if self._generating_thread == threading.get_ident():
            raise InputError(
                "generate was called again from inside a generation on the same pipeline (from on_text "
                "or a streamer); it would corrupt the running generation's cache: call it after it returns"
            )
        waited = 0.0
        if not self._lock.acquire(blocking=False):  # another thread is generating: wait for it
            asked = time.perf_counter()
            self._lock.acquire()
            waited = time.perf_counter() - asked
        self._generating_thread = threading.get_ident()
        bridge = StreamerBridge(streamer) if streamer is not None else None
        try:
            result = self._generate(
                prompt,
                max_new_tokens,
                chat,
                on_text,
                generation_config,
                bridge,
                output_scores,
                dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed),
                eos_token_ids,
                stop,
            )
        finally:
            self._generating_thread = None
            self._lock.release()
            if bridge is not None:
                bridge.end()
        return replace(result, stats=replace(result.stats, wait_seconds=waited))

    def _generate(
        self,
        prompt: Prompt,
        max_new_tokens: int | None,
        chat: bool | None,
        on_text: Callable[[str], None] | None,
        generation_config: GenerationConfig | None,
        bridge: StreamerBridge | None,
        output_scores: bool | None,
        sampling_overrides: dict[str, Any],
        eos_token_ids: Sequence[int] | None = None,
        stop: StopCheck | None = None,
    ) -> GenerationResult:
        if max_new_tokens is not None and max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        prompt_ids = self.encode(prompt, chat)
        if not prompt_ids:
            raise InputError("the prompt is empty")
        options = (
            options_from_generation_config(generation_config, self.model, len(prompt_ids))
            if generation_config is not None
            else None
        )
        if max_new_tokens is None:
            max_new_tokens = options.max_new_tokens if options else None
            max_new_tokens = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
            if max_new_tokens < 1:
                raise InputError(f"generation_config.max_new_tokens must be at least 1, got {max_new_tokens}")
        limit = self.adapter.context_length
        if len(prompt_ids) >= limit:
            raise InputError(f"the prompt has {len(prompt_ids)} tokens; the model's context holds {limit}")
        sampling = self.sampling(options, **sampling_overrides)
        eos = options.eos_token_ids if options and options.eos_token_ids is not None else self.adapter.eos_token_ids
        eos = eos if eos_token_ids is None else tuple(eos_token_ids)
        if output_scores is None:
            output_scores = bool(options and options.output_scores)

        text_streamer = TextStreamer(self.tokenizer, on_text) if on_text else None
        step_logits: list[torch.Tensor] = []

        def on_tokens(tokens: list[int]) -> None:
            if text_streamer is not None:
                text_streamer.push(tokens)
            if bridge is not None:
                bridge.put(tokens)

        if bridge is not None:
            bridge.put_prompt(prompt_ids)
        with kernels_active(self.model, self.calibration):
            new_ids, stats = generate_tokens(
                self.target,
                self.scheduler,
                self.verifier_for(sampling),
                self.levels,
                prompt_ids,
                max_new_tokens,
                sampling,
                eos_token_ids=eos,
                on_tokens=on_tokens,
                on_logits=step_logits.append if output_scores else None,
                costs=self.costs,
                stop=stop,
            )
        if text_streamer is not None:
            text_streamer.flush()
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        sequences = torch.tensor([prompt_ids + new_ids], dtype=torch.long, device=self.target.device)
        return GenerationResult(
            text=text,
            token_ids=new_ids,
            prompt_token_ids=prompt_ids,
            stats=stats,
            sequences=sequences,
            scores=scores_of(step_logits, sampling) if output_scores else None,
        )

    def memory(self) -> MemoryReport:
        """Bytes held: the model's weights, the KV cache's buffers, each level's own tensors."""
        cache = self.target.cache
        return MemoryReport(
            model=storage_bytes(module_tensors([self.model])),
            kv_cache=cache.nbytes if cache is not None else 0,
            levels={level.name: level.strategy.memory_bytes() for level in self.levels},
        )

    def sampling(self, base: GenerationOptions | None = None, **overrides: Any) -> SamplingParams:
        """The pipeline's sampling settings (or a generation config's), with non-None overrides."""
        params = SamplingParams(**self.config.sampling.model_dump())
        if base is not None:
            params = replace(params, temperature=base.temperature, top_k=base.top_k, top_p=base.top_p, min_p=base.min_p)
        return replace(params, **{k: v for k, v in overrides.items() if v is not None})


def build_pipeline(
    config: PipelineConfig,
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    plugins: Plugins | None = None,
    calibration: CalibrationChoice = "config",
    progress: bool | None = None,
) -> Pipeline:
    """A ready pipeline of `config` on `model`. `calibration`: as the config says (`config`: a quick
    measurement on first use, cached, unless `calibration: off`), `quick`, `full` (what `cas-spec
    calibrate` measures, from the cache when there), `fresh` (full, measured again and cached),
    `off`, or a `Calibration` measured before. `progress`: progress bars on
    standard error while calibrating (None = when standard error is a terminal)."""
    plugins = plugins or get_plugins()
    model = model.eval()
    if config.threads is not None and next(model.parameters()).device.type == "cpu":
        torch.set_num_threads(config.threads)
    adapter = resolve_adapter(model, plugins.adapters)
    target = Target(model, adapter)
    vocab_size = int(cast("PreTrainedConfig", model.config).vocab_size)
    levels = []
    for lc in config.levels:
        strategy_cls = plugins.strategies.get(lc.kind)
        strategy = strategy_cls(lc.validated_options(plugins.strategies))
        strategy.setup(SetupContext(tokenizer, vocab_size, target if strategy_cls.runs_target else None))
        levels.append(Level(lc.name, strategy))
    measured = _calibration(config, calibration, target, levels, tokenizer, _progress_default(progress))
    scheduler_cls = plugins.schedulers.get(config.scheduler.kind)
    scheduler = scheduler_cls(config.scheduler.validated_options(plugins.schedulers), levels)
    if config.scheduler.gate:
        scheduler = NeverSlowerGate(scheduler)
    verifiers = {name: plugins.verifiers.get(name)() for name in plugins.verifiers.names()}
    return Pipeline(config, model, tokenizer, adapter, target, levels, scheduler, verifiers, measured)


def _calibration(
    config: PipelineConfig,
    choice: CalibrationChoice,
    target: Target,
    levels: list[Level],
    tokenizer: Any,
    progress: bool,
) -> Calibration | None:
    if isinstance(choice, Calibration):
        return choice
    if choice == "config":
        choice = "off" if config.calibration == "off" else "quick"
    if choice == "off":
        return None
    quick, use_cache = choice == "quick", choice != "fresh"
    kernels = config.kernels
    measured = measure_target(
        target, config.threads, kernels.linear, kernels.attention, quick=quick, use_cache=use_cache, progress=progress
    )
    kinds = {lc.name: lc.kind for lc in config.levels}
    return measure_levels(
        measured, target, levels, kinds, tokenizer, quick=quick, use_cache=use_cache, progress=progress
    )


def load_pipeline(
    source: str | Path | Mapping[str, Any] = "default",
    *,
    model: torch.nn.Module | None = None,
    tokenizer: Any = None,
    overrides: Iterable[str] = (),
    progress: bool | None = None,
    calibration: CalibrationChoice = "config",
) -> Pipeline:
    """Load a pipeline from a preset name, a YAML file or a dict.

    Pass an already loaded transformers `model` and `tokenizer` to use them instead of the
    pipeline's `model:` entry. `progress`: progress bars on standard error while a model is
    fetched or converted and while calibrating (None = when standard error is a terminal).
    `calibration`: see `build_pipeline`.
    """
    config = load_config(source, overrides)
    if (model is None) != (tokenizer is None):
        raise InputError("pass both model and tokenizer, or neither")
    if model is None:
        model, tokenizer = load_model(config.model, config.device, config.dtype, progress=_progress_default(progress))
    return build_pipeline(config, model, tokenizer, progress=progress, calibration=calibration)


def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: Prompt,
    pipeline: str | Path | Mapping[str, Any] = "default",
    **kwargs: Any,
) -> GenerationResult:
    """One call, like `model.generate`: load `pipeline` on this model and generate. Keep a
    `Pipeline` (`load_pipeline`) for repeated calls: loading sets its levels up each time."""
    return load_pipeline(pipeline, model=model, tokenizer=tokenizer).generate(prompt, **kwargs)


__all__ = ["GenerationResult", "Pipeline", "build_pipeline", "generate", "load_pipeline"]
