"""Tiny random text models with a character tokenizer, and a counting monitor."""
import copy
import string

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from ttrl_fast.text import CharTokenizer
from ttrl_fast.tta.types import Prompt, RewardBatch

TOKENIZER = CharTokenizer(string.printable)


def tiny_lm(kind="llama", seed=0):
    torch.manual_seed(seed)
    common = dict(vocab_size=TOKENIZER.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  eos_token_id=TOKENIZER.eos_token_id, pad_token_id=TOKENIZER.pad_token_id)
    model = LlamaForCausalLM(LlamaConfig(**common)) if kind == "llama" else Qwen2ForCausalLM(Qwen2Config(**common))
    return model


class CountLetter:
    """Reward = occurrences of a letter in the output (a monitor with a known optimum)."""

    intrinsic = False

    def __init__(self, letter="a"):
        self.letter = letter

    def score(self, rollouts):
        return RewardBatch(torch.tensor([float(str(o).count(self.letter)) for o in rollouts.outputs]))


PROMPTS = [Prompt("p0", "abc"), Prompt("p1", "hello world"), Prompt("p2", "x")]


@pytest.fixture(params=["llama", "qwen2"])
def lm(request):
    return tiny_lm(request.param)


def clone(model):
    return copy.deepcopy(model)
