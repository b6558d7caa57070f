"""`Pipeline`: a validated configuration bound to a loaded model, ready to `generate`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cas_spec.core.calibration import kernels_active
from cas_spec.core.config import PipelineConfig, load_config
from cas_spec.core.engine import generate_tokens
from cas_spec.core.errors import InputError
from cas_spec.core.levels import Level
from cas_spec.core.plugins import Plugins, get_plugins
from cas_spec.core.types import GenerationStats, SamplingParams


@dataclass(frozen=True)
class GenerationResult:
    text: str  # the decoded new tokens
    token_ids: list[int]  # the new tokens
    prompt_token_ids: list[int]
    stats: GenerationStats


class Pipeline:
    """A model, its levels, a scheduler and a verifier. Build with `load_pipeline`."""

    def __init__(self, config: PipelineConfig, model, tokenizer, plugins: Plugins | None = None):
        import torch

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
        self.levels = []
        for lc in config.levels:
            strategy_cls = plugins.strategies.get(lc.kind)
            self.levels.append(Level(lc.name, strategy_cls(strategy_cls.Options(**lc.options))))
        for level in self.levels:
            level.strategy.setup(self.target)
        self.calibration = None
        if config.calibration == "auto":
            self.calibration = self.calibrate(quick=True, use_cache=True)
            self.target.costs = self.calibration.costs
            self.target.draft_costs = self.calibrate_drafts(quick=True, use_cache=True)
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
        The full calibration (`quick=False`) first lets each level do its one-time work
        (`DraftStrategy.prepare`). Needs the calibration (the kernels the levels draft under);
        {} without one or without levels."""
        from cas_spec.costs.draft_costs import calibrated_draft_costs, calibration_text_ids

        if self.calibration is None or not self.levels:
            return {}
        kinds = {lc.name: lc.kind for lc in self.config.levels}
        with kernels_active(self.model, self.calibration):
            if not quick:  # one-time work of the levels first (a skip-set search), on real text
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

    def encode(self, prompt: str | list[int], chat: bool | None = None) -> list[int]:
        """Prompt token ids: token ids pass through; text goes through the chat template or not."""
        if isinstance(prompt, list):
            return [int(t) for t in prompt]
        if not prompt or not prompt.strip():
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
        prompt: str | list[int],
        *,
        max_new_tokens: int | None = None,
        chat: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        on_text: Callable[[str], None] | None = None,
    ) -> GenerationResult:
        """Generate a continuation of `prompt` (text or token ids); `on_text` receives streamed text."""
        max_new_tokens = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        if max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        prompt_ids = self.encode(prompt, chat)
        if not prompt_ids:
            raise InputError("the prompt is empty")
        limit = self.adapter.context_length
        if len(prompt_ids) >= limit:
            raise InputError(f"the prompt has {len(prompt_ids)} tokens; the model's context holds {limit}")
        sampling = self.sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        streamer = _TextStreamer(self.tokenizer, on_text) if on_text else None
        with kernels_active(self.model, self.calibration):
            new_ids, stats = generate_tokens(
                self.target, self.scheduler, self.verifier_for(sampling), self.levels, prompt_ids,
                max_new_tokens, sampling, eos_token_ids=self.adapter.eos_token_ids,
                on_tokens=streamer.push if streamer else None,
            )
        if streamer:
            streamer.flush()
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True)
        return GenerationResult(text=text, token_ids=new_ids, prompt_token_ids=prompt_ids, stats=stats)

    def sampling(self, **overrides: Any) -> SamplingParams:
        base = SamplingParams(**self.config.sampling.model_dump())
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


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
    progress: bool = True,
) -> Pipeline:
    """Load a pipeline from a preset name, a YAML file or a dict.

    Pass an already loaded transformers `model` and `tokenizer` to use them instead of the
    pipeline's `model:` entry.
    """
    config = load_config(source, overrides)
    if (model is None) != (tokenizer is None):
        raise InputError("pass both model and tokenizer, or neither")
    if model is None:
        from cas_spec.core.models import load_model

        model, tokenizer = load_model(config.model, config.device, config.dtype, progress=progress)
    return Pipeline(config, model, tokenizer)
