"""The thin GRPO loop: GRPOConfig and GRPOTrainer (one step = rollouts -> monitor -> advantages -> μ updates)."""
from ttrl_fast.grpo.config import GRPOConfig, LoraSettings
from ttrl_fast.grpo.trainer import GRPOTrainer, StepResult

__all__ = ["GRPOConfig", "GRPOTrainer", "LoraSettings", "StepResult"]
