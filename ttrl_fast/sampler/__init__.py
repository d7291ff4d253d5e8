"""The batched KV-cache rollout sampler: each prompt prefilled once and forked into G samples, with
the exact log-probs of the sampled tokens."""
from ttrl_fast.sampler.draw import SampledTokens, sample_tokens
from ttrl_fast.sampler.params import SamplingParams
from ttrl_fast.sampler.rollout import RolloutBatch, RolloutSampler

__all__ = ["RolloutBatch", "RolloutSampler", "SampledTokens", "SamplingParams", "sample_tokens"]
