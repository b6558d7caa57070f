"""`docs/images/step.png`: the data flow of one decoding step, drawn with matplotlib.

Each box names the method that does the work (`STEPS`); the docs tests check that every one of
them exists, so the picture cannot name a method the code no longer has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# (owner, class that defines the method, method, what it does); the loop runs top to bottom.
STEPS = (
    (
        "engine",
        "cas_spec.core.target.Target",
        "prefill",
        "prompt[:-1] into the KV cache; the newest prompt token is the first tree's root",
    ),
    (
        "scheduler",
        "cas_spec.core.interfaces.Scheduler",
        "build_tree",
        "picks levels and nodes; each level drafts a chain below a node -> TokenTree",
    ),
    (
        "strategy",
        "cas_spec.core.interfaces.DraftStrategy",
        "draft",
        "called by the scheduler (through Level.draft): tokens, q or None, confidence",
    ),
    (
        "engine",
        "cas_spec.core.target.Target",
        "forward_tree",
        "cache rolled back to the committed tokens; ONE target forward over every node",
    ),
    (
        "verifier",
        "cas_spec.core.interfaces.Verifier",
        "verify",
        "greedy walk or speculative sampling -> Verdict: accepted path + bonus token",
    ),
    (
        "engine",
        "cas_spec.core.target.Target",
        "commit",
        "keep the KV of the root and the accepted path, drop every other node",
    ),
    (
        "scheduler",
        "cas_spec.core.interfaces.Scheduler",
        "observe",
        "acceptance and timings update the estimates and the latency model",
    ),
)
COLOURS = {"engine": "#dbe9f6", "scheduler": "#fde2c8", "strategy": "#e3f1d9", "verifier": "#f3dcef"}
OWNER_LABELS = {
    "engine": "engine / target (owns the loop and the KV cache)",
    "scheduler": "scheduler (policy)",
    "strategy": "strategy / level (drafting)",
    "verifier": "verifier (acceptance rule)",
}


def draw(path: Path) -> Path:
    """Draw the diagram into `path` (PNG) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(11, 6.8))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 8.6)
    ax.axis("off")
    height, gap, left, width = 0.78, 0.34, 2.2, 8.6
    tops = [8.5 - i * (height + gap) for i in range(len(STEPS))]
    for (owner, cls, method, text), top in zip(STEPS, tops):
        x = left + (0.6 if owner == "strategy" else 0.0)
        ax.add_patch(
            FancyBboxPatch(
                (x, top - height),
                width - (x - left),
                height,
                boxstyle="round,pad=0.02,rounding_size=0.08",
                facecolor=COLOURS[owner],
                edgecolor="#555555",
                linewidth=0.8,
            )
        )
        ax.text(
            x + 0.15,
            top - 0.28,
            f"{cls.rsplit('.', 1)[1]}.{method}",
            fontsize=10.5,
            fontweight="bold",
            family="monospace",
            va="center",
        )
        ax.text(x + 0.15, top - 0.58, text, fontsize=9, va="center")
    arrow: dict[str, Any] = dict(arrowstyle="-|>", mutation_scale=12, color="#333333", linewidth=1.0)
    spine = left + 0.3
    for i in range(len(STEPS) - 1):
        if i == 2:  # draft returns to build_tree; the sequence goes on from build_tree
            continue
        end = tops[3] if i == 1 else tops[i + 1]  # build_tree's arrow passes draft by
        ax.add_patch(FancyArrowPatch((spine, tops[i] - height), (spine, end), **arrow))
    ax.add_patch(FancyArrowPatch((left + 0.9, tops[1] - height), (left + 0.9, tops[2]), linestyle="--", **arrow))
    ax.text(left + 1.0, tops[1] - height - gap / 2, "calls", fontsize=8, va="center")
    loop_top, loop_bottom = tops[1] - height / 2, tops[-1] - height / 2
    ax.add_patch(FancyArrowPatch((left, loop_bottom), (left, loop_top), connectionstyle="arc3,rad=-0.5", **arrow))
    ax.text(
        0.0,
        (loop_top + loop_bottom) / 2,
        "next step,\nuntil EOS,\nmax_new_tokens\nor the\ncontext limit",
        fontsize=8.5,
        va="center",
        ha="left",
    )
    x = left
    for owner, label in OWNER_LABELS.items():
        ax.add_patch(
            FancyBboxPatch(
                (x, 0.12),
                0.22,
                0.18,
                boxstyle="round,pad=0.01",
                facecolor=COLOURS[owner],
                edgecolor="#555555",
                linewidth=0.6,
            )
        )
        ax.text(x + 0.3, 0.21, label, fontsize=7.5, va="center")
        x += 0.5 + 0.07 * len(label)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path
