"""Policies: the model being adapted, behind one interface (ttrl_fast.policy.base.Policy)."""
from ttrl_fast.policy.base import Policy
from ttrl_fast.policy.hf_causal_lm import HFCausalLMPolicy, add_lora

__all__ = ["HFCausalLMPolicy", "Policy", "add_lora"]
