"""Test set-up: entry points load under pytest (the plugin is found the way users find it),
index and calibration files go to a throw-away cache, and the stories260K model of the cas-spec
repository (`tests/fixtures/stories260K`, found above this package; `CAS_SPEC_STORIES` points
elsewhere) is the target."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ["CAS_SPEC_LOAD_ENTRYPOINTS"] = "1"  # before cas-spec builds its plugin set
os.environ["CAS_SPEC_CACHE"] = tempfile.mkdtemp(prefix="cas-spec-retrieval-test-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

from cas_spec.plugin import SetupContext
from cas_spec_retrieval import store

torch.set_num_threads(1)

PACKAGE = Path(__file__).parents[1]
DATA = Path(__file__).parent / "data"
CORPUS = DATA / "corpus"
PIPELINE = PACKAGE / "pipelines" / "retrieval.yaml"


def find_stories() -> Path:
    """`CAS_SPEC_STORIES`, else the first `tests/fixtures/stories260K` above this package."""
    if os.environ.get("CAS_SPEC_STORIES"):
        return Path(os.environ["CAS_SPEC_STORIES"])
    for folder in PACKAGE.resolve().parents:
        if (folder / "tests" / "fixtures" / "stories260K").is_dir():
            return folder / "tests" / "fixtures" / "stories260K"
    raise RuntimeError(
        "stories260K not found: set CAS_SPEC_STORIES to the cas-spec repository's tests/fixtures/stories260K"
    )


STORIES = find_stories()


@pytest.fixture(scope="session")
def stories():
    """(model, tokenizer) of stories260K (MIT, llama2.c)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(STORIES), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(STORIES))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh, empty cache dir and no index in memory."""
    monkeypatch.setenv("CAS_SPEC_CACHE", str(tmp_path))
    store.clear_memory()
    yield tmp_path
    store.clear_memory()


def setup_context(tokenizer, vocab_size=512) -> SetupContext:
    """What a pipeline hands `Retrieval.setup`: its tokenizer and the model's vocabulary size."""
    return SetupContext(tokenizer=tokenizer, vocab_size=vocab_size)
