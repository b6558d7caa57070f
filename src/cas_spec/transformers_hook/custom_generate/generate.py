"""transformers' folder form of `custom_generate`, for

    model.generate(**inputs, custom_generate=str(cas_spec.transformers_hook.folder()),
                   trust_remote_code=True, cas_spec_pipeline="default", max_new_tokens=64)

transformers loads this file by path and calls `generate(model=..., **everything generate got)`;
it hands the call back to `model.generate` with the callable form, which does the work."""

from __future__ import annotations

from typing import Any

from cas_spec.transformers_hook import CustomGenerate, custom_generate

# one per (pipeline, tokenizer), so each model's pipeline is built once
_callables: dict[tuple[str, int], CustomGenerate] = {}


def generate(model: Any, cas_spec_pipeline: str = "default", **kwargs: Any) -> Any:
    """Run `model.generate` with `cas_spec.custom_generate(cas_spec_pipeline)` (a preset or a YAML
    path), with `generate`'s `tokenizer=` (if given) as the pipeline's tokenizer."""
    tokenizer = kwargs.get("tokenizer")
    key = (str(cas_spec_pipeline), id(tokenizer))
    if key not in _callables:
        _callables[key] = custom_generate(cas_spec_pipeline, tokenizer=tokenizer)
    return model.generate(custom_generate=_callables[key], **kwargs)
