"""Session set-up and shared fixtures: a throw-away cache for what the tests measure (removed at
the end), one thread, offline hub; the stories260K fixture, Gemma 3 270M and SmolLM2-135M.
Shared data and tools live in `tests/helpers.py`; nothing here runs at import time but the
hypothesis profiles."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from cas_spec.paths import CACHE_ENV, cache_dir
from tests.helpers import STORIES

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


@pytest.fixture(scope="session", autouse=True)
def test_environment() -> Iterator[Path]:
    """Calibration tables measured by the tests go to a throw-away cache (its `models/` links to
    the real cache, so fetched models are reused); one thread; offline hub; quiet transformers.
    Everything is restored and the throw-away cache removed when the session ends."""
    real_models = cache_dir() / "models"
    real_models.mkdir(parents=True, exist_ok=True)
    test_cache = Path(tempfile.mkdtemp(prefix="cas-spec-test-cache-"))
    (test_cache / "models").symlink_to(real_models, target_is_directory=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(CACHE_ENV, str(test_cache))
        env.setenv("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "1"))
        env.setenv("TRANSFORMERS_VERBOSITY", os.environ.get("TRANSFORMERS_VERBOSITY", "error"))
        try:
            yield test_cache
        finally:
            torch.set_num_threads(threads)
            (test_cache / "models").unlink()
            shutil.rmtree(test_cache, ignore_errors=True)


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
