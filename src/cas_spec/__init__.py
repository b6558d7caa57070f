"""cas-spec: lossless speculative decoding with cascades of self-speculative drafters.

    import cas_spec
    pipe = cas_spec.load_pipeline("default")
    result = pipe.generate("What is the capital of France?")
    print(result.text, result.stats.mean_acceptance_length)

    # any loaded model and tokenizer an adapter supports, like model.generate:
    result = cas_spec.generate(model, tokenizer, "Hello", max_new_tokens=32, output_scores=True)
"""

from cas_spec.core.config import PipelineConfig, load_config
from cas_spec.core.errors import CasSpecError, ConfigError, InputError, UserError
from cas_spec.core.hookspecs import hookimpl
from cas_spec.core.interfaces import DraftStrategy, Scheduler, Verifier
from cas_spec.core.pipeline import GenerationResult, Pipeline, generate, load_pipeline
from cas_spec.core.types import DraftResult, GenerationStats, SamplingParams, TokenTree, Verdict

__version__ = "0.1.0"

__all__ = [
    "CasSpecError", "ConfigError", "DraftResult", "DraftStrategy", "GenerationResult",
    "GenerationStats", "InputError", "Pipeline", "PipelineConfig", "SamplingParams", "Scheduler",
    "TokenTree", "UserError", "Verdict", "Verifier", "generate", "hookimpl", "load_config", "load_pipeline",
]
