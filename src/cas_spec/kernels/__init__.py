"""Cheap verification forwards on CPU (float32): row-count linear kernels, GQA attention, threads.

(placeholder docstring: replaced with the measured gains)
"""

from cas_spec.kernels.attention import NAME as ATTENTION_NAME
from cas_spec.kernels.attention import MissingMaskError, attention_kernel, register_attention, sdpa_gqa_attention
from cas_spec.kernels.linear import (
    KERNELS,
    STOCK_PLAN,
    LinearPlan,
    available_kernels,
    cached_copy_bytes,
    extra_memory_bytes,
    kernel_status,
    linear_kernels,
    release_copies,
)
from cas_spec.kernels.select import DEFAULT_NS, Selection, plan_from_timings, select_plan, time_forwards
from cas_spec.kernels.threads import threads

__all__ = [
    "ATTENTION_NAME", "DEFAULT_NS", "KERNELS", "STOCK_PLAN", "LinearPlan", "MissingMaskError", "Selection",
    "attention_kernel", "available_kernels", "cached_copy_bytes", "extra_memory_bytes", "kernel_status",
    "linear_kernels", "plan_from_timings", "register_attention", "release_copies", "sdpa_gqa_attention", "select_plan", "threads",
    "time_forwards",
]
