"""How the sampler swaps in its own decode attention: a function registered with transformers'
AttentionInterface, switched on for the text model's decode forwards only (prefill keeps the model's
own attention), with the per-step state published in a context variable the function reads.

Two such functions exist: shared_prefix.py (one copy of each prompt's KV per group, any device) and
flash_decode.py (flash_attn_with_kvcache on CUDA)."""
from __future__ import annotations

import contextlib
import contextvars

# model types whose decoder attention is plain softmax attention through ALL_ATTENTION_FUNCTIONS (no
# soft-capping, sinks or alibi); sliding windows are checked separately from the config. VLMs are judged by
# their text config: InternVL's is llama / qwen2 / ..., Qwen2(.5)-VL's decoder (qwen2_vl_text /
# qwen2_5_vl_text) is Qwen2's attention with M-RoPE applied before the cache, so plain as well.
PLAIN_ATTENTION_MODELS = frozenset({"llama", "qwen2", "qwen3", "mistral", "olmo", "olmo2", "granite", "phi3",
                                    "stablelm", "internlm2", "qwen2_vl_text", "qwen2_5_vl_text"})


def text_config(model):
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def plain_attention_reason(model) -> str | None:
    """Why the model's decoder attention is not plain full softmax attention (None when it is)."""
    config = text_config(model)
    model_type = getattr(config, "model_type", None)
    if model_type not in PLAIN_ATTENTION_MODELS:
        return f"model_type {model_type!r} is not one of the plain-attention models {sorted(PLAIN_ATTENTION_MODELS)}"
    layer_types = getattr(config, "layer_types", None) or ()
    if any(t != "full_attention" for t in layer_types):
        return f"layer_types {sorted(set(layer_types))} include non-full attention"
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return "sliding-window attention"
    return None


def check_plain_call(name: str, kwargs: dict) -> None:
    for option in ("softcap", "sliding_window", "s_aux"):
        if kwargs.get(option) is not None:
            raise RuntimeError(f"{name} attention does not implement {option}")


@contextlib.contextmanager
def switched(model, name: str, function, variable: contextvars.ContextVar, state):
    """Within the block, the text model's attention is `function` (registered as `name`) and
    `variable` holds `state`; the model's own setting is restored afterwards, also on errors."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, function)
    config = text_config(model)
    previous = config._attn_implementation_internal
    token = variable.set(state)
    # set the stored value directly: the public setter would also overwrite every sub-config's choice
    config._attn_implementation_internal = name
    try:
        yield
    finally:
        config._attn_implementation_internal = previous
        variable.reset(token)
