"""Text that ships with cas-spec: the Spec-Bench and MT-Bench question files (`questions.py` loads
and validates them). The benchmark reads them, calibration measures drafting costs on them, and
the frequency-ranked draft head counts its token frequencies on them."""
