"""DyTC, CAS-Spec's dynamic tree cascade: the `dytc` scheduler and its parts.

- `scheduler.py`: `DytcScheduler`, which grows one token tree per step from every level's
  drafts (the algorithm, with the paper's notation, is its module docstring);
- `options.py`: its YAML options;
- `valued_tree.py`: the tree under construction, with each node's value and what its siblings cover;
- `proposals.py`: what a level proposed at a node, scored against the committed text;
- `estimates.py`: what it learns online: latencies, acceptance, confidence calibration, probes.
"""

from cas_spec.schedulers.dytc.options import DytcOptions
from cas_spec.schedulers.dytc.scheduler import DytcScheduler

__all__ = ["DytcOptions", "DytcScheduler"]
