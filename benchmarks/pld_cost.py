"""Mean cost of one `prompt_lookup` draft call at a 4k-token context (CPU, pure Python).

Simulates decoding: from `--context` tokens of context, every step calls `draft` once and then
commits a few tokens (1..4), as the engine does. Reports mean and median microseconds per draft
call for random text over a 49k vocabulary (lookups mostly miss) and for repetitive text (lookups hit and
propose `num_tokens` tokens), with an empty prefix (chain scheduler) and with a 3-token
uncommitted prefix (tree schedulers), and the same at a 16x shorter context for comparison. Run:

    .venv/bin/python benchmarks/pld_cost.py [--context 4096] [--calls 10000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from cas_spec.core.state import DecodingState
from cas_spec.core.types import SamplingParams
from cas_spec.strategies.prompt_lookup import PromptLookup, PromptLookupOptions

VOCAB = 49152


def texts(length: int, rng: random.Random) -> dict[str, list[int]]:
    sentence = [rng.randrange(VOCAB) for _ in range(37)]
    repetitive = [sentence[i % len(sentence)] if rng.random() > 0.05 else rng.randrange(VOCAB) for i in range(length)]
    return {"random": [rng.randrange(VOCAB) for _ in range(length)], "repetitive": repetitive}


def measure(
    text: list[int], context: int, calls: int, prefix_len: int, seed: int, steps: int = 32
) -> tuple[float, float, float]:
    """(mean µs, median µs per draft call, mean drafted tokens per call) over `calls` decoding steps.

    Runs episodes of `steps` calls: each starts from `context` tokens of `text` (random offset),
    indexes them once untimed (prefill-time work), then times `steps` draft calls, committing 1..4
    tokens after each, so the context stays within `context` + 4 * `steps` tokens.
    """
    rng = random.Random(seed)
    options = PromptLookupOptions(max_ngram=4, min_ngram=2, num_tokens=7)  # the default preset
    strategy = PromptLookup(options)
    times: list[float] = []
    drafted = 0
    done = 0
    while done < calls:
        offset = rng.randrange(len(text) - context - 4 * steps)
        state = DecodingState(
            tokens=list(text[offset : offset + context]),
            prompt_length=context,
            sampling=SamplingParams(),
            generator=None,
        )
        strategy.start(state)
        strategy.draft(state, (), 7)  # untimed: indexes the prompt
        pos = offset + context
        for _ in range(min(steps, calls - done)):
            step = rng.randint(1, 4)
            state.tokens.extend(text[pos : pos + step])
            pos += step
            prefix = tuple(text[pos : pos + prefix_len])
            t0 = time.perf_counter()
            result = strategy.draft(state, prefix, 7)
            times.append(time.perf_counter() - t0)
            drafted += len(result)
            done += 1
    return statistics.fmean(times) * 1e6, statistics.median(times) * 1e6, drafted / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=4096, help="tokens of context before the first call")
    parser.add_argument("--calls", type=int, default=10000, help="draft calls measured per case")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    corpus = texts(4 * args.context + 1024, rng)
    print(f"prompt_lookup draft cost, {args.calls} calls per case (max_ngram 4, min_ngram 2, num_tokens 7)")
    print(f"  {'text':<11} {'prefix':>6} {'context':>7} {'mean us':>8} {'median us':>9} {'drafted':>7}")
    short = max(args.context // 16, 64)  # a cost independent of the context length matches it
    for context in (args.context, short):
        for name, text in corpus.items():
            for prefix_len in (0, 3):
                mean, median, drafted = measure(text, context, args.calls, prefix_len, args.seed)
                print(f"  {name:<11} {prefix_len:>6} {context:>7} {mean:8.2f} {median:9.2f} {drafted:7.2f}")


if __name__ == "__main__":
    main()
