"""`Pipeline`: a validated configuration bound to a loaded model, ready to `generate`."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from cas_spec.core.calibration import kernels_active
from cas_spec.core.config import PipelineConfig, load_config
from cas_spec.core.engine import generate_tokens
from cas_spec.core.errors import InputError
from cas_spec.core.interop import GenerationOptions, StreamerBridge, options_from_generation_config
from cas_spec.core.levels import Level
from cas_spec.core.plugins import Plugins, get_plugins
from cas_spec.core.sampling import warp_logits
from cas_spec.core.types import GenerationStats, SamplingParams

Prompt = str | Sequence[int] | torch.Tensor | Mapping[str, Any]


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
    """A model, its levels, a scheduler and a verifier. Build with `load_pipeline`."""

    def __init__(self, config: PipelineConfig, model, tokenizer, plugins: Plugins | None = None,
                 progress: bool | None = None):
        from cas_spec.adapters import resolve_adapter
        from cas_spec.core.target import Target

        plugins = plugins or get_plugins()
        self.config = config
        self.model = model.eval()
        self.tokenizer = tokenizer
        if config.threads is not None and next(model.parameters()).device.type == "cpu":
            torch.set_num_threads(config.threads)
        self.adapter = resolve_adapter(model, plugins.adapters)
        self.target = Target(model, self.adapter)
        self.target.tokenizer = tokenizer  # before the levels' setup: some read text with it
        self.levels = []
        for lc in config.levels:
            strategy_cls = plugins.strategies.get(lc.kind)
            self.levels.append(Level(lc.name, strategy_cls(strategy_cls.Options(**lc.options))))
        for level in self.levels:
            level.strategy.setup(self.target)
        self.calibration = None
        if config.calibration == "auto":
            progress = _progress_default(progress)
            self.calibration = self.calibrate(quick=True, use_cache=True, progress=progress)
            self.target.costs = self.calibration.costs
            self.target.draft_costs = self.calibrate_drafts(quick=True, use_cache=True, progress=progress)
        scheduler_cls = plugins.schedulers.get(config.scheduler.kind)
        self.scheduler = scheduler_cls(scheduler_cls.Options(**config.scheduler.options), self.levels)
        if config.scheduler.gate:
            from cas_spec.schedulers.gate import NeverSlowerGate

            self.scheduler = NeverSlowerGate(self.scheduler)
        self._verifiers = {name: plugins.verifiers.get(name)() for name in plugins.verifiers.names()}

    def calibrate(self, quick: bool = False, use_cache: bool = True, progress: bool = True):
        """This model's calibration (kernels and cost table): cached, or measured and cached.

        A quick one is measured on first use; `cas-spec calibrate` measures the full one.
        """
        from cas_spec.core.calibration import calibrate

        kernels = self.config.kernels
        return calibrate(self.target, self.config.threads, kernels.linear, kernels.attention,
                         quick=quick, use_cache=use_cache, progress=progress)

    def calibrate_drafts(self, quick: bool = False, use_cache: bool = True, progress: bool = True) -> dict:
        """Level name -> its draft cost (`costs/draft_costs.py`): cached, or measured and cached.
        Each level first does its one-time work (`DraftStrategy.prepare`, e.g. a skip-set search
        when none is cached), so that its cost is measured as it will draft. Needs the calibration (the kernels the levels draft under);
        {} without one or without levels."""
        from cas_spec.costs.draft_costs import calibrated_draft_costs, calibration_text_ids

        if self.calibration is None or not self.levels:
            return {}
        kinds = {lc.name: lc.kind for lc in self.config.levels}
        with kernels_active(self.model, self.calibration):
            # one-time work of the levels first (a skip-set search, when none is cached), on real text
            text = calibration_text_ids(self.tokenizer, 512, self.model.config.vocab_size)
            for level in self.levels:
                level.strategy.prepare(self.target, text, progress=progress)
            return calibrated_draft_costs(self.target, self.levels, kinds, self.tokenizer,
                                          key=self.calibration.costs.key, quick=quick, use_cache=use_cache,
                                          progress=progress)

    # -- inputs ------------------------------------------------------------------------------
    def wants_chat(self, chat: bool | None) -> bool:
        if chat is None:
            chat = self.config.chat
        has_template = getattr(self.tokenizer, "chat_template", None) is not None
        if chat is None:
            return has_template
        if chat and not has_template:
            raise InputError("this model has no chat template; use raw completion (--no-chat)")
        return chat

    def encode(self, prompt: Prompt, chat: bool | None = None) -> list[int]:
        """Prompt token ids: token ids (a list, a 1-D or [1, L] tensor, a tokenizer's output) pass
        through; text goes through the chat template or not."""
        if isinstance(prompt, Mapping):
            if "input_ids" not in prompt:
                raise InputError("a mapping prompt needs 'input_ids' (a tokenizer's output)")
            prompt = prompt["input_ids"]
        if isinstance(prompt, torch.Tensor):
            if prompt.dim() == 2 and prompt.shape[0] != 1:
                raise InputError(f"input_ids hold a batch of {prompt.shape[0]}; cas-spec decodes one sequence")
            if prompt.dim() not in (1, 2) or prompt.is_floating_point():
                raise InputError(f"input_ids must be a 1-D or [1, L] integer tensor, got {tuple(prompt.shape)} "
                                 f"{prompt.dtype}")
            prompt = prompt.reshape(-1).tolist()
        if isinstance(prompt, list | tuple):
            if len(prompt) == 1 and isinstance(prompt[0], list | tuple):  # [[ids]]: a batch of one
                prompt = prompt[0]
            return [int(t) for t in prompt]
        if not isinstance(prompt, str):
            raise InputError(f"the prompt must be text or token ids, got {type(prompt).__name__}")
        if not prompt.strip():
            raise InputError("the prompt is empty")
        if self.wants_chat(chat):
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
            if isinstance(ids, Mapping) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return list(ids)
        return list(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

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
        seed: int | None = None,
        on_text: Callable[[str], None] | None = None,
        generation_config=None,
        streamer=None,
        output_scores: bool | None = None,
    ) -> GenerationResult:
        """Generate a continuation of `prompt` (text or token ids); `on_text` receives streamed text.

        transformers interop: `generation_config` (a `GenerationConfig`, resolved against the
        model's own as `model.generate` does; explicit keyword arguments override it), `streamer`
        (anything with `put(tensor)` and `end()`, fed as `generate` feeds it) and `output_scores`
        (`GenerationResult.scores`). See `cas_spec.core.interop`.
        """
        bridge = StreamerBridge(streamer) if streamer is not None else None
        try:
            return self._generate(prompt, max_new_tokens, chat, on_text, generation_config, bridge, output_scores,
                                  dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed))
        finally:
            if bridge is not None:
                bridge.end()

    def _generate(self, prompt: Prompt, max_new_tokens: int | None, chat: bool | None, on_text,
                  generation_config, bridge: StreamerBridge | None, output_scores: bool | None,
                  sampling_overrides: dict[str, Any]) -> GenerationResult:
        if max_new_tokens is not None and max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        prompt_ids = self.encode(prompt, chat)
        if not prompt_ids:
            raise InputError("the prompt is empty")
        options = (options_from_generation_config(generation_config, self.model, len(prompt_ids))
                   if generation_config is not None else None)
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
        if output_scores is None:
            output_scores = bool(options and options.output_scores)

        text_streamer = _TextStreamer(self.tokenizer, on_text) if on_text else None
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
                self.target, self.scheduler, self.verifier_for(sampling), self.levels, prompt_ids,
                max_new_tokens, sampling, eos_token_ids=eos, on_tokens=on_tokens,
                on_logits=step_logits.append if output_scores else None,
            )
        if text_streamer is not None:
            text_streamer.flush()
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        sequences = torch.tensor([prompt_ids + new_ids], dtype=torch.long, device=self.target.device)
        return GenerationResult(text=text, token_ids=new_ids, prompt_token_ids=prompt_ids, stats=stats,
                                sequences=sequences, scores=_scores(step_logits, sampling) if output_scores else None)

    def sampling(self, base: GenerationOptions | None = None, **overrides: Any) -> SamplingParams:
        """The pipeline's sampling settings (or a generation config's), with non-None overrides."""
        params = SamplingParams(**self.config.sampling.model_dump())
        if base is not None:
            params = replace(params, temperature=base.temperature, top_k=base.top_k, top_p=base.top_p)
        return replace(params, **{k: v for k, v in overrides.items() if v is not None})


def _scores(step_logits: list[torch.Tensor], sampling: SamplingParams) -> tuple[torch.Tensor, ...]:
    """Per new token a [1, V] tensor: raw logits when greedy, else warped as the verifier warps them."""
    if not step_logits:
        return ()
    logits = torch.cat(step_logits)
    if not sampling.greedy:
        logits = warp_logits(logits, sampling)
    return tuple(logits.split(1))


class _TextStreamer:
    """Decodes committed tokens incrementally and passes on only complete new text."""

    def __init__(self, tokenizer, sink: Callable[[str], None]):
        self.tokenizer, self.sink = tokenizer, sink
        self.ids: list[int] = []
        self.printed = 0

    def push(self, tokens: list[int]) -> None:
        self.ids.extend(tokens)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return
        self.sink(text[self.printed:])
        self.printed = len(text)

    def flush(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if len(text) > self.printed:
            self.sink(text[self.printed:])
        self.printed = len(text)


def load_pipeline(
    source: str | Path | Mapping[str, Any] = "default",
    *,
    model=None,
    tokenizer=None,
    overrides: Iterable[str] = (),
    progress: bool | None = None,
) -> Pipeline:
    """Load a pipeline from a preset name, a YAML file or a dict.

    Pass an already loaded transformers `model` and `tokenizer` to use them instead of the
    pipeline's `model:` entry. `progress`: progress bars on standard error while a model is
    fetched or converted and while calibrating (None = when standard error is a terminal).
    """
    config = load_config(source, overrides)
    if (model is None) != (tokenizer is None):
        raise InputError("pass both model and tokenizer, or neither")
    if model is None:
        from cas_spec.core.models import load_model

        model, tokenizer = load_model(config.model, config.device, config.dtype,
                                      progress=_progress_default(progress))
    return Pipeline(config, model, tokenizer, progress=progress)


def generate(model, tokenizer, prompt: Prompt, pipeline: str | Path | Mapping[str, Any] = "default",
             **kwargs: Any) -> GenerationResult:
    """One call, like `model.generate`: load `pipeline` on this model and generate. Keep a
    `Pipeline` (`load_pipeline`) for repeated calls: loading sets its levels up each time."""
    return load_pipeline(pipeline, model=model, tokenizer=tokenizer).generate(prompt, **kwargs)
