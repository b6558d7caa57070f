"""cas-spec-retrieval: a cas-spec plugin that drafts from a text corpus (REST-style retrieval)."""

from cas_spec_retrieval.strategy import Retrieval, RetrievalOptions

__all__ = ["Retrieval", "RetrievalOptions"]
__version__ = "0.1.0"
