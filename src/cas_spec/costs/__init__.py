"""Calibration: the measured cost of target forwards by number of new tokens, per model,
machine and thread count (`cas-spec calibrate`). Schedulers use it to choose how many tokens to
verify; nothing here is a constant, because the cost curve changes between machines."""

from cas_spec.costs.table import CostTable, calibration_key, load_cached, save

__all__ = ["CostTable", "calibration_key", "load_cached", "save"]
