"""transformers interop for `Pipeline.generate`: a `GenerationConfig` and a streamer.

`sampling_from_generation_config` resolves a `GenerationConfig` the way `model.generate` does
(the caller's values, then the model's own `generation_config`, then transformers' defaults) and
maps what cas-spec honours: the length, greedy or sampled (temperature, top-k, top-p, warped as
transformers' warpers do: `cas_spec.core.sampling`), the EOS tokens and `output_scores`. Options
that would change the output in a way cas-spec does not reproduce (beams, penalties, other logits
processors, ...) raise one `InputError` naming all of them; options that do not change the output
(pad token, cache settings, transformers' own assistant settings) are ignored.

`StreamerBridge` feeds any transformers streamer (`put(tensor)` / `end()`) as `generate` does:
the prompt ids first as a [1, L] LongTensor, then each committed chunk as [1, n] (assisted
generation's shape for several tokens at once), then `end()`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from cas_spec.core.errors import InputError

# transformers' own defaults for the fields read here (`GenerationConfig._get_default_generation_params`).
_DEFAULTS = {"do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0}

# Options cas-spec cannot honour, with the values that leave the output unchanged.
_NEUTRAL: dict[str, tuple[object, ...]] = {
    "num_beams": (1,),
    "num_beam_groups": (1,),
    "num_return_sequences": (1,),
    "diversity_penalty": (0.0,),
    "penalty_alpha": (0.0,),
    "dola_layers": (),
    "repetition_penalty": (1.0,),
    "encoder_repetition_penalty": (1.0,),
    "no_repeat_ngram_size": (0,),
    "encoder_no_repeat_ngram_size": (0,),
    "bad_words_ids": (),
    "sequence_bias": (),
    "suppress_tokens": (),
    "begin_suppress_tokens": (),
    "forced_bos_token_id": (),
    "forced_eos_token_id": (),
    "exponential_decay_length_penalty": (),
    "constraints": (),
    "force_words_ids": (),
    "guidance_scale": (1.0,),
    "watermarking_config": (),
    "stop_strings": (),
    "min_length": (0,),
    "min_new_tokens": (0,),
    "typical_p": (1.0,),
    "epsilon_cutoff": (0.0,),
    "eta_cutoff": (0.0,),
    "top_h": (),
    "renormalize_logits": (False,),
    "remove_invalid_values": (False,),
    "max_time": (),
    "token_healing": (False,),
    "output_logits": (False,),
    "output_attentions": (False,),
    "output_hidden_states": (False,),
}


@dataclass(frozen=True)
class GenerationOptions:
    """What a `GenerationConfig` asks of `Pipeline.generate`; None = not set there."""

    max_new_tokens: int | None
    temperature: float  # 0 = greedy
    top_k: int | None
    top_p: float | None
    min_p: float | None
    eos_token_ids: tuple[int, ...] | None
    output_scores: bool


def _resolved(config: Any, model: object) -> Any:
    """`config` with unset (None) fields taken from `model.generation_config`, as `generate` does."""
    resolved = copy.deepcopy(config)
    model_config = getattr(model, "generation_config", None)
    if model_config is not None:
        for key, value in model_config.to_dict().items():
            if value is not None and getattr(resolved, key, None) is None:
                setattr(resolved, key, value)
    return resolved


def _is_neutral(value: Any, neutral: tuple[object, ...]) -> bool:
    if value is None or value in neutral:
        return True
    return isinstance(value, list | tuple | dict | set) and not value


def options_from_generation_config(config: Any, model: object, prompt_length: int) -> GenerationOptions:
    """Map a `transformers.GenerationConfig` to cas-spec's options, or raise `InputError`."""
    if not callable(getattr(config, "to_dict", None)) or isinstance(config, dict):
        raise InputError(f"generation_config must be a transformers.GenerationConfig, got {type(config).__name__}")
    config = _resolved(config, model)
    unsupported = [
        f"{name}={getattr(config, name)!r}"
        for name, neutral in _NEUTRAL.items()
        if not _is_neutral(getattr(config, name, None), neutral)
    ]
    if unsupported:
        raise InputError(
            "generation_config options that cas-spec cannot honour: "
            + ", ".join(unsupported)
            + " (cas-spec decodes one sequence, greedy or sampled with temperature, top_k, top_p and min_p)"
        )

    def get(name: str) -> Any:
        value = getattr(config, name, None)
        return _DEFAULTS[name] if value is None else value

    max_new_tokens = config.max_new_tokens
    if max_new_tokens is None and config.max_length is not None:  # set by the caller or the model
        max_new_tokens = config.max_length - prompt_length
        if max_new_tokens < 1:
            raise InputError(
                f"generation_config.max_length={config.max_length} leaves no room after a prompt "
                f"of {prompt_length} tokens"
            )
    temperature, top_k, top_p, min_p = 0.0, None, None, None
    if get("do_sample"):
        temperature, top_k, top_p = float(get("temperature")), int(get("top_k")), float(get("top_p"))
        if temperature <= 0:
            raise InputError(f"generation_config: do_sample=True needs temperature > 0, got {temperature}")
        if not 0.0 < top_p <= 1.0:
            raise InputError(f"generation_config: top_p must be in (0, 1], got {top_p}")
        top_k = top_k if top_k > 0 else None  # transformers: top_k=0 disables top-k
        top_p = top_p if top_p < 1.0 else None
        min_p = float(config.min_p) if getattr(config, "min_p", None) else None
        if min_p is not None and not 0.0 <= min_p <= 1.0:
            raise InputError(f"generation_config: min_p must be in [0, 1], got {min_p}")
    eos = config.eos_token_id
    if eos is not None:
        eos = tuple(int(t) for t in eos) if isinstance(eos, list | tuple) else (int(eos),)
    return GenerationOptions(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        eos_token_ids=eos,
        output_scores=bool(config.output_scores),
    )


class Streamer(Protocol):
    """What `StreamerBridge` feeds: any transformers streamer."""

    def put(self, value: torch.Tensor) -> None: ...

    def end(self) -> None: ...


class StreamerBridge:
    """Feeds a transformers streamer: the prompt, each committed chunk, then `end()` (see module)."""

    def __init__(self, streamer: Streamer) -> None:
        if not (callable(getattr(streamer, "put", None)) and callable(getattr(streamer, "end", None))):
            raise InputError(f"streamer must have put(tensor) and end() methods, got {type(streamer).__name__}")
        self.streamer = streamer

    def put_prompt(self, prompt_ids: list[int]) -> None:
        self.streamer.put(torch.tensor([prompt_ids], dtype=torch.long))

    def put(self, tokens: list[int]) -> None:
        if tokens:
            self.streamer.put(torch.tensor([tokens], dtype=torch.long))

    def end(self) -> None:
        self.streamer.end()


__all__ = ["GenerationOptions", "StreamerBridge", "options_from_generation_config"]
