"""`retrieval`: REST-style drafting from a text corpus (He et al., "REST: Retrieval-Based
Speculative Decoding", NAACL 2024).

The corpus is tokenized with the target's tokenizer and indexed once (a suffix array, cached on
disk; see `store.py`). Each call finds the longest suffix of the context (`state.tokens +
prefix`, `max_ngram` down to `min_ngram` tokens) that occurs in the corpus, and proposes up to
`num_tokens` tokens that followed it: the most frequent continuation over its occurrences,
token by token (`index.py`; at most `max_candidates` occurrences counted per token). REST
verifies a trie of several continuations; a `DraftResult` is one chain, so this drafts the
trie's most frequent path, and a tree scheduler can still combine it with other levels.

Deterministic: `draft_probs` is None (point masses for the verifier) and the confidence of each
token is the match length n, as for `prompt_lookup`. Never touches the model. Token ids the
model cannot embed (a tokenizer larger than the model's vocabulary) end a proposal.

The tokenizer: the `tokenizer` option (a local folder or a Hugging Face name) when given, else the
pipeline's tokenizer, which `setup` receives (`SetupContext.tokenizer`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cas_spec.plugin import EMPTY_DRAFT, ConfigError, DraftResult, DraftStrategy, SetupContext
from cas_spec_retrieval.corpus import check_corpus
from cas_spec_retrieval.store import load_index


class RetrievalOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    corpus: str = Field(description="UTF-8 text file, or folder of .txt/.md files (relative to the working folder).")
    tokenizer: str | None = Field(None, description="Tokenizer folder or name; default: the pipeline's.")
    max_ngram: int = Field(8, ge=1, le=64, description="Longest context suffix looked up.")
    min_ngram: int = Field(2, ge=1, le=64, description="Shortest context suffix accepted as a match.")
    num_tokens: int = Field(10, ge=1, le=256, description="Most tokens proposed per call.")
    max_candidates: int = Field(64, ge=1, le=1_000_000, description="Most occurrences counted per proposed token.")

    @field_validator("corpus")
    @classmethod
    def _corpus_has_text(cls, path: str) -> str:
        return check_corpus(path)

    @model_validator(mode="after")
    def _ngram_order(self):
        if self.min_ngram > self.max_ngram:
            raise ValueError(f"min_ngram ({self.min_ngram}) must not exceed max_ngram ({self.max_ngram})")
        return self


def resolve_tokenizer(option: str | None, pipeline_tokenizer):
    """The tokenizer to index the corpus with (see the module's docstring); ConfigError if none loads."""
    if option is None:
        if pipeline_tokenizer is None:
            raise ConfigError(
                [
                    "retrieval.tokenizer: the pipeline has no tokenizer; set the `tokenizer` "
                    "option to the tokenizer's folder"
                ]
            )
        return pipeline_tokenizer
    from transformers import AutoTokenizer  # only when the option names one: transformers loads slowly

    try:
        return AutoTokenizer.from_pretrained(option)
    except Exception as exc:  # transformers raises OSError, ValueError, ... depending on the cause
        raise ConfigError(
            [f"retrieval.tokenizer: cannot load a tokenizer from '{option}' ({type(exc).__name__}: {exc})"]
        ) from None


class Retrieval(DraftStrategy):
    name = "retrieval"
    Options = RetrievalOptions

    index = None  # the corpus's `SuffixIndex`, set by `setup`

    def setup(self, context: SetupContext) -> None:
        self.index = load_index(self.options.corpus, resolve_tokenizer(self.options.tokenizer, context.tokenizer))
        self.vocab_size = context.vocab_size

    def draft(self, state, prefix: tuple[int, ...], max_tokens: int) -> DraftResult:
        if self.index is None:
            raise RuntimeError("retrieval: draft() before setup(); build it through a pipeline")
        opts = self.options
        context = (state.tokens[-opts.max_ngram :] + list(prefix))[-opts.max_ngram :]
        match = self.index.longest_match(context, opts.min_ngram, opts.max_ngram)
        if match is None:
            return EMPTY_DRAFT
        tokens = self.index.continuation(match, min(opts.num_tokens, max_tokens), opts.max_candidates)
        tokens = tokens[: next((i for i, t in enumerate(tokens) if t >= self.vocab_size), len(tokens))]
        return DraftResult(tokens=tuple(tokens), confidence=(float(match.n),) * len(tokens))
