"""The contract every cas-spec strategy keeps, from cas-spec's testing kit.

The kit checks on tiny random models with a vocabulary of 96 and no tokenizer of their own, so
the corpus here is text of token ids ("5 7 5 ..."), indexed with a word-level tokenizer that maps
the words "0" … "95" to those ids (`data/id-tokenizer`; other words become id 96, which the
strategy never proposes to a 96-token model). The corpus holds the kit's own prompts: the kit
requires that something be drafted, and a corpus that shares no n-gram with them drafts nothing.
"""

import tempfile
from pathlib import Path

from cas_spec.testing import StrategyContract

DATA = Path(__file__).parent / "data"


def id_corpus() -> str:
    """A corpus folder holding the contract's prompts as text of token ids."""
    folder = Path(tempfile.mkdtemp(prefix="cas-spec-retrieval-contract-"))
    prompts = [*StrategyContract().prompts(), StrategyContract.sampling_prompt]
    (folder / "ids.txt").write_text("\n".join(" ".join(map(str, prompt)) for prompt in prompts) + "\n")
    return str(folder)


class TestRetrievalContract(StrategyContract):
    plugin_name = "retrieval"
    options = {"corpus": id_corpus(), "tokenizer": str(DATA / "id-tokenizer")}
    invalid_options = [{"corpus": "/nonexistent"}, {"num_tokens": 0}]
