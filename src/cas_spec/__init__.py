"""cas-spec: lossless speculative decoding with cascades of self-speculative drafters.

    import cas_spec
    pipe = cas_spec.load_pipeline("default")
    result = pipe.generate("What is the capital of France?")
    print(result.text, result.stats.mean_acceptance_length)

    # inside transformers' own generate (greedy: identical output; sampling: the same distribution)
    out = model.generate(**inputs, custom_generate=cas_spec.custom_generate("default"), max_new_tokens=64)

    # any loaded model and tokenizer an adapter supports, like model.generate:
    result = cas_spec.generate(model, tokenizer, "Hello", max_new_tokens=32, output_scores=True)

This module is the user API. Plugin authors import `cas_spec.plugin` (base classes, the hook
marker, the types a plugin receives) and test with `cas_spec.testing`.
"""

from cas_spec.core.config import PipelineConfig, load_config
from cas_spec.core.errors import CasSpecError, ConfigError, InputError, UserError
from cas_spec.core.stats import format_stats
from cas_spec.core.types import GenerationStats, LevelStats, SamplingParams
from cas_spec.pipeline import GenerationResult, Pipeline, build_pipeline, generate, load_pipeline
from cas_spec.transformers_hook import custom_generate

__version__ = "0.1.0"

__all__ = [
    "CasSpecError",
    "ConfigError",
    "GenerationResult",
    "GenerationStats",
    "InputError",
    "LevelStats",
    "Pipeline",
    "PipelineConfig",
    "SamplingParams",
    "UserError",
    "build_pipeline",
    "custom_generate",
    "format_stats",
    "generate",
    "load_config",
    "load_pipeline",
]

# Plugin names this module exported before `cas_spec.plugin` existed: still served, with a warning.
_MOVED_TO_PLUGIN = frozenset(
    {"DraftResult", "DraftStrategy", "Scheduler", "TokenTree", "Verdict", "Verifier", "hookimpl"}
)


def __getattr__(name: str):
    if name in _MOVED_TO_PLUGIN:
        import warnings

        import cas_spec.plugin

        warnings.warn(
            f"cas_spec.{name} moved to cas_spec.plugin.{name}; import it from there", DeprecationWarning, stacklevel=2
        )
        return getattr(cas_spec.plugin, name)
    raise AttributeError(f"module 'cas_spec' has no attribute '{name}'")
