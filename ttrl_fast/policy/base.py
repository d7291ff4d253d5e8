"""The Policy interface: what the GRPO loop needs from the model being adapted (object level). Nothing
here assumes text: a policy turns prompts into token rollouts plus decoded outputs a critic can read,
and scores its own rollouts' tokens. Adapters: HFCausalLMPolicy (text); multimodal ones plug in here."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch import Tensor, nn

from ttrl_fast.sampler.params import SamplingParams
from ttrl_fast.tta.types import Prompt, Rollouts, Understander


class Policy(ABC):
    @abstractmethod
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> Rollouts:
        """params.n rollouts per prompt, prompt-major, with the sampler's log-probs as the old log-probs."""

    @abstractmethod
    def token_logprobs(self, rollouts: Rollouts, rows: Sequence[int] | None = None, *,
                       reference: bool = False) -> Tensor:
        """[len(rows), T] fp32 log-probs of the rollouts' completion tokens (0 where masked), at the
        sampling temperature. Differentiable unless `reference` (the reference policy, no gradient)."""

    @abstractmethod
    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates (the LoRA adapter, or every weight)."""

    @abstractmethod
    def trainable_state(self) -> dict[str, Tensor]:
        """A detached copy of the trainable weights (checkpoints, rollback, per-prompt reset)."""

    @abstractmethod
    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        """Restore weights saved by trainable_state(); a ValueError, before any weight changes, when the
        state does not fit the model (missing tensors, other shapes)."""

    @abstractmethod
    def critic(self, mode: str = "frozen_init") -> Understander:
        """The model's own understanding side: "frozen_init" (the initial weights, Meta-TTRL Algorithm 1)
        or "live" (the weights being trained)."""


class ModelWeights:
    """Policy weight handling for policies that train `self.model` (its parameters with requires_grad:
    a LoRA adapter or every weight); full tensors also under FSDP2, so checkpoints do not depend on
    the layout."""

    model: nn.Module

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _trainable_named(self):
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, Tensor]:
        return {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
                for n, p in self._trainable_named()}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        named = dict(self._trainable_named())
        missing = set(named) - set(state)
        if missing:
            raise ValueError(f"trainable state lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
        # every tensor is checked before any is copied: a state that does not fit changes no weight
        wrong = [f"{name!r} is {_describe(state[name])}, the parameter {tuple(param.shape)} {param.dtype}"
                 for name, param in named.items() if not _fits(state[name], param)]
        if wrong:
            raise ValueError(f"trainable state has {len(wrong)} tensors of another shape or dtype than the model's, "
                             f"e.g. {'; '.join(wrong[:3])}")
        with torch.no_grad():
            for name, param in named.items():
                if hasattr(param, "device_mesh"):  # an FSDP2 shard: keep this rank's part of the full tensor
                    from torch.distributed.tensor import distribute_tensor

                    param.copy_(distribute_tensor(state[name].to(param.dtype), param.device_mesh, param.placements))
                else:
                    param.copy_(state[name])


def _fits(value, param: Tensor) -> bool:
    """Whether `value` can be copied into `param` as is: a tensor of its (full) shape and dtype kind."""
    return (isinstance(value, Tensor) and tuple(value.shape) == tuple(param.shape)
            and value.dtype.is_floating_point == param.dtype.is_floating_point and not value.dtype.is_complex)


def _describe(value) -> str:
    return f"{tuple(value.shape)} {value.dtype}" if isinstance(value, Tensor) else f"a {type(value).__name__}"
