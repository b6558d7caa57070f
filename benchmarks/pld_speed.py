"""Speed of the default pipeline against plain decoding and transformers' prompt lookup.

SmolLM2-135M, greedy, 1 thread, N prompts per Spec-Bench group, all methods interleaved per
prompt in one process. Speedup = total new tokens / total decoding time, relative to
autoregressive decoding through the same engine; transformers' methods relative to its own
greedy `generate`. Every output is compared token for token with the engine's autoregressive one.

    .venv/bin/python benchmarks/pld_speed.py --prompts-per-group 4 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

GROUPS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
QUESTIONS = Path("/work/shared/data/spec_bench_question.jsonl")


def load_questions(path: Path, per_group: int) -> list[tuple[str, str]]:
    picked: dict[str, list[str]] = defaultdict(list)
    for line in path.read_text().splitlines():
        q = json.loads(line)
        group = q["category"] if q["category"] in GROUPS else "mt_bench"
        if len(picked[group]) < per_group:
            picked[group].append(q["turns"][0])
    return [(g, p) for g in GROUPS for p in picked[g]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts-per-group", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--questions", type=Path, default=QUESTIONS)
    parser.add_argument("--pipelines", nargs="+", default=["default"])
    args = parser.parse_args()
    torch.set_num_threads(1)

    from cas_spec import load_pipeline
    from cas_spec.core.models import load_model

    model, tokenizer = load_model("smollm2-135m", "cpu", "float32")
    engine = {name: load_pipeline(name, model=model, tokenizer=tokenizer)
              for name in ["autoregressive", *args.pipelines]}
    n = args.max_new_tokens

    def hf(ids, **kw):
        with torch.inference_mode():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=n, do_sample=False, **kw)
        return out[0, len(ids):].tolist()

    methods = {name: (lambda ids, p=pipe: p.generate(ids, max_new_tokens=n).token_ids) for name, pipe in engine.items()}
    methods["hf:greedy"] = lambda ids: hf(ids)
    methods["hf:prompt_lookup"] = lambda ids: hf(ids, prompt_lookup_num_tokens=10)

    questions = load_questions(args.questions, args.prompts_per_group)
    warm = engine["autoregressive"].encode(questions[0][1])
    for fn in methods.values():
        fn(warm[:40])
    tokens = defaultdict(lambda: defaultdict(int))
    seconds = defaultdict(lambda: defaultdict(float))
    mismatches = defaultdict(int)
    for i, (group, prompt) in enumerate(questions):
        ids = engine["autoregressive"].encode(prompt)
        reference = None
        order = list(methods) if i % 2 == 0 else list(methods)[::-1]  # interleave, alternate order
        outputs = {}
        for name in order:
            start = time.perf_counter()
            out = methods[name](ids)
            seconds[name][group] += time.perf_counter() - start
            tokens[name][group] += len(out)
            outputs[name] = out
        reference = outputs["autoregressive"]
        for name, out in outputs.items():
            mismatches[name] += out != reference
        print(f"[{i + 1}/{len(questions)}] {group}", flush=True)

    def speed(name, groups):
        return sum(tokens[name][g] for g in groups) / sum(seconds[name][g] for g in groups)

    columns = [*GROUPS, "overall"]
    print("\n| method | " + " | ".join(columns) + " | mismatches |")
    print("|---" * (len(columns) + 2) + "|")
    for name in methods:
        base = "hf:greedy" if name.startswith("hf:") else "autoregressive"
        cells = [f"{speed(name, [g]) / speed(base, [g]):.2f}×" for g in GROUPS]
        cells.append(f"{speed(name, GROUPS) / speed(base, GROUPS):.2f}×")
        print(f"| {name} (vs {base}) | " + " | ".join(cells) + f" | {mismatches[name]} |")
    for name in args.pipelines:
        cells = [f"{speed(name, [g]) / speed('hf:prompt_lookup', [g]):.2f}×" for g in GROUPS]
        cells.append(f"{speed(name, GROUPS) / speed('hf:prompt_lookup', GROUPS):.2f}×")
        print(f"| {name} (vs hf:prompt_lookup) | " + " | ".join(cells) + " | |")
    ar = speed("autoregressive", GROUPS)
    print(f"\nautoregressive through the engine: {ar:.2f} tokens/s; hf greedy: {speed('hf:greedy', GROUPS):.2f} tokens/s")


if __name__ == "__main__":
    main()
