"""The C++ CPU backend: thin shims over `ttrl_fast._C_cpu` (raw contract in kernels/__init__.py).
Validation and allocation happen in the extension's bindings; dispatch happens in ttrl_fast.backends."""
from ttrl_fast.kernels._compiled import compiled_function

selective_log_softmax_fwd = compiled_function("cpu", "selective_log_softmax_fwd")
selective_log_softmax_bwd = compiled_function("cpu", "selective_log_softmax_bwd")
policy_loss_fwd = compiled_function("cpu", "policy_loss_fwd")
group_advantages_fwd = compiled_function("cpu", "group_advantages_fwd")
sample_tokens_fwd = compiled_function("cpu", "sample_tokens_fwd")
