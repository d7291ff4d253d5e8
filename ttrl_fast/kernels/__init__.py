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


Raw contract of ``policy_loss`` (GRPO-family loss; math in csrc/include/ttrl_fast/policy_loss_math.h,
spec in ttrl_fast/reference/policy_loss.py)::

    fwd(logp, old_logp, advantages, mask, ref_logp, rollout_is_ratio, entropy, iparams, fparams)
        -> (grad_logp, seq_stats)
        logp       [B, T] float32 contiguous
        old_logp   [B, T] float32 or None (on-policy: old = sg(logp))
        advantages [B, Ta] float32 contiguous, Ta in {1, T}
        mask       [B, T] float32 (0/1) contiguous
        ref_logp   [B, T] float32 or None (needed when iparams[KL] != 0)
        rollout_is_ratio [B, Tr] float32 or None, Tr in {1, T}
        entropy    [B, T] float32 or None (only summed for the metric)
        iparams    7 ints:   loss_type, aggregation, kl_estimator, sequence_level, bias_correction_kl,
                             has_delta, on_policy            (PolicyLossParams field order)
        fparams    11 floats: eps_low, eps_high, delta, beta, sapo_tau_pos, sapo_tau_neg, vespo_k_pos,
                             vespo_lambda_pos, vespo_k_neg, vespo_lambda_neg, norm
        grad_logp  [B, T] float32: d loss / d logp (the loss is a scalar, so its gradient is final
                   in the forward; the op's backward only scales it)
        seq_stats  [B, 18] float32, per sequence i (m = mask, w = aggregation weight):
            0 loss_i = sum_t w l_t        1 n_i = sum_t m          2 sum_t m kl_t (after bias correction)
            3 sum_t m H_t                 4/5/6 sum_t m low/high/region clip flags
            7/8/9 low/high/region flags at (s_i, A_i0)  (the [B, 1] convention of sequence-level IS)
            10 sum_t m cispo flag        11 cispo flag at (s_i, A_i0)
            12 sum_t m phi_t             13 phi at A_i0 (VESPO)
            14 sum_t m r_t               15 min_t r_t over m > 0 (+inf if none)   16 max (-inf if none)
            17 s_i (sequence ratio; 1 at token level)

Raw contract of ``group_advantages``::

    fwd(rewards, perm, offsets, mode, std_correction, eps, batch_std) -> (advantages, group_stats)
        rewards    [N] float32 (NaN = unscorable: excluded, advantage 0)
        perm       [N] int64: sample indices ordered by group; group g is perm[offsets[g]:offsets[g+1]]
        offsets    [G + 1] int64
        mode       0 group, 1 batch (divides by batch_std), 2 none, 3 rloo
        advantages [N] float32;  group_stats [G, 3] float32: (count, mean, std)

Raw contract of ``sample_tokens`` (one decode step of the rollout sampler; math and tie rules in
ttrl_fast/reference/sampling.py, whose float64 evaluation is the oracle)::

    fwd(logits, row_keys, step, seen, ban_ids, iparams, fparams)
        -> (tokens, logp_raw, logp_processed, log_kept)
        logits    [R, V] float32/bfloat16/float16, logits.stride(-1) == 1 (rows may be strided)
        row_keys  [R] int64 contiguous, values in [0, 2^32): the per-row noise key
        step      Python int >= 0: the decode step (mixed into the noise)
        seen      [R, V] bool contiguous or None: tokens already in the row (repetition penalty)
        ban_ids   [S] int64 contiguous in [0, V), or None: ids that cannot be drawn this step
        iparams   2 ints:   greedy (0/1), top_k (0 = off)
        fparams   4 floats: inv_temperature, top_p (1 = off), min_p (0 = off), repetition_penalty (1 = off)
        tokens    [R] int64;  logp_raw, logp_processed, log_kept  [R] float32
        a row holding NaN or +inf logits is poisoned: those entries count as -inf for the draw (the
        token stays in [0, V)) and its three log-probs are NaN
"""
