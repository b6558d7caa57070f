"""Prompts in, text and scores out: what `Pipeline.generate` takes and gives besides token ids.

A prompt is text (through the tokenizer's chat template or not) or token ids (a list, a 1-D or
[1, L] tensor, a tokenizer's output). Committed tokens stream out as text (`TextStreamer`, only
complete UTF-8), and the target logits they were verified against as transformers' `scores`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from cas_spec.core.errors import InputError
from cas_spec.core.sampling import warp_logits
from cas_spec.core.types import SamplingParams

Prompt = str | Sequence[int] | torch.Tensor | Mapping[str, Any]


def wants_chat(tokenizer: Any, chat: bool | None) -> bool:
    """Whether text prompts go through the chat template: `chat`, or (None) when there is one."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if chat is None:
        return has_template
    if chat and not has_template:
        raise InputError("this model has no chat template; use raw completion (--no-chat)")
    return chat


def encode_prompt(tokenizer: Any, prompt: Prompt, chat: bool | None) -> list[int]:
    """Prompt token ids: token ids pass through; text goes through the chat template or not."""
    if isinstance(prompt, Mapping):
        if "input_ids" not in prompt:
            raise InputError("a mapping prompt needs 'input_ids' (a tokenizer's output)")
        prompt = prompt["input_ids"]
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() == 2 and prompt.shape[0] != 1:
            raise InputError(f"input_ids hold a batch of {prompt.shape[0]}; cas-spec decodes one sequence")
        if prompt.dim() not in (1, 2) or prompt.is_floating_point():
            raise InputError(
                f"input_ids must be a 1-D or [1, L] integer tensor, got {tuple(prompt.shape)} {prompt.dtype}"
            )
        prompt = prompt.reshape(-1).tolist()
    if isinstance(prompt, list | tuple):
        if len(prompt) == 1 and isinstance(prompt[0], list | tuple):  # [[ids]]: a batch of one
            prompt = prompt[0]
        return [int(t) for t in prompt]
    if not isinstance(prompt, str):
        raise InputError(f"the prompt must be text or token ids, got {type(prompt).__name__}")
    if not prompt.strip():
        raise InputError("the prompt is empty")
    if wants_chat(tokenizer, chat):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, Mapping) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)
    return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])


def scores_of(step_logits: list[torch.Tensor], sampling: SamplingParams) -> tuple[torch.Tensor, ...]:
    """Per new token a [1, V] tensor: raw logits when greedy, else warped as the verifier warps them."""
    if not step_logits:
        return ()
    logits = torch.cat(step_logits)
    if not sampling.greedy:
        logits = warp_logits(logits, sampling)
    return tuple(torch.split(logits, 1))  # Tensor.split is untyped; torch.split calls it


class TextStreamer:
    """Decodes committed tokens incrementally and passes on only complete new text."""

    def __init__(self, tokenizer: Any, sink: Callable[[str], None]):
        self.tokenizer, self.sink = tokenizer, sink
        self.ids: list[int] = []
        self.printed = 0

    def push(self, tokens: list[int]) -> None:
        self.ids.extend(tokens)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return
        self.sink(text[self.printed :])
        self.printed = len(text)

    def flush(self) -> None:
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if len(text) > self.printed:
            self.sink(text[self.printed :])
        self.printed = len(text)


__all__ = ["Prompt", "TextStreamer", "encode_prompt", "scores_of", "wants_chat"]
