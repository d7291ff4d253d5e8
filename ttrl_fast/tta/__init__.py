"""The self-monitoring test-time adaptation cycle: data types, the TestTimeAdapter and its guard."""
from ttrl_fast.tta.adapter import AdaptConfig, AdaptReport, TestTimeAdapter
from ttrl_fast.tta.guard import DivergenceGuard
from ttrl_fast.tta.types import Prompt, RewardBatch, Rollouts, Understander

__all__ = ["AdaptConfig", "AdaptReport", "DivergenceGuard", "Prompt", "RewardBatch", "Rollouts", "TestTimeAdapter",
           "Understander"]
