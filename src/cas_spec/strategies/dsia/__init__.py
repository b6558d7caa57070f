"""The machinery shared by the self-speculative (DSIA) strategies, which draft with the target model
itself switched into a cheaper mode: the draft loop (`self_draft.py`), the modes (`variants.py`:
skipped sublayers, an early exit, int8 twins), the int8 twins and their backends (`twins.py`,
`quantization/`), and the skip-set search of `layer_sparsity` (`skip_search.py`)."""
