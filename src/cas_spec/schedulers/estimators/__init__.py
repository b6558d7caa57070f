"""What schedulers estimate online: acceptance (`acceptance.py`) and draft and verification costs
(`latency.py`), shared by `chain`, `dytc` and the gate."""
