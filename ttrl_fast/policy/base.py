"""The Policy interface: what the GRPO loop needs from the model being adapted (object level). Nothing
here assumes text: a policy turns prompts into token rollouts plus decoded outputs a critic can read,
and scores its own rollouts' tokens. Adapters: HFCausalLMPolicy (text); multimodal ones plug in here."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

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
        """Restore weights saved by trainable_state()."""

    @abstractmethod
    def critic(self, mode: str = "frozen_init") -> Understander:
        """The model's own understanding side: "frozen_init" (the initial weights, Meta-TTRL Algorithm 1)
        or "live" (the weights being trained)."""
