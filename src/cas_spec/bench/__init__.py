"""The Spec-Bench harness (`cas-spec bench`): speed and output identity of pipelines and baselines.

questions.py (question files, task groups), runners.py (engine methods and transformers
baselines), run.py (the interleaved loop and its records), report.py (results.json and the table),
plots.py (PNG plots, optional matplotlib), cli.py (`add_parser`, `run`).
"""
