"""Shared fixtures: tiny random models, the stories260K fixture, SmolLM2, hypothesis profiles."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# The tiny model builders live in the testing kit; re-exported for `from tests.conftest import ...`.
from cas_spec.testing.models import IdTokenizer, tiny_gemma3, tiny_llama  # noqa: F401

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Calibration tables measured by the tests go to a throw-away cache; models stay in the real one.
_REAL_CACHE = Path(os.environ.get("CAS_SPEC_CACHE") or Path.home() / ".cache" / "cas-spec")
_TEST_CACHE = Path(tempfile.mkdtemp(prefix="cas-spec-test-cache-"))
(_REAL_CACHE / "models").mkdir(parents=True, exist_ok=True)
(_TEST_CACHE / "models").symlink_to(_REAL_CACHE / "models", target_is_directory=True)
os.environ["CAS_SPEC_CACHE"] = str(_TEST_CACHE)
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(1)

settings.register_profile(
    "dev",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

FIXTURES = Path(__file__).parent / "fixtures"
STORIES = FIXTURES / "stories260K"


@pytest.fixture(scope="session")
def stories():
    """(model, tokenizer) of the stories260K fixture (MIT, llama2.c)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(STORIES), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(STORIES))


@pytest.fixture(scope="session")
def gemma3():
    """(model, tokenizer) of Gemma 3 270M (Gemma Terms of Use), fetched and converted on first use."""
    from cas_spec.hub import load_model

    return load_model("gemma3-270m", "cpu", "float32")


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of SmolLM2-135M-Instruct, fetched and converted on first use."""
    from cas_spec.hub import load_model

    return load_model("smollm2-135m", "cpu", "float32")
