"""Drop-in TRL 1.16 integration: `ttrl_fast.compat.trl.GRPOTrainer` is trl.GRPOTrainer with its log-probs and
its loss routed through ttrl_fast's fused ops, and `rollout_func(...)` plugs the RolloutSampler into TRL's
`rollout_func` hook.

    from ttrl_fast.compat.trl import GRPOTrainer            # instead of: from trl import GRPOTrainer
    trainer = GRPOTrainer(model, reward_funcs=..., args=trl.GRPOConfig(...), train_dataset=...)

What changes (text-only batches; everything else falls back to TRL's own code, listed in `_fused_loss_reason`):
* per-token log-probs and entropies: the backbone's hidden states -> ttrl_fast.fused_linear_logprobs (the
  [tokens, vocab] logits never exist; C++ / Triton / CUDA tiles), instead of TRL's chunked head;
* the loss: ttrl_fast.policy_loss, one fused O(tokens) op with TRL 1.16's formulas for every loss_type,
  importance-sampling level, two-sided delta, KL (k3, optional bias correction), vLLM IS ratio, and TRL's
  normalisers (gradient accumulation, num_items_in_batch across processes); the same metrics are logged.
Values match stock TRL to float32 rounding (tests/compat/test_trl.py trains both side by side).
"""
from __future__ import annotations

import torch

from ttrl_fast.fused_linear import fused_linear_logprobs
from ttrl_fast.losses import policy_loss as fused_policy_loss

try:
    import trl
    from trl.trainer.utils import nanmax, nanmin
except ImportError as exc:  # pragma: no cover - trl is a declared extra
    raise ImportError("ttrl_fast.compat.trl needs trl>=1.16: pip install 'trl==1.16.*'") from exc

_MULTIMODAL = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes", "num_tiles",
               "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")


def _backbone_and_head(model):
    """(backbone returning last_hidden_state, LM head) of a possibly PEFT-wrapped causal LM."""
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        model = model.get_base_model()  # LoRA layers live inside the base model's modules
    return model.get_decoder(), model.get_output_embeddings(), model.config


