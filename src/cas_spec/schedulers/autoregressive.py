"""`autoregressive`: no drafting. Every step verifies the root alone, i.e. plain decoding
through the same engine, kernels and verifier; the reference path of every equality test."""

from __future__ import annotations

from cas_spec.core.interfaces import Scheduler
from cas_spec.core.state import DecodingState
from cas_spec.core.tree import TreeBuilder
from cas_spec.core.types import TokenTree


class AutoregressiveScheduler(Scheduler):
    name = "autoregressive"

    def build_tree(self, state: DecodingState) -> TokenTree:
        return TreeBuilder(state.root_token).build()
