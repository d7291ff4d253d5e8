"""Property tests (hypothesis) of every public op against the float64 reference, on every backend.

Deterministic by construction: every property runs with ``derandomize=True, database=None,
deadline=None`` (see conftest.prop_settings), so CI sees the same examples on every run.
"""
