"""Pure-PyTorch reference: the math spec of every op and the universal fallback backend.

This package imports nothing else from ttrl_fast, so it can serve as an independent oracle.
"""
from ttrl_fast.reference.logprob import selective_log_softmax, selective_log_softmax_bwd, selective_log_softmax_fwd

__all__ = ["selective_log_softmax", "selective_log_softmax_fwd", "selective_log_softmax_bwd"]
