"""Fixtures for the kernel tests: a tiny random Llama, and oneDNN's status kept per test."""

from __future__ import annotations

import pytest

from cas_spec.kernels import linear as linear_mod
from tests.helpers import gqa_llama


@pytest.fixture
def model():
    return gqa_llama()


@pytest.fixture(autouse=True)
def _keep_onednn_status():
    """Tests may mark oneDNN as failed; give the next test the real status back."""
    saved = dict(linear_mod._status)
    yield
    linear_mod._status.clear()
    linear_mod._status.update(saved)
