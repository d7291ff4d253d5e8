"""Monitors: reward sources for the self-monitoring test-time RL cycle (one float32 reward per rollout).

Every monitor has ``prepare(prompts)`` (optional caching) and ``score(rollouts) -> RewardBatch``, and an
``intrinsic`` flag (True when the model monitors itself). Formulas (s = critic's renormalised P(target)):

* ``RubricVQA(critic, builder, agg)`` - Meta-TTRL Eq. 5-6: s_k = P(t_k | q_k, y) / (P(yes) + P(no));
  r = exp(mean_k log max(s_k, floor)) ("geomean"), mean_k s_k ("mean"), or DSG: children of a parent
  with s < 0.5 count 0, then the mean ("dsg"). Rubrics from ``StaticRubric`` (prompt.meta),
  ``TemplateRubric`` (model-free templates) or ``SelfRubric`` (the critic writes them; ``parse_rubric``).
* ``Consensus(extract, mode)`` - TTRL: r = 1[a_i == majority answer]; TTRV: r = p(a_i) - alpha * H/log M
  (group-constant, cancels in group-normalised advantages) or, per_sample_entropy, r = p(a_i) -
  alpha * (-log q(a_i)) / log M.
* ``JudgeScore(critic)`` - UniCorn judge: r = parsed score / 10 (0-10; unparseable -> NaN).
* ``PairwiseVsBaseline(critic, baseline)`` - SEER: r = 1[P(critic prefers y_i over the baseline) > 0.5]
  (or the soft P; optional swapped-order debiasing).
* ``CaptionLikelihood(critic)`` - GvU: r = exp(mean_t log P(prompt token t | y_i)).
* Controls (intrinsic False): ``Oracle(checker)`` (ground truth, measurement / upper bound only),
  ``RandomReward(seed)``, ``Constant(value)``; ``External(monitor)`` marks a critic that is another model.
* ``Composite([(w, monitor), ...])`` - r = sum_j w_j r_j (NaN propagates; weight 0 = logged only);
  ``served_index(rollouts, rewards)`` - best-of-G row per prompt (ties -> lowest g).
* ``HFTextUnderstander(model, tokenizer)`` - the Understander protocol for an HF causal LM (yes_prob,
  generate_text, sequence_logprob; ``use_base_weights`` = the frozen initial weights of a PEFT model).
"""
from ttrl_fast.monitors.base import Composite, Monitor, served_index
from ttrl_fast.monitors.consensus import Consensus
from ttrl_fast.monitors.controls import Constant, Oracle, RandomReward
from ttrl_fast.monitors.external import External
from ttrl_fast.monitors.hf_critic import HFTextUnderstander
from ttrl_fast.monitors.judge import CaptionLikelihood, JudgeScore, PairwiseVsBaseline, parse_score
from ttrl_fast.monitors.rubric import (
    DIMENSIONS,
    Rubric,
    RubricBuilder,
    RubricItem,
    SelfRubric,
    StaticRubric,
    TemplateRubric,
    normalize_dim,
    parse_rubric,
    parse_target,
    validate_rubric,
)
from ttrl_fast.monitors.rubric_vqa import RubricVQA

__all__ = [
    "CaptionLikelihood",
    "Composite",
    "Consensus",
    "Constant",
    "DIMENSIONS",
    "External",
    "HFTextUnderstander",
    "JudgeScore",
    "Monitor",
    "Oracle",
    "PairwiseVsBaseline",
    "RandomReward",
    "Rubric",
    "RubricBuilder",
    "RubricItem",
    "RubricVQA",
    "SelfRubric",
    "StaticRubric",
    "TemplateRubric",
    "normalize_dim",
    "parse_rubric",
    "parse_score",
    "parse_target",
    "served_index",
    "validate_rubric",
]
