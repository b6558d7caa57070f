"""`cas_spec.compat`: the cache goes by the name the installed transformers' models take."""

from __future__ import annotations

import inspect

from cas_spec.compat import cache_argument
from tests.helpers import tiny_llama


class _Old:
    def forward(self, input_ids=None, past_key_values=None): ...


class _New:
    def forward(self, input_ids=None, cache=None): ...


def test_the_cache_goes_by_the_name_the_forward_takes():
    sentinel = object()
    assert cache_argument(_Old(), sentinel) == {"past_key_values": sentinel}
    assert cache_argument(_New(), sentinel) == {"cache": sentinel}


def test_the_installed_transformers_models_take_what_cache_argument_passes():
    model = tiny_llama(0)
    (name,) = cache_argument(model, None)
    assert name in inspect.signature(type(model).forward).parameters


def test_the_lowest_environment_tests_the_declared_lower_bound():
    """`make test-lowest` installs exactly the oldest transformers pyproject.toml admits."""
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.version import Version

    root = Path(__file__).resolve().parents[1]
    requirements = [
        Requirement(r) for r in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    (transformers,) = [r for r in requirements if r.name == "transformers"]
    (lower,) = [Version(s.version) for s in transformers.specifier if s.operator == ">="]
    pins = dict(
        line.split("==")
        for line in (root / "constraints-lowest.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert Version(pins["transformers"]) == lower
    assert pins["torch"] == (root / "constraints.txt").read_text().split("==")[1].strip()
