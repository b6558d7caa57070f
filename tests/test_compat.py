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
