"""The testing kit for plugin authors (`pip install "cas-spec[testing]"`; see docs/testing.md).

- `cas_spec.testing.models`: tiny random models of every supported architecture, `IdTokenizer`
  (needs only the core install).
- `cas_spec.testing.strategies`: hypothesis strategies: distributions, token sequences, token
  trees, sampling parameters, draft results (needs hypothesis).
- `cas_spec.testing.contracts`: `StrategyContract` and `SchedulerContract`, test classes a
  plugin's test module subclasses (needs pytest).
- `cas_spec.testing.exact`, `.stats`, `.harness`: the exact laws, seeded statistical tests and
  pipeline instruments the contracts are built from.

Names are imported lazily, so `import cas_spec.testing` needs neither pytest nor hypothesis.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "StrategyContract": "contracts",
    "SchedulerContract": "contracts",
    "PluginContract": "contracts",
    "tiny_llama": "models",
    "tiny_gemma3": "models",
    "tiny_qwen3": "models",
    "tiny_phi3": "models",
    "tiny_model": "models",
    "peaked_llama": "models",
    "repetitive_prompt": "models",
    "sampling_llama": "models",
    "sampling_model": "models",
    "IdTokenizer": "models",
    "ARCHITECTURES": "models",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"cas_spec.testing.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'cas_spec.testing' has no attribute '{name}'")
