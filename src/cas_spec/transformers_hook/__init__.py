"""cas-spec inside `model.generate`: transformers' `custom_generate` hook.

    model.generate(**inputs, custom_generate=cas_spec.custom_generate("default"), max_new_tokens=64)

transformers prepares the inputs, the generation config, the logits processors and the stopping
criteria, then calls the callable this module makes instead of its own decoding loop. The call
runs the pipeline (a preset, YAML file or dict; built once per model and kept) and returns what
`generate` returns: the sequences [1, prompt + new], or a `GenerateDecoderOnlyOutput` with
`return_dict_in_generate` (its `scores` with `output_scores`).

What is honoured, exactly: greedy decoding (identical to plain `generate`), sampling with the
standard warpers (temperature, top-k, top-p, min-p, applied as transformers applies them), and
every stopping criterion (max length, EOS, max time, a `StopStringCriteria`, your own), checked
token by token as plain decoding checks them (without `scores`). `stop_strings=` itself fails
inside transformers (5.20-5.25), which does not hand a custom loop the tokenizer it needs: pass
`StopStringCriteria(tokenizer, strings)` in `stopping_criteria` instead. What is refused, with
one `InputError` naming it: a batch of more than one sequence or padding, beams and several return sequences,
any other logits processor (penalties, bad words, forced tokens, ...: they change the
distribution the verifier must reproduce), and `output_logits`, `output_attentions`,
`output_hidden_states`. transformers hands a streamer to its own loops but not to a custom one;
stream with `Pipeline.generate(streamer=...)` instead.

The folder form, for `custom_generate=<folder>` with `trust_remote_code=True`, is `folder()`:
this package's folder, which holds `custom_generate/generate.py`; pick the pipeline there with
the `cas_spec_pipeline=` argument of `generate`.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch

from cas_spec.core.errors import InputError
from cas_spec.core.types import SamplingParams
from cas_spec.pipeline import Pipeline, load_pipeline

# transformers' sampling warpers, in the order `generate` applies them, and how each maps to ours.
_WARPERS = ("TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper", "MinPLogitsWarper")
_REFUSED_OUTPUTS = ("output_logits", "output_attentions", "output_hidden_states")


def sampling_of(logits_processor: Sequence[Any], do_sample: bool) -> SamplingParams:
    """The `SamplingParams` equal to `logits_processor` (greedy when not `do_sample`), or
    `InputError` naming every processor cas-spec cannot reproduce exactly."""
    names = [type(p).__name__ for p in logits_processor]
    foreign = [n for n in names if not do_sample or n not in _WARPERS]
    if foreign:
        raise InputError(
            "custom_generate: cas-spec cannot apply these logits processors exactly: "
            + ", ".join(foreign)
            + " (it honours greedy decoding and sampling with temperature, top_k, top_p and min_p)"
        )
    if names != sorted(names, key=_WARPERS.index) or len(set(names)) != len(names):
        raise InputError(f"custom_generate: warpers in an order transformers never uses: {', '.join(names)}")
    if not do_sample:
        return SamplingParams()
    values: dict[str, Any] = {"temperature": 1.0}
    for processor in logits_processor:
        if getattr(processor, "min_tokens_to_keep", 1) != 1 or getattr(processor, "filter_value", -1e9) > -1e9:
            raise InputError(f"custom_generate: {type(processor).__name__} with non-default filter settings")
        name = type(processor).__name__
        if name == "TemperatureLogitsWarper":
            values["temperature"] = float(processor.temperature)
        elif name == "TopKLogitsWarper":
            values["top_k"] = int(processor.top_k)
        elif name == "TopPLogitsWarper":
            values["top_p"] = float(processor.top_p)
        else:
            values["min_p"] = float(processor.min_p)
    return SamplingParams(**values)


class CustomGenerate:
    """The callable for `model.generate(custom_generate=...)`; see the module. One pipeline per
    model, built on first use and kept while the model lives."""

    def __init__(self, pipeline: str | Path | Mapping[str, Any] = "default", tokenizer: Any = None) -> None:
        self.pipeline = pipeline
        self.tokenizer = tokenizer
        self._pipelines: weakref.WeakKeyDictionary[torch.nn.Module, Pipeline] = weakref.WeakKeyDictionary()

    def pipeline_for(self, model: torch.nn.Module) -> Pipeline:
        pipe = self._pipelines.get(model)
        if pipe is None:
            pipe = load_pipeline(self.pipeline, model=model, tokenizer=self._tokenizer(model))
            self._pipelines[model] = pipe
        return pipe

    def _tokenizer(self, model: torch.nn.Module) -> Any:
        if self.tokenizer is not None:
            return self.tokenizer
        from transformers import AutoTokenizer

        source = getattr(model, "name_or_path", "") or getattr(getattr(model, "config", None), "_name_or_path", "")
        try:
            return AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise InputError(
                f"custom_generate: no tokenizer found for the model ('{source}'); pass one: "
                "cas_spec.custom_generate(pipeline, tokenizer=tokenizer) (transformers does not hand generate's "
                "tokenizer= to a custom loop)"
            ) from error

    def __call__(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        logits_processor: Sequence[Any],
        stopping_criteria: Any,
        generation_config: Any,
        synced_gpus: bool = False,
        streamer: Any = None,
        **model_kwargs: Any,
    ) -> Any:
        _refuse_what_cannot_be_honoured(input_ids, generation_config, model_kwargs)
        sampling = sampling_of(logits_processor, bool(generation_config.do_sample))
        prompt = input_ids[0].tolist()
        device = input_ids.device

        def stop(tokens: Sequence[int], new: Sequence[int]) -> int | None:
            for kept in range(1, len(new) + 1):  # as plain decoding checks: after every token
                ids = torch.tensor([[*tokens, *new[:kept]]], dtype=torch.long, device=device)
                if bool(stopping_criteria(ids, None).any()):
                    return kept
            return None

        eos = generation_config.eos_token_id
        eos_ids = () if eos is None else tuple(eos) if isinstance(eos, list | tuple) else (int(eos),)
        result = self.pipeline_for(model).generate(
            prompt,
            max_new_tokens=generation_config.max_length - len(prompt),
            chat=False,
            temperature=sampling.temperature,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            streamer=_AfterPrompt(streamer) if streamer is not None else None,
            output_scores=bool(generation_config.output_scores),
            eos_token_ids=eos_ids,
            stop=stop,
        )
        new = torch.tensor([result.token_ids], dtype=input_ids.dtype, device=device)
        sequences = torch.cat([input_ids, new], dim=-1)
        if not generation_config.return_dict_in_generate:
            return sequences
        from transformers.generation.utils import GenerateDecoderOnlyOutput

        scores = cast("tuple[torch.Tensor]", result.scores)  # transformers annotates a 1-tuple; any length is meant
        return GenerateDecoderOnlyOutput(sequences=cast(torch.LongTensor, sequences), scores=scores)


class _AfterPrompt:
    """A streamer seen through `Pipeline.generate`, which puts the prompt that `generate` already put."""

    def __init__(self, streamer: Any) -> None:
        self.streamer, self.prompt_seen = streamer, False

    def put(self, value: torch.Tensor) -> None:
        if self.prompt_seen:
            self.streamer.put(value)
        self.prompt_seen = True

    def end(self) -> None:
        self.streamer.end()


def _refuse_what_cannot_be_honoured(input_ids: torch.Tensor, config: Any, model_kwargs: Mapping[str, Any]) -> None:
    problems = []
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        problems.append(f"a batch of {input_ids.shape[0] if input_ids.dim() == 2 else '?'} sequences (one only)")
    mask = model_kwargs.get("attention_mask")
    if mask is not None and not bool((mask == 1).all()):
        problems.append("a padded attention_mask")
    if (config.num_beams or 1) > 1:
        problems.append(f"num_beams={config.num_beams}")
    if (config.num_return_sequences or 1) > 1:
        problems.append(f"num_return_sequences={config.num_return_sequences}")
    problems += [f"{name}=True" for name in _REFUSED_OUTPUTS if getattr(config, name, False)]
    if problems:
        raise InputError("custom_generate: cas-spec cannot honour " + ", ".join(problems))


def custom_generate(pipeline: str | Path | Mapping[str, Any] = "default", tokenizer: Any = None) -> CustomGenerate:
    """The callable for `model.generate(custom_generate=...)` running `pipeline` (a preset, YAML
    file or dict). `tokenizer`: the model's, for the pipeline's calibration text (default: loaded
    from the model's folder; transformers does not pass `generate`'s `tokenizer=` to a custom loop)."""
    return CustomGenerate(pipeline, tokenizer)


def folder() -> Path:
    """The folder to pass as `model.generate(custom_generate=..., trust_remote_code=True)`: it
    holds `custom_generate/generate.py`, which runs `custom_generate(cas_spec_pipeline)`."""
    return Path(__file__).resolve().parent


__all__ = ["CustomGenerate", "custom_generate", "folder", "sampling_of"]
