"""Built-in verifiers, registered through the same hook as third-party plugins."""

from cas_spec.core.hookspecs import hookimpl
from cas_spec.core.interfaces import Verifier
from cas_spec.core.registry import Registry
from cas_spec.verifiers.greedy import GreedyVerifier
from cas_spec.verifiers.sampling import SamplingVerifier

__all__ = ["GreedyVerifier", "SamplingVerifier"]


@hookimpl
def register_verifiers(registry: Registry[Verifier]) -> None:
    registry.add(GreedyVerifier)
    registry.add(SamplingVerifier)
