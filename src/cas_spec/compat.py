"""What differs between the supported transformers releases, in one place (a leaf module).

transformers 5.25 renamed the models' `past_key_values` argument to `cache` and warns on the old
name (removal announced for 5.40); earlier releases know only `past_key_values`. Every forward
cas-spec runs passes its cache through `cache_argument`, so no release warns and none breaks.
"""

from __future__ import annotations

import inspect

_cache_keywords: dict[type, str] = {}  # model class -> the name its forward takes the cache by


def cache_argument(model: object, cache_object: object) -> dict[str, object]:
    """`{name: cache_object}` under the name `model`'s forward takes its KV cache by: `cache` where
    the installed transformers has it, else `past_key_values`."""
    model_type = type(model)
    name = _cache_keywords.get(model_type)
    if name is None:
        forward = getattr(model_type, "forward", None)
        parameters = inspect.signature(forward).parameters if forward is not None else {}
        name = _cache_keywords[model_type] = "cache" if "cache" in parameters else "past_key_values"
    return {name: cache_object}


__all__ = ["cache_argument"]
