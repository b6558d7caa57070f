"""`DytcOptions`: the `dytc` scheduler's options (what each does: `scheduler.py`'s docstring)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DytcOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ema_decay: float = Field(0.7, ge=0.0, lt=1.0, description="λ of the per-level acceptance EMA.")
    window: int = Field(20, ge=1, description="Steps in the recent-acceptance window H.")
    warmup: int = Field(20, ge=0, description="Steps before the EMA takes over from the running rate.")
    prior_alpha: float = Field(
        0.6,
        gt=0.0,
        lt=1.0,
        description="Acceptance assumed for a level before it "
        "drafts, unless calibration measured its agreement with the target.",
    )
    objective: Literal["step_value", "astar"] = Field(
        "step_value",
        description="Ranking of the expansions that pay: step_value = the largest net gain "
        "in tokens at the step's bar; astar = the paper's A*-style T_s (see the module docstring).",
    )
    max_draft: int = Field(8, ge=1, le=64, description="Most tokens one draft call is asked for.")
    max_nodes: int = Field(24, ge=2, le=256, description="Most tree nodes, root included (a hard bound).")
    expand_nodes: int = Field(
        4, ge=1, le=64, description="Nodes with the most uncovered value weighed for a new branch at each growth step."
    )
    siblings: int = Field(2, ge=0, le=8, description="Runners-up of a model draft added as siblings.")
    sibling_min_prob: float = Field(0.1, ge=0.0, le=1.0, description="Least draft probability of a sibling.")
    probe_interval: int = Field(16, ge=1, description="Steps after which an unused level drafts a probe.")
    max_probe_interval: int = Field(64, ge=1, description="Longest probe interval after probes that missed.")
    probe_tokens: int = Field(1, ge=1, le=64, description="Tokens a probe drafts.")
    carry_over: bool = Field(
        True,
        description="Keep what was learned (costs, acceptance, calibration, probe "
        "intervals) from one generation of the pipeline to the next.",
    )
    free_cost: float = Field(
        0.02,
        ge=0.0,
        description="A level whose full draft costs less than this (in "
        "one-token target forwards) is asked for its proposal before it is weighed.",
    )
