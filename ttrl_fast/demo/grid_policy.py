"""The GridWorld model behind the package's real interfaces: GridPolicy is an HFCausalLMPolicy (rollouts
through RolloutSampler restricted to image tokens, log-probs through the fused ops), GridCritic is the
same model's understanding side (an Understander: P(yes) renormalised over yes/no), and grid_rubric()
is the TemplateRubric the toy model needs because it cannot write text (exists A, exists B, relation)."""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Sequence

import torch
from torch import Tensor

from ttrl_fast.demo import gridworld as W
from ttrl_fast.monitors.rubric import TemplateRubric
from ttrl_fast.policy.hf_causal_lm import HFCausalLMPolicy
from ttrl_fast.sampler.params import SamplingParams
from ttrl_fast.tta.types import Prompt, Rollouts, Understander


def grid_rubric() -> TemplateRubric:
    """Meta-TTRL's rubric for "A REL B", filled from the prompt's fields (a model-free template: the
    toy model cannot write rubrics, which is the stated deviation from the paper's self-written ones)."""
    return TemplateRubric([("object", "exists {A}", "yes"), ("object", "exists {B}", "yes"),
                           ("spatial", "rel {A} {relation} {B}", "yes")])


def grid_prompt(spec: W.Spec, index: int, split: str = "") -> Prompt:
    return Prompt(id=f"{split}{index}", text=spec.text, meta=spec.meta)


class GridCritic(Understander):
    """P(yes) / (P(yes) + P(no)) of the answer token after `<bos> und <image> question ans`."""

    def __init__(self, model):
        self.model = model

    @torch.no_grad()
    def yes_prob(self, items: Sequence[tuple[Any, str]]) -> Tensor:
        rows = [W.understanding_row(grid, question) for grid, question in items]
        if not rows:
            return torch.zeros(0)
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), W.TOKENIZER.pad_token_id, dtype=torch.int64)
        for i, row in enumerate(rows):  # right padding: causal attention keeps it out of each row's answer
            ids[i, :len(row)] = torch.tensor(row)
        last = torch.tensor([len(r) - 1 for r in rows])
        was_training = self.model.training
        self.model.eval()
        try:
            hidden = self.model.get_decoder()(input_ids=ids.to(self._device())).last_hidden_state
        finally:
            self.model.train(was_training)
        final = hidden[torch.arange(len(rows)), last.to(hidden.device)]
        head = self.model.get_output_embeddings().weight
        pair = final.float() @ head[[W.YES, W.NO]].float().t()
        return torch.softmax(pair, -1)[:, 0].cpu()

    def _device(self):
        return next(self.model.parameters()).device

    def generate_text(self, prompts, *, max_tokens=64, temperature=0.0):
        raise NotImplementedError("the GridWorld model cannot write text: use grid_rubric() (a TemplateRubric)")

    def sequence_logprob(self, contexts, targets):
        raise NotImplementedError("the GridWorld model has no captioning head")


class GridPolicy(HFCausalLMPolicy):
    """Text-to-grid generation: prompts "A REL B", outputs 16 cell values (a grid tuple)."""

    def __init__(self, model, *, max_rows: int = 128, frozen_copy: bool = True):
        super().__init__(model, W.TOKENIZER, lora=None, max_rows=max_rows, max_seq_len=32,
                         encode=lambda text: W.generation_row(W.Spec.parse(text)), frozen_copy=frozen_copy)

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> Rollouts:
        # an image is exactly CELLS image tokens: nothing else can be drawn, no stop token
        params = dataclasses.replace(params, max_tokens=W.CELLS, min_tokens=0, ignore_eos=True,
                                     stop_token_ids=(), allowed_token_ids=W.CELL_IDS)
        return super().generate(prompts, params)

    def decode(self, ids: list[int], finish_reason: str = "length"):
        return W.grid_from_tokens(ids)

    def critic(self, mode: str = "frozen_init") -> Understander:
        if mode == "live":
            return GridCritic(self.model)
        if mode == "frozen_init":
            if self._frozen is None:
                raise ValueError("frozen_init critic needs frozen_copy=True")
            return GridCritic(self._frozen)
        raise ValueError(f"critic mode must be 'frozen_init' or 'live', got {mode!r}")


def frozen(model):
    """A frozen copy of `model` (the initial weights, for critics and baselines)."""
    return copy.deepcopy(model).eval().requires_grad_(False)
