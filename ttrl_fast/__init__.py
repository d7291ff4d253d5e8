"""ttrl_fast: fused kernels and a thin GRPO loop for test-time reinforcement learning.

Importing never compiles anything and never fails because a backend is missing;
``python -m ttrl_fast.info`` shows which backends are available and why not.
"""
from ttrl_fast._ext import empty_cache
from ttrl_fast.backends import BackendUnavailableError, available_backends, use_backend
from ttrl_fast.advantages import group_advantages
from ttrl_fast.functional import selective_log_softmax
from ttrl_fast.fused_linear import fused_linear_grpo_loss, fused_linear_logprobs
from ttrl_fast.losses import grpo_loss, policy_loss
from ttrl_fast.metrics import Metrics
from ttrl_fast.modules import FusedLinearGRPOLoss
from ttrl_fast.sampler import RolloutBatch, RolloutSampler, SamplingParams, sample_tokens
from ttrl_fast.grpo import GRPOConfig, GRPOTrainer, LoraSettings
from ttrl_fast.policy import HFCausalLMPolicy, Policy
from ttrl_fast.tta import AdaptConfig, DivergenceGuard, Prompt, RewardBatch, Rollouts, TestTimeAdapter

__version__ = "0.1.0"

__all__ = [
    "AdaptConfig",
    "DivergenceGuard",
    "GRPOConfig",
    "GRPOTrainer",
    "HFCausalLMPolicy",
    "LoraSettings",
    "Policy",
    "Prompt",
    "RewardBatch",
    "Rollouts",
    "TestTimeAdapter",
    "BackendUnavailableError",
    "FusedLinearGRPOLoss",
    "Metrics",
    "RolloutBatch",
    "RolloutSampler",
    "SamplingParams",
    "available_backends",
    "empty_cache",
    "fused_linear_grpo_loss",
    "fused_linear_logprobs",
    "group_advantages",
    "grpo_loss",
    "policy_loss",
    "sample_tokens",
    "selective_log_softmax",
    "use_backend",
    "__version__",
]
