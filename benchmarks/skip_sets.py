"""How well skip sets agree with the target: searched vs evenly spaced vs the last layers.

For a few Spec-Bench prompts, the target generates greedily; then each skip set runs, in one
pass over the generated text that reads the target's KV of the prompt, and its argmax is compared
with the target's next token at every position (the agreement a draft token has, given a correct
prefix). The searched set is the one cached by `layer_sparsity` (run a `layer-sparsity` pipeline
first, e.g. `cas-spec bench --methods layer-sparsity`).

    python benchmarks/skip_sets.py --model smollm2-135m --sparsity 0.4
"""

from __future__ import annotations

import argparse

import torch

from cas_spec import load_pipeline
from cas_spec.data.questions import group_questions, load_questions
from cas_spec.strategies.dsia.skip_search import load_cached, model_fingerprint
from cas_spec.strategies.dsia.variants import ATTENTION, MLP, Sublayer, build_variant, skippable_sublayers


def agreement(pipe, prompt_ids: list[int], generated: list[int], skip) -> float:
    target, adapter = pipe.target, pipe.adapter
    target.prefill(prompt_ids)
    ids = torch.tensor([generated[:-1]])
    positions = torch.arange(len(prompt_ids), len(prompt_ids) + ids.shape[1])[None]
    with torch.inference_mode(), adapter.swapped(build_variant(adapter, skip=skip).layers):
        logits = pipe.model(input_ids=ids, position_ids=positions, past_key_values=target.cache, use_cache=True).logits[
            0
        ]
    return float((logits.argmax(-1) == torch.tensor(generated[1:])).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.4)
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pipe = load_pipeline({"model": args.model, "scheduler": {"kind": "autoregressive"}, "calibration": "off"})
    adapter = pipe.adapter
    candidates = skippable_sublayers(adapter)
    count = int((adapter.num_layers - 2) * 2 * args.sparsity)
    cached = load_cached(model_fingerprint(pipe.model), args.sparsity)
    sets = {
        "evenly spaced": frozenset(candidates[round(i * (len(candidates) - 1) / (count - 1))] for i in range(count)),
        "last layers": frozenset(sorted(candidates, key=lambda s: (-s.layer, s.kind))[:count]),
        "every MLP first": frozenset(
            ([s for s in candidates if s.kind == MLP] + [s for s in candidates if s.kind == ATTENTION])[:count]
        ),
    }
    if cached:
        sets["searched (cached)"] = frozenset(map(Sublayer.parse, cached["skip"]))
    _, questions = load_questions("spec_bench")
    chosen = [qs[0] for qs in group_questions(questions).values()][: args.prompts]
    scores = {name: [] for name in sets}
    for question in chosen:
        prompt_ids = pipe.encode(question.prompt)
        generated = [prompt_ids[-1]] + pipe.generate(prompt_ids, max_new_tokens=args.max_new_tokens).token_ids
        for name, skip in sets.items():
            scores[name].append(agreement(pipe, prompt_ids[:-1], generated, skip))
    print(
        f"{args.model}: {count} of {2 * (adapter.num_layers - 2)} sublayers skipped; agreement with the "
        f"target's greedy tokens over {len(chosen)} prompts × {args.max_new_tokens} tokens"
    )
    for name, values in scores.items():
        print(f"  {name:<20} {sum(values) / len(values):.2f}")


if __name__ == "__main__":
    main()
