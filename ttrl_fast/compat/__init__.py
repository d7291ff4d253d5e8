"""Drop-in signatures of other libraries, backed by ttrl_fast's kernels."""
