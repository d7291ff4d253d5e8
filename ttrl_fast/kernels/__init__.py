"""Backend kernels. Every backend implements the same raw contract per op; ``ttrl_fast.backends``
chooses among them and ``ttrl_fast.ops`` wraps the choice in a torch.library op with autograd.

Raw contract of ``selective_log_softmax`` (identical for reference, cpp, triton, cuda)::

    fwd(logits, index, mask, inv_temperature, with_entropy) -> (logp, entropy, stats)
        logits   [A, B, V] float32/bfloat16/float16, logits.stride(-1) == 1 (other strides arbitrary:
                 a slice such as full_logits[:, :-1, :] is read in place, never copied)
        index    [A*B] int64, contiguous, in [0, V) where mask is True (validated by the caller)
        mask     [A*B] bool contiguous, or None (= all True)
        inv_temperature  Python float, 1 / T
        with_entropy     bool
        logp     [A*B] float32: log_softmax(logits * inv_t)[row, index]; 0 for masked rows;
                 NaN if the index is outside [0, V) (defence in depth)
        entropy  [A*B] float32 (0 for masked rows), or an empty tensor when not with_entropy
        stats    [A*B, 2] float32: column 0 = raw row max of logits, column 1 = log sum_v
                 exp((x_v - max) * inv_t); (0, 0) for masked rows

    bwd(grad_logp, grad_entropy, logits, index, mask, stats, entropy, inv_temperature) -> grad_logits
        grad_logp, grad_entropy  [A*B] float32 contiguous, or None (= zeros)
        entropy                  the forward's entropy ([A*B]) when grad_entropy is given
        grad_logits              fresh [A, B, V] contiguous tensor of logits.dtype (zeros on masked rows)
"""