class GRPOTrainer(trl.GRPOTrainer):
    """trl.GRPOTrainer (1.16) on ttrl_fast's fused log-prob and loss ops; same constructor and behaviour."""

    # ------------------------------------------------------------------ log-probs
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **multimodal):
        unwrapped = self.accelerator.unwrap_model(model)
        _, head, config = _backbone_and_head(unwrapped)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        plain_head = (getattr(text_config, "final_logit_softcapping", None) is None
                      and getattr(text_config, "logit_scale", 1.0) in (None, 1.0))
        if compute_aux_loss or any(v is not None for v in multimodal.values()) or not plain_head:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **multimodal)
        backbone, head, _ = _backbone_and_head(unwrapped)
        step = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), step):
            ids, mask = input_ids[start:start + step], attention_mask[start:start + step]
            with self.accelerator.autocast():
                # positions as the model's own forward makes them (TRL passes only the mask)
                hidden = backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            targets = ids[:, -logits_to_keep:].masked_fill(mask[:, -logits_to_keep:] == 0, -100)
            logp, entropy = fused_linear_logprobs(hidden[:, -logits_to_keep - 1:-1], head.weight, targets,
                                                  bias=getattr(head, "bias", None), temperature=self.temperature,
                                                  return_entropy=True)
            logps.append(logp)
            entropies.append(entropy)
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None

    # ------------------------------------------------------------------ loss
    def _fused_loss_reason(self, inputs) -> str | None:
        """Why this batch's loss goes through TRL's own code (None: the fused op serves it)."""
        if self.off_policy_mask_threshold is not None:
            return "off_policy_mask_threshold"
        if self.top_entropy_quantile < 1.0:
            return "top_entropy_quantile < 1"
        if "tool_mask" in inputs:
            return "tool masks"
        if self.aux_loss_enabled:
            return "MoE aux loss"
        if self._entropy_bonus_enabled:
            return "entropy bonus"
        if any(inputs.get(k) is not None for k in _MULTIMODAL):
            return "multimodal inputs"
        return None

    def _compute_loss(self, model, inputs):
        if self._fused_loss_reason(inputs) is not None:
            return super()._compute_loss(model, inputs)
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, mask = inputs["completion_ids"], inputs["completion_mask"]
        logp, entropies, _ = self._get_per_token_logps_and_entropies(
            model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, mask], 1),
            completion_ids.size(1), compute_entropy=True)
        old = inputs.get("old_per_token_logps")  # None: on-policy, ratio 1 (the op detaches logp itself)
        mode = "train" if self.model.training else "eval"
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        num_items = None
        if self.loss_type in ("cispo", "dapo", "vespo"):
            num_items = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                num_items = num_items * accumulation / self.args.steps_per_generation
        is_ratio = None
        if self.use_vllm and self.vllm_importance_sampling_correction:
            is_ratio = inputs["importance_sampling_ratio"]
        loss, metrics = fused_policy_loss(
            logp, old, inputs["advantages"], mask, ref_logp=inputs.get("ref_per_token_logps"),
            loss_type=self.loss_type, importance_sampling_level=self.importance_sampling_level,
            epsilon_low=self.epsilon_low, epsilon_high=self.epsilon_high, delta=self.args.delta, beta=self.beta,
            use_bias_correction_kl=self.args.use_bias_correction_kl, rollout_is_ratio=is_ratio, entropy=entropies,
            max_completion_length=self.max_completion_length, num_items_in_batch=num_items,
            sapo_temperature_pos=self.args.sapo_temperature_pos, sapo_temperature_neg=self.args.sapo_temperature_neg,
            vespo_k_pos=self.args.vespo_k_pos, vespo_lambda_pos=self.args.vespo_lambda_pos,
            vespo_k_neg=self.args.vespo_k_neg, vespo_lambda_neg=self.args.vespo_lambda_neg)
        if self.loss_type not in ("cispo", "dapo", "vespo"):
            loss = loss / accumulation  # TRL scales these per accumulation step (HF auto-scaling is off)
        self._log_fused_metrics(metrics, mode)
        return loss

    def _log_fused_metrics(self, metrics, mode: str) -> None:
        """TRL's metric names and global reductions, from the op's (sum, count) / min / max parts."""
        for name, op in metrics.reduce_ops.items():
            if name in ("policy_loss", "ratio/mean", "ratio/min", "ratio/max"):
                continue  # TRL does not log these from the loss
            if op == "mean":
                totals = self.accelerator.reduce(torch.stack([metrics.sums[name], metrics.counts[name]]).float(),
                                                 reduction="sum")
                self._metrics[mode][name].append((totals[0] / totals[1].clamp(min=1.0)).item())
            else:
                gathered = self.accelerator.gather(metrics[name].reshape(1).float())
                self._metrics[mode][name].append((nanmin if op == "min" else nanmax)(gathered).item())


def rollout_func(sampler, params=None, *, tokenize=None):
    """A TRL `rollout_func` that samples with ttrl_fast's RolloutSampler (one prefill per prompt, G rows
    sharing it, exact log-probs returned to TRL).

    Args:
        sampler: a ttrl_fast.RolloutSampler over the trainer's model (its weights are read live).
        params: ttrl_fast.SamplingParams for everything else (seed, top_p, stop ids, ...); n, max_tokens and
            temperature always come from the trainer (num_generations, max_completion_length, temperature),
            so TRL's config stays the one source of truth.
        tokenize: prompt -> token ids (default: the trainer's processing_class, chat template for
            conversational prompts).
    TRL hands the function its per-process prompts with each prompt repeated num_generations times in a
    row; each run of repeats is prefilled once and sampled G times.
    """
    import dataclasses

    from ttrl_fast.sampler.params import SamplingParams

    def run(prompts, trainer):
        group = trainer.num_generations if trainer.model.training else trainer.num_generations_eval
        repeated = len(prompts) % group == 0 and all(
            prompts[i] == prompts[i - i % group] for i in range(len(prompts)))
        unique = prompts[::group] if repeated else prompts
        n = group if repeated else 1
        encode = tokenize or (lambda p: _tokenize(trainer.processing_class, p))
        settings = dataclasses.replace(params or SamplingParams(), n=n, max_tokens=trainer.max_completion_length,
                                       temperature=trainer.temperature)
        batch = sampler.generate([encode(p) for p in unique], settings)
        out = batch.to_trl()
        return {"prompt_ids": out["prompt_ids"], "completion_ids": out["completion_ids"], "logprobs": out["logprobs"]}

    return run


def _tokenize(tokenizer, prompt) -> list[int]:
    if isinstance(prompt, list):  # conversational
        return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True))
    return list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
