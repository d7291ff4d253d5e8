"""Policies: the model being adapted, behind one interface (ttrl_fast.policy.base.Policy)."""
from ttrl_fast.policy.base import Policy
from ttrl_fast.policy.hf_causal_lm import HFCausalLMPolicy, add_lora
from ttrl_fast.policy.janus import JanusImagePolicy, JanusUnderstander, add_janus_lora
from ttrl_fast.policy.vlm import VLMAnswerPolicy, VLMRollouts, add_language_lora, processor_inputs

__all__ = ["HFCausalLMPolicy", "JanusImagePolicy", "JanusUnderstander", "Policy", "VLMAnswerPolicy", "VLMRollouts",
           "add_janus_lora", "add_language_lora", "add_lora", "processor_inputs"]
