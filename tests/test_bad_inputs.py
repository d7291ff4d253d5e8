"""The bad-input matrix: what every kind of bad input to the public API gets (exception type and
message, or a defined output), as one table that both the tests and docs/bad_inputs.md are made from.

Each case is a Python expression (`call`, shown verbatim in the doc) evaluated in a fresh namespace of
small fixtures (see FIXTURES / make_env), after optional `setup` statements. A case expects either an
exception (type + regex searched in its message) or a defined output (`error` None: `match` is then a
check expression on the result `out`). Cases with a `finding` document a gap: their expectation is the
desired behaviour, the test is xfail(strict=True), and `now` / `message` say what happens today.

    python tests/test_bad_inputs.py --write-doc     regenerate docs/bad_inputs.md from this table
    python tests/test_bad_inputs.py --case ID       run one case and print what it gets (a reproducer)
    python tests/test_bad_inputs.py --run-all DIR   run every case in this one process, print outcomes
                                                    (what test_no_case_crashes_the_process runs)
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import ttrl_fast

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad_inputs.md"


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    call: str  # a Python expression evaluated in make_env(); the doc's "example call"
    error: type | tuple | None  # expected exception(s) (a finding: the desired ones); None = returns, `match` holds
    match: str  # regex searched in the message; for error None: a check expression on `out`
    message: str  # what it gets today: the message (<tmp> = the case's temp dir) or the outcome
    setup: str = ""  # statements run first (exec in the same namespace)
    finding: str = ""  # non-empty: today's behaviour is a gap (crash / garbage / unclear); xfail(strict)
    now: str = ""  # for a finding: the exception type raised today ("" = it returns)
    needs: str = ""  # a backend the case needs ("cpp"): skipped where it is not built


# ------------------------------------------------------------------------------------------------
# The fixtures every call sees
# ------------------------------------------------------------------------------------------------

FIXTURES = """\
sls = ttrl_fast.selective_log_softmax; fl = ttrl_fast.fused_linear_logprobs; st = ttrl_fast.sample_tokens
pl = ttrl_fast.policy_loss; gl = ttrl_fast.grpo_loss; fg = ttrl_fast.fused_linear_grpo_loss
ga = ttrl_fast.group_advantages; SP = ttrl_fast.SamplingParams; FLG = ttrl_fast.FusedLinearGRPOLoss
logits [3, 11] fp32, ids [3] in [0, 11); logits_vr [11, 3] (logits_vr.t() is a [3, 11] non-contiguous view)
logits3 [2, 6, 11], ids3 [2, 5]; wide [3, 22]
hidden [4, 8], weight [11, 8], targets [4]; hidden3 [2, 5, 8]
logp [2, 5] (<= 0), logp_tb [5, 2] (logp_tb.t() is a [2, 5] view), adv [2], mask [2, 5] ones
keys = arange(3) (row keys); rewards [6]; nan, inf
sampler(): RolloutSampler(tiny random Llama, vocab 20, max_rows=4, max_seq_len=16)
trainer(lora=None): GRPOTrainer over HFCausalLMPolicy(tiny Llama, character tokenizer, max_rows=4,
    max_seq_len=24), group_size 2, max_new_tokens 3; PROMPTS = [Prompt("a", "abc"), Prompt("b", "xyz")]
adapter(t=None, run_dir=None): TestTimeAdapter(t or trainer(), ..., config=AdaptConfig(max_steps=2))
made_run(lora=None): a run dir after one adaptation step (state.json, metrics.jsonl, served.jsonl,
    checkpoint/adapter.safetensors, checkpoint/trainer.pt)
resume(run, prompts=PROMPTS, lora=None): adapter(trainer(lora), run).run(prompts, resume=True) in a fresh trainer
prompts_file(text): <tmp>/p.jsonl with that text; adapt(path, *args): ttrl_fast.cli.main(["adapt", "--model",
    "<tmp>/no_model", "--prompts", path, "--monitor", "consensus", "--out", "<tmp>/out", *args])
same(a, b): torch.equal on tensors or tuples of them; grad(f, x): d sum(f(x)) / dx"""


def make_env(tmp: Path) -> dict:
    from ttrl_fast import cli
    from ttrl_fast.text import CharTokenizer

    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    def randint(high, shape):
        return torch.randint(0, high, shape, generator=g)

    tok = CharTokenizer(string.ascii_lowercase + " ")

    def tiny_llama(vocab, seed=0):
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                             eos_token_id=2, pad_token_id=0)
        return LlamaForCausalLM(config)

    def sampler():
        return ttrl_fast.RolloutSampler(tiny_llama(20), max_rows=4, max_seq_len=16)

    class CountA:  # reward = occurrences of "a"
        def score(self, rollouts):
            return ttrl_fast.RewardBatch(torch.tensor([float(str(o).count("a")) for o in rollouts.outputs]))

    def trainer(lora=None):
        policy = ttrl_fast.HFCausalLMPolicy(tiny_llama(tok.vocab_size), tok, max_rows=4, max_seq_len=24, lora=lora)
        config = ttrl_fast.GRPOConfig(group_size=2, max_new_tokens=3, learning_rate=1e-2, lora=lora)
        return ttrl_fast.GRPOTrainer(policy, config, monitor=CountA())

    prompts = [ttrl_fast.Prompt("a", "abc"), ttrl_fast.Prompt("b", "xyz")]

    def adapter(t=None, run_dir=None):
        t = t or trainer()
        return ttrl_fast.TestTimeAdapter(t, t.monitor, config=ttrl_fast.AdaptConfig(max_steps=2), run_dir=run_dir)

    def made_run(lora=None):
        run = tmp / "run"
        t = trainer(lora)
        ttrl_fast.TestTimeAdapter(t, t.monitor, config=ttrl_fast.AdaptConfig(max_steps=1), run_dir=run).run(prompts)
        return run

    def resume(run, prompts=prompts, lora=None):
        return adapter(trainer(lora), run).run(prompts, resume=True)

    def rewrite_weights(run, fn):
        from safetensors.torch import load_file, save_file

        path = str(run / "checkpoint" / "adapter.safetensors")
        save_file(fn(load_file(path)), path)

    def prompts_file(text):
        path = tmp / "p.jsonl"
        path.write_text(text)
        return str(path)

    def adapt(path, *args):
        return cli.main(["adapt", "--model", str(tmp / "no_model"), "--prompts", str(path), "--monitor", "consensus",
                         "--out", str(tmp / "out"), "--no-progress", *args])

    def same(a, b):
        if isinstance(a, (tuple, list)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return torch.equal(a, b)

    def grad(f, x):
        x = x.detach().clone().requires_grad_(True)
        f(x).sum().backward()
        return x.grad

    @contextlib.contextmanager
    def env_var(name, value):
        old = os.environ.get(name)
        os.environ[name] = value
        try:
            yield
        finally:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old

    def within(context, fn):
        with context:
            return fn()

    logits3 = randn(2, 6, 11)
    return dict(
        torch=torch, ttrl_fast=ttrl_fast, cli=cli, tmp=tmp, nan=float("nan"), inf=float("inf"),
        sls=ttrl_fast.selective_log_softmax, fl=ttrl_fast.fused_linear_logprobs, st=ttrl_fast.sample_tokens,
        pl=ttrl_fast.policy_loss, gl=ttrl_fast.grpo_loss, fg=ttrl_fast.fused_linear_grpo_loss,
        ga=ttrl_fast.group_advantages, SP=ttrl_fast.SamplingParams, FLG=ttrl_fast.FusedLinearGRPOLoss,
        logits=randn(3, 11), ids=randint(11, (3,)), logits_vr=randn(11, 3), logits3=logits3,
        ids3=randint(11, (2, 5)), wide=randn(3, 22),
        hidden=randn(4, 8), weight=randn(11, 8), targets=randint(11, (4,)), hidden3=randn(2, 5, 8),
        logp=-torch.rand(2, 5, generator=g), logp_tb=-torch.rand(5, 2, generator=g), adv=randn(2),
        mask=torch.ones(2, 5), keys=torch.arange(3), rewards=randn(6),
        sampler=sampler, trainer=trainer, adapter=adapter, made_run=made_run, resume=resume, PROMPTS=prompts,
        rewrite_weights=rewrite_weights, prompts_file=prompts_file, adapt=adapt, same=same, grad=grad,
        env_var=env_var, within=within, LoraSettings=ttrl_fast.LoraSettings, Prompt=ttrl_fast.Prompt,
    )


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------

_POISON = "the row is poisoned: all three log-probs NaN, token in [0, V) (the Triton kernel's contract)"
_POISON_CHECK = "all(t.isnan().all() for t in out[1:]) and 0 <= int(out[0][0]) < 3"
_CKPT = ("a corrupt checkpoint gives the library's own error naming the file and the run dir (like 'was made "
         "with other prompts'), not a raw third-party one")

CASES: list[Case] = [
    # ---- wrong shapes
    Case("sls_index_shape", "wrong shape", "sls(logits, ids[:2])", ValueError,
         r"index must have the leading shape of logits \(3,\)",
         "index must have the leading shape of logits (3,) (logits (3, 11)), got (2,)"),
    Case("sls_0dim_logits", "wrong shape", "sls(torch.tensor(1.0), torch.tensor(0))", ValueError,
         r"logits must have shape \[\.\.\., V\], got a 0-dim tensor",
         "logits must have shape [..., V], got a 0-dim tensor"),
    Case("fl_hidden_width", "wrong shape", "fl(hidden, weight[:, :7], targets)", ValueError,
         r"hidden must be \[N, H\] or \[B, T, H\] with H = weight.shape\[1\] = 7, got \(4, 8\)",
         "hidden must be [N, H] or [B, T, H] with H = weight.shape[1] = 7, got (4, 8)"),
    Case("fl_weight_1d", "wrong shape", "fl(hidden, weight[0], targets)", ValueError,
         r"weight must be \[V, H\], got shape \(8,\)", "weight must be [V, H], got shape (8,)"),
    Case("fl_bias_shape", "wrong shape", "fl(hidden, weight, targets, bias=torch.zeros(10))", ValueError,
         r"bias must be \[V\] = \(11,\), got \(10,\)", "bias must be [V] = (11,), got (10,)"),
    Case("pl_logp_1d", "wrong shape", "pl(logp[0], None, adv, mask)", ValueError,
         r"logp must be a \[B, T\] float tensor, .*shape \(5,\)",
         "logp must be a [B, T] float tensor, got dtype torch.float32 shape (5,)"),
    Case("pl_advantages_shape", "wrong shape", "pl(logp, None, torch.zeros(3), mask)", ValueError,
         r"advantages must have shape \(2, 5\) or \(2, 1\), got \(3,\)",
         "advantages must have shape (2, 5) or (2, 1), got (3,)"),
    Case("gl_mask_shape", "wrong shape", "gl(logits3[:, :-1], ids3, adv, mask[:, :4])", ValueError,
         r"mask must have the shape of completion_ids \(2, 5\), got \(2, 4\)",
         "mask must have the shape of completion_ids (2, 5), got (2, 4)"),
    Case("st_row_keys_shape", "wrong shape", "st(logits, row_keys=keys[:2])", ValueError,
         r"row_keys must be \[R\] = \(3,\), got shape \(2,\)", "row_keys must be [R] = (3,), got shape (2,)"),
    Case("st_logits_1d", "wrong shape", "st(logits[0], row_keys=keys[:1])", ValueError,
         r"logits must be \[R, V\] with V >= 1, got shape \(11,\)",
         "logits must be [R, V] with V >= 1, got shape (11,)"),
    Case("ga_rewards_2d", "wrong shape", "ga(rewards.view(2, 3), group_size=3)", ValueError,
         r"rewards must be a 1-D float tensor, got dtype torch.float32 shape \(2, 3\)",
         "rewards must be a 1-D float tensor, got dtype torch.float32 shape (2, 3)"),
    Case("fg_hidden_2d", "wrong shape", "fg(hidden3[0], weight, ids3, mask, adv)", ValueError,
         r"hidden must be \[B, T, H\], got \(5, 8\)", "hidden must be [B, T, H], got (5, 8)"),
    # ---- wrong dtypes
    Case("sls_int_logits", "wrong dtype", "sls(logits.long(), ids)", ValueError,
         r"logits must be float32, bfloat16 or float16, got dtype torch.int64",
         "logits must be float32, bfloat16 or float16, got dtype torch.int64 (shape (3, 11))"),
    Case("sls_complex_logits", "wrong dtype", "sls(logits.to(torch.complex64), ids)", ValueError,
         r"logits must be float32, bfloat16 or float16, got dtype torch.complex64",
         "logits must be float32, bfloat16 or float16, got dtype torch.complex64 (shape (3, 11))"),
    Case("sls_float64_logits", "wrong dtype", "sls(logits.double(), ids)", ValueError,
         r"logits must be float32, bfloat16 or float16, got dtype torch.float64",
         "logits must be float32, bfloat16 or float16, got dtype torch.float64 (shape (3, 11))"),
    Case("sls_float_ids", "wrong dtype", "sls(logits, ids.float())", ValueError,
         r"index must be an integer tensor, got dtype torch.float32",
         "index must be an integer tensor, got dtype torch.float32 (shape (3,))"),
    Case("sls_bool_ids", "wrong dtype", "sls(logits, ids.bool())", ValueError,
         r"index must be an integer tensor, got dtype torch.bool",
         "index must be an integer tensor, got dtype torch.bool (shape (3,))"),
    Case("sls_float_mask", "wrong dtype", "sls(logits, ids, mask=torch.ones(3))", ValueError,
         r"mask must be a bool \(or integer 0/1\) tensor, got dtype torch.float32",
         "mask must be a bool (or integer 0/1) tensor, got dtype torch.float32"),
    Case("sls_list_ids", "wrong dtype", "sls(logits, ids.tolist())", TypeError,
         r"index must be a torch.Tensor, got list", "index must be a torch.Tensor, got list"),
    Case("fl_float_targets", "wrong dtype", "fl(hidden, weight, targets.float())", ValueError,
         r"targets must be an integer tensor, got dtype torch.float32",
         "targets must be an integer tensor, got dtype torch.float32 (shape (4,))"),
    Case("fl_int_hidden", "wrong dtype", "fl(hidden.long(), weight, targets)", ValueError,
         r"hidden must be float32, bfloat16 or float16, got dtype torch.int64",
         "hidden must be float32, bfloat16 or float16, got dtype torch.int64 (shape (4, 8))"),
    Case("fl_complex_weight", "wrong dtype", "fl(hidden, weight.to(torch.complex64), targets)", ValueError,
         r"weight must be float32, bfloat16 or float16, got dtype torch.complex64",
         "weight must be float32, bfloat16 or float16, got dtype torch.complex64 (shape (11, 8))"),
    Case("st_int_logits", "wrong dtype", "st(logits.long(), row_keys=keys)", ValueError,
         r"logits must be float32, bfloat16 or float16, got dtype torch.int64",
         "logits must be float32, bfloat16 or float16, got dtype torch.int64 (shape (3, 11))"),
    Case("st_float_row_keys", "wrong dtype", "st(logits, row_keys=keys.float())", ValueError,
         r"row_keys must be an integer tensor, got dtype torch.float32",
         "row_keys must be an integer tensor, got dtype torch.float32 (shape (3,))"),
    Case("pl_int_logp", "wrong dtype", "pl(logp.long(), None, adv, mask)", ValueError,
         r"logp must be a \[B, T\] float tensor, got dtype torch.int64",
         "logp must be a [B, T] float tensor, got dtype torch.int64 shape (2, 5)"),
    Case("pl_complex_logp", "wrong dtype", "pl(logp.to(torch.complex64), None, adv, mask)", ValueError,
         r"logp must be a \[B, T\] float tensor, got dtype torch.complex64",
         "logp must be a [B, T] float tensor, got dtype torch.complex64 shape (2, 5)"),
    Case("pl_int_advantages", "wrong dtype", "pl(logp, None, adv.long(), mask)", ValueError,
         r"advantages must be a float tensor, got dtype torch.int64",
         "advantages must be a float tensor, got dtype torch.int64"),
    Case("ga_int_rewards", "wrong dtype", "ga(torch.arange(6), group_size=3)", ValueError,
         r"rewards must be a 1-D float tensor, got dtype torch.int64",
         "rewards must be a 1-D float tensor, got dtype torch.int64 shape (6,)"),
    Case("gl_list_ids", "wrong dtype", "gl(logits3[:, :-1], ids3.tolist(), adv, mask)",
         TypeError, r"completion_ids must be a torch.Tensor",
         "completion_ids must be a torch.Tensor, got list"),
    Case("fg_list_ids", "wrong dtype", "fg(hidden3, weight, ids3.tolist(), mask, adv)",
         TypeError, r"completion_ids must be a torch.Tensor",
         "completion_ids must be a torch.Tensor, got list"),
    # ---- mismatched devices (the meta device stands in for a second device)
    Case("sls_meta_logits", "mismatched devices", "sls(logits.to('meta'), ids)", ValueError,
         r"tensors must be on one device, got logits on meta, index on cpu",
         "tensors must be on one device, got logits on meta, index on cpu"),
    Case("fl_meta_weight", "mismatched devices", "fl(hidden, weight.to('meta'), targets)", ValueError,
         r"tensors must be on one device, got hidden on cpu, weight on meta, targets on cpu",
         "tensors must be on one device, got hidden on cpu, weight on meta, targets on cpu"),
    Case("pl_meta_advantages", "mismatched devices", "pl(logp, None, adv.to('meta'), mask)", ValueError,
         r"tensors must be on one device, got logp on cpu, advantages on meta, mask on cpu",
         "tensors must be on one device, got logp on cpu, advantages on meta, mask on cpu"),
    Case("st_meta_seen", "mismatched devices",
         "st(logits, row_keys=keys, seen=torch.zeros(3, 11, dtype=torch.bool, device='meta'), repetition_penalty=1.2)",
         ValueError, r"tensors must be on one device, got logits on cpu, row_keys on cpu, seen on meta",
         "tensors must be on one device, got logits on cpu, row_keys on cpu, seen on meta"),
    Case("st_meta_row_keys", "mismatched devices", "st(logits, row_keys=keys.to('meta'))",
         ValueError, r"one device.*row_keys on meta",
         "tensors must be on one device, got logits on cpu, row_keys on meta"),
    Case("st_meta_ban_ids", "mismatched devices",
         "st(logits, row_keys=keys, ban_ids=torch.tensor([1], device='meta'))",
         ValueError, r"one device.*ban_ids on meta",
         "tensors must be on one device, got logits on cpu, row_keys on cpu, ban_ids on meta"),
    Case("ga_meta_group_ids", "mismatched devices",
         "ga(rewards, group_ids=torch.tensor([0, 0, 0, 1, 1, 1], device='meta'))",
         ValueError, r"one device.*group_ids on meta",
         "tensors must be on one device, got rewards on cpu, group_ids on meta"),
    Case("fg_meta_advantages", "mismatched devices", "fg(hidden3, weight, ids3, mask, adv.to('meta'))",
         ValueError, r"tensors must be on one device",
         "tensors must be on one device, got hidden on cpu, completion_ids on cpu, mask on cpu, advantages on meta",
         needs="cpp"),
    # ---- out-of-range token ids
    Case("sls_negative_id", "token id out of range", "sls(logits, torch.tensor([0, -1, 2]))", IndexError,
         r"index values must lie in \[0, V=11\) where mask is True; got min -1",
         "index values must lie in [0, V=11) where mask is True; got min -1, max 2"),
    Case("sls_id_eq_vocab", "token id out of range", "sls(logits, torch.tensor([0, 11, 2]))", IndexError,
         r"index values must lie in \[0, V=11\) where mask is True; got min 0, max 11",
         "index values must lie in [0, V=11) where mask is True; got min 0, max 11"),
    Case("sls_masked_bad_id", "token id out of range",
         "sls(logits, torch.tensor([0, -100, 2]), mask=torch.tensor([True, False, True]))", None,
         "out[1] == 0 and bool((out[[0, 2]] < 0).all())",
         "returns: a masked position's id is not read (-100 is fine there); it gives 0"),
    Case("fl_negative_target", "token id out of range", "fl(hidden, weight, torch.tensor([0, -1, 2, 3]))", IndexError,
         r"targets values must lie in \[0, V=11\) where mask is True; got min -1",
         "targets values must lie in [0, V=11) where mask is True; got min -1, max 3"),
    Case("fl_target_eq_vocab", "token id out of range", "fl(hidden, weight, torch.tensor([0, 11, 2, 3]))",
         IndexError, r"targets values must lie in \[0, V=11\) where mask is True; got min 0, max 11",
         "targets values must lie in [0, V=11) where mask is True; got min 0, max 11"),
    Case("fl_ignore_index", "token id out of range", "fl(hidden, weight, torch.tensor([0, -100, 2, 3]))", None,
         "out[1] == 0 and bool((out[[0, 2, 3]] < 0).all())",
         "returns: ignore_index (-100) positions give 0 and no gradient"),
    Case("fg_target_eq_vocab", "token id out of range", "fg(hidden3, weight, torch.full((2, 5), 11), mask, adv)",
         IndexError, r"targets values must lie in \[0, V=11\) where mask is True; got min 11, max 11",
         "targets values must lie in [0, V=11) where mask is True; got min 11, max 11"),
    Case("st_ban_id_eq_vocab", "token id out of range", "st(logits, row_keys=keys, ban_ids=torch.tensor([11]))",
         ValueError, r"ban_ids must be in \[0, V=11\), got values in \[11, 11\]",
         "ban_ids must be in [0, V=11), got values in [11, 11]"),
    Case("st_negative_ban_id", "token id out of range", "st(logits, row_keys=keys, ban_ids=torch.tensor([-1]))",
         ValueError, r"ban_ids must be in \[0, V=11\), got values in \[-1, -1\]",
         "ban_ids must be in [0, V=11), got values in [-1, -1]"),
    Case("st_negative_row_key", "token id out of range", "st(logits, row_keys=torch.tensor([0, -1, 2]))",
         ValueError, r"row_keys must hold values in \[0, 2\^32\)", "row_keys must hold values in [0, 2^32)"),
    Case("gen_prompt_id_eq_vocab", "token id out of range", "sampler().generate([[1, 20]], SP(max_tokens=2))",
         ValueError, r"prompts\[0\] has token ids outside \[0, vocab_size=20\)",
         "prompts[0] has token ids outside [0, vocab_size=20)"),
    Case("gen_negative_prompt_id", "token id out of range", "sampler().generate([[1, -1]], SP(max_tokens=2))",
         ValueError, r"prompts\[0\] has token ids outside \[0, vocab_size=20\)",
         "prompts[0] has token ids outside [0, vocab_size=20)"),
    Case("gen_allowed_id_eq_vocab", "token id out of range",
         "sampler().generate([[1]], SP(max_tokens=2, allowed_token_ids=[20]))", ValueError,
         r"allowed_token_ids must be < vocab_size=20, got 20",
         "SamplingParams.allowed_token_ids must be < vocab_size=20, got 20"),
    Case("gen_stop_id_eq_vocab", "token id out of range",
         "sampler().generate([[1]], SP(max_tokens=2, stop_token_ids=[20], seed=0))",
         ValueError, r"stop_token_ids must be < vocab_size=20",
         "SamplingParams.stop_token_ids must be < vocab_size=20, got 20"),
    # ---- NaN / inf
    Case("sls_posinf_logit", "NaN / inf input", "sls(torch.tensor([[0., inf, 1.]]), torch.tensor([0]))", None,
         "bool(out.isnan().all())", "returns NaN: +inf in an unmasked row poisons it (documented)"),
    Case("sls_nan_logit", "NaN / inf input",
         "sls(torch.tensor([[0., nan, 1.]]), torch.tensor([0]), return_entropy=True)", None,
         "bool(out[0].isnan().all() and out[1].isnan().all())",
         "returns NaN log-prob and NaN entropy: NaN in an unmasked row poisons it (documented)"),
    Case("sls_neginf_target", "NaN / inf input", "sls(torch.tensor([[0., -inf, 1.]]), torch.tensor([1]))", None,
         "out.item() == -inf", "returns -inf: the exact log-probability of a token with probability 0"),
    Case("sls_all_neginf_row", "NaN / inf input", "sls(torch.full((1, 3), -inf), torch.tensor([1]))", None,
         "bool(out.isnan().all())", "returns NaN: a row with no finite logit has no distribution"),
    Case("fl_nan_hidden", "NaN / inf input", "fl(torch.full((1, 8), nan), weight, torch.tensor([0]))", None,
         "bool(out.isnan().all())", "returns NaN for that row"),
    Case("pl_nan_logp_reference", "NaN / inf input",
         "pl(torch.tensor([[nan, -1.]]), None, torch.ones(1), torch.ones(1, 2), backend='reference')[0]", None,
         "bool(out.isnan())", "returns a NaN loss (as TRL: exp(logp - logp.detach()) is NaN)"),
    Case("pl_nan_logp_cpp", "NaN / inf input",
         "pl(torch.tensor([[nan, -1.]]), None, torch.ones(1), torch.ones(1, 2), backend='cpp')[0]",
         None, "bool(out.isnan())",
         "returns a NaN loss like the reference backend: the on-policy ratio exp(logp - sg(logp)) of a NaN log-prob "
         "is NaN on every backend",
         needs="cpp"),
    Case("ga_nan_reward", "NaN / inf input", "ga(torch.tensor([1., nan, 3., 0., 1., 2.]), group_size=3)[0]", None,
         "out[1] == 0 and bool(out[[0, 2]].abs().gt(0.7).all())",
         "returns: NaN = unscorable, excluded from the group statistics, advantage 0 (documented)"),
    Case("ga_inf_reward", "NaN / inf input", "ga(torch.tensor([1., inf, 3., 0., 1., 2.]), group_size=3)[0]",
         None, "out[1] == 0 and bool(out[[0, 2]].abs().gt(0.7).all())",
         "returns: +-inf is unscorable like NaN (excluded from the group statistics, advantage 0); the finite rewards "
         "1 and 3 keep their advantages"),
    Case("st_posinf_reference", "NaN / inf input",
         "st(torch.tensor([[0., inf, 1.]]), row_keys=torch.tensor([7]), backend='reference')", None, _POISON_CHECK,
         f"returns: {_POISON}"),
    Case("st_all_neginf", "NaN / inf input", "st(torch.full((1, 3), -inf), row_keys=torch.tensor([7]))", None,
         _POISON_CHECK, "returns NaN log-probs and token 0: nothing can be drawn from the row"),
    Case("st_nan_cpp", "NaN / inf input",
         "st(torch.tensor([[0., nan, 1.]]), row_keys=torch.tensor([7]), backend='cpp')",
         None, _POISON_CHECK,
         f"returns: {_POISON}",
         needs="cpp"),
    Case("st_posinf_cpp", "NaN / inf input",
         "st(torch.tensor([[0., inf, 1.]]), row_keys=torch.tensor([7]), backend='cpp')",
         None, _POISON_CHECK,
         f"returns: {_POISON}",
         needs="cpp"),
    Case("st_nan_reference", "NaN / inf input",
         "st(torch.tensor([[0., nan, 1.]]), row_keys=torch.tensor([7]), backend='reference')",
         None, _POISON_CHECK,
         f"returns: {_POISON}"),
    Case("st_nan_top_p_reference", "NaN / inf input",
         "st(torch.tensor([[0., nan, 1.]]), row_keys=torch.tensor([7]), top_p=0.9, backend='reference')",
         None, _POISON_CHECK,
         f"returns: {_POISON}"),
    Case("st_posinf_top_p_reference", "NaN / inf input",
         "st(torch.tensor([[0., inf, 1.]]), row_keys=torch.tensor([7]), top_p=0.9, backend='reference')",
         None, _POISON_CHECK,
         f"returns: {_POISON}"),
    # ---- empty batches
    Case("sls_zero_rows", "empty batch", "sls(torch.randn(0, 11), torch.zeros(0, dtype=torch.long))", None,
         "out.shape == (0,) and out.dtype == torch.float32", "returns an empty float32 tensor"),
    Case("sls_zero_vocab", "empty batch", "sls(torch.randn(3, 0), torch.zeros(3, dtype=torch.long))", IndexError,
         r"index values must lie in \[0, V=0\)",
         "index values must lie in [0, V=0) where mask is True; got min 0, max 0"),
    Case("sls_zero_vocab_masked", "empty batch",
         "sls(torch.randn(3, 0), torch.zeros(3, dtype=torch.long), mask=torch.zeros(3, dtype=torch.bool))", None,
         "same(out, torch.zeros(3))", "returns zeros: every position is masked, nothing is read"),
    Case("fl_zero_rows", "empty batch", "fl(torch.randn(0, 8), weight, torch.zeros(0, dtype=torch.long))", None,
         "out.shape == (0,)", "returns an empty tensor"),
    Case("fl_zero_vocab", "empty batch", "fl(hidden, torch.randn(0, 8), targets)", IndexError,
         r"targets values must lie in \[0, V=0\)",
         "targets values must lie in [0, V=0) where mask is True; got min 3, max 9"),
    Case("st_zero_rows", "empty batch", "st(torch.randn(0, 11), row_keys=torch.zeros(0, dtype=torch.long))", None,
         "all(t.shape == (0,) for t in out)", "returns four empty tensors"),
    Case("st_zero_vocab", "empty batch", "st(torch.randn(3, 0), row_keys=keys)", ValueError,
         r"logits must be \[R, V\] with V >= 1, got shape \(3, 0\)",
         "logits must be [R, V] with V >= 1, got shape (3, 0)"),
    Case("pl_zero_rows", "empty batch", "pl(torch.zeros(0, 5), None, torch.zeros(0), torch.ones(0, 5))[0]", None,
         "out.item() == 0", "returns a zero loss"),
    Case("gl_zero_rows", "empty batch",
         "gl(torch.randn(0, 5, 11), torch.zeros(0, 5, dtype=torch.long), torch.zeros(0), torch.ones(0, 5))[0]",
         None, "out.item() == 0", "returns a zero loss"),
    Case("ga_zero_rewards", "empty batch", "ga(torch.zeros(0), group_size=3)[0]", None, "out.shape == (0,)",
         "returns empty advantages (stats: empty, frac_zero_std NaN)"),
    Case("gen_no_prompts", "empty batch", "sampler().generate([], SP(max_tokens=2))", ValueError,
         r"prompts must be a non-empty list of token-id lists", "prompts must be a non-empty list of token-id lists"),
    Case("gen_empty_prompt", "empty batch", "sampler().generate([[]], SP(max_tokens=2))", ValueError,
         r"prompts\[0\] must be a non-empty list of token ids", "prompts[0] must be a non-empty list of token ids"),
    Case("adapter_no_prompts", "empty batch", "adapter().run([])", None, "out.steps == 0 and out.served == []",
         "returns an empty report (0 steps, nothing served)"),
    # ---- non-contiguous tensors
    Case("sls_transposed", "non-contiguous", "sls(logits_vr.t(), ids)", None,
         "same(out, sls(logits_vr.t().contiguous(), ids))", "returns the contiguous result, bitwise"),
    Case("sls_transposed_grad", "non-contiguous", "grad(lambda x: sls(x.t(), ids, return_entropy=True)[1], logits_vr)",
         None, "same(out, grad(lambda x: sls(x.t().contiguous(), ids, return_entropy=True)[1], logits_vr))",
         "returns the contiguous gradient, bitwise"),
    Case("sls_sliced_3d", "non-contiguous", "sls(logits3[:, :-1], ids3)", None,
         "same(out, sls(logits3[:, :-1].contiguous(), ids3))", "returns the contiguous result (read in place)"),
    Case("sls_strided_vocab", "non-contiguous", "sls(wide[:, ::2], ids)", None,
         "same(out, sls(wide[:, ::2].contiguous(), ids))", "returns the contiguous result (copied once)"),
    Case("sls_expanded_rows", "non-contiguous", "sls(logits[:1].expand(3, 11), ids)", None,
         "same(out, sls(logits[:1].repeat(3, 1), ids))", "returns the contiguous result (row stride 0)"),
    Case("sls_transposed_ids", "non-contiguous", "sls(logits3[:, :-1], ids3.t().contiguous().t())", None,
         "same(out, sls(logits3[:, :-1], ids3))", "returns the contiguous result"),
    Case("fl_transposed_weight", "non-contiguous", "fl(hidden, weight.t().contiguous().t(), targets)", None,
         "torch.allclose(out, fl(hidden, weight, targets), rtol=1e-5, atol=1e-5)",
         "returns the contiguous result (to float rounding of the matmul)"),
    Case("fl_strided_hidden", "non-contiguous", "fl(hidden3[:, ::2], weight, ids3[:, ::2])", None,
         "same(out, fl(hidden3[:, ::2].contiguous(), weight, ids3[:, ::2]))", "returns the contiguous result"),
    Case("st_transposed_logits", "non-contiguous", "st(logits_vr.t(), row_keys=keys, step=1)", None,
         "same(tuple(out), tuple(st(logits_vr.t().contiguous(), row_keys=keys, step=1)))",
         "returns the contiguous result: same tokens, same log-probs"),
    Case("pl_transposed_logp", "non-contiguous", "pl(logp_tb.t(), logp_tb.t() - 0.1, adv, mask)[0]", None,
         "same(out, pl(logp_tb.t().contiguous(), logp_tb.t().contiguous() - 0.1, adv, mask)[0])",
         "returns the contiguous result"),
    Case("gl_sliced_logits", "non-contiguous", "gl(logits3[:, :-1], ids3, adv, mask)[0]", None,
         "same(out, gl(logits3[:, :-1].contiguous(), ids3, adv, mask)[0])", "returns the contiguous result"),
    Case("ga_strided_rewards", "non-contiguous", "ga(rewards[::2], group_size=3)[0]", None,
         "same(out, ga(rewards[::2].contiguous(), group_size=3)[0])", "returns the contiguous result"),
    # ---- group sizes
    Case("ga_not_divisible", "mismatched group size", "ga(rewards, group_size=4)", ValueError,
         r"group_size=4 must divide the number of rewards 6 \(rewards of shape \(6,\)\)",
         "group_size=4 must divide the number of rewards 6 (rewards of shape (6,))"),
    Case("ga_group_size_zero", "mismatched group size", "ga(rewards, group_size=0)", ValueError,
         r"group_size must be a positive int, got 0", "group_size must be a positive int, got 0"),
    Case("ga_group_size_float", "mismatched group size", "ga(rewards, group_size=3.0)", ValueError,
         r"group_size must be a positive int, got 3.0", "group_size must be a positive int, got 3.0"),
    Case("ga_size_and_ids", "mismatched group size",
         "ga(rewards, group_size=3, group_ids=torch.zeros(6, dtype=torch.long))", ValueError,
         r"pass exactly one of group_size .* or group_ids",
         "pass exactly one of group_size (contiguous blocks, TRL) or group_ids (verl uid)"),
    Case("ga_group_ids_shape", "mismatched group size", "ga(rewards, group_ids=torch.zeros(5, dtype=torch.long))",
         ValueError, r"group_ids must have the shape of rewards \(6,\), got \(5,\)",
         "group_ids must have the shape of rewards (6,), got (5,)"),
    Case("gen_group_exceeds_rows", "mismatched group size", "sampler().generate([[1]], SP(n=5, max_tokens=2))",
         ValueError, r"SamplingParams.n=5 exceeds max_rows=4",
         "SamplingParams.n=5 exceeds max_rows=4: a group never splits"),
    # ---- sampling parameters
    Case("sp_top_p_zero", "invalid sampling params", "SP(top_p=0.0)", ValueError,
         r"SamplingParams.top_p must be in \(0, 1\], got 0.0", "SamplingParams.top_p must be in (0, 1], got 0.0"),
    Case("sp_top_p_above_one", "invalid sampling params", "SP(top_p=1.5)", ValueError,
         r"SamplingParams.top_p must be in \(0, 1\], got 1.5", "SamplingParams.top_p must be in (0, 1], got 1.5"),
    Case("sp_negative_temperature", "invalid sampling params", "SP(temperature=-0.1)", ValueError,
         r"SamplingParams.temperature must be finite and >= 0 \(0 = greedy\), got -0.1",
         "SamplingParams.temperature must be finite and >= 0 (0 = greedy), got -0.1"),
    Case("sp_n_zero", "invalid sampling params", "SP(n=0)", ValueError, r"SamplingParams.n must be an int >= 1, got 0",
         "SamplingParams.n must be an int >= 1, got 0"),
    Case("sp_max_tokens_zero", "invalid sampling params", "SP(max_tokens=0)", ValueError,
         r"SamplingParams.max_tokens must be an int >= 1, got 0",
         "SamplingParams.max_tokens must be an int >= 1, got 0"),
    Case("sp_min_above_max", "invalid sampling params", "SP(min_tokens=5, max_tokens=4)", ValueError,
         r"SamplingParams.min_tokens \(5\) must be <= max_tokens \(4\)",
         "SamplingParams.min_tokens (5) must be <= max_tokens (4)"),
    Case("sp_top_k_negative", "invalid sampling params", "SP(top_k=-2)", ValueError,
         r"SamplingParams.top_k must be an int >= -1 \(0 or -1 = off\), got -2",
         "SamplingParams.top_k must be an int >= -1 (0 or -1 = off), got -2"),
    Case("sp_min_p_negative", "invalid sampling params", "SP(min_p=-0.1)", ValueError,
         r"SamplingParams.min_p must be in \[0, 1\], got -0.1", "SamplingParams.min_p must be in [0, 1], got -0.1"),
    Case("sp_min_p_above_one", "invalid sampling params", "SP(min_p=1.1)", ValueError,
         r"SamplingParams.min_p must be in \[0, 1\], got 1.1", "SamplingParams.min_p must be in [0, 1], got 1.1"),
    Case("sp_repetition_penalty_zero", "invalid sampling params", "SP(repetition_penalty=0.0)", ValueError,
         r"SamplingParams.repetition_penalty must be finite and > 0, got 0.0",
         "SamplingParams.repetition_penalty must be finite and > 0, got 0.0"),
    Case("sp_repetition_penalty_negative", "invalid sampling params", "SP(repetition_penalty=-1.0)", ValueError,
         r"SamplingParams.repetition_penalty must be finite and > 0, got -1.0",
         "SamplingParams.repetition_penalty must be finite and > 0, got -1.0"),
    Case("sp_logprobs_mode", "invalid sampling params", "SP(logprobs='all')", ValueError,
         r"SamplingParams.logprobs must be one of \('raw', 'processed', 'both'\), got 'all'",
         "SamplingParams.logprobs must be one of ('raw', 'processed', 'both'), got 'all'"),
    Case("sp_stop_ids_int", "invalid sampling params", "SP(stop_token_ids=5)",
         ValueError, r"SamplingParams.stop_token_ids",
         "SamplingParams.stop_token_ids must be a list of non-negative ints, got 5"),
    Case("st_negative_temperature", "bad temperature", "st(logits, row_keys=keys, temperature=-0.5)",
         ValueError, r"temperature must be finite and >= 0, got -0.5", "temperature must be finite and >= 0, got -0.5"),
    Case("st_top_p_string", "invalid sampling params", "st(logits, row_keys=keys, top_p='0.9')", TypeError, r"top_p",
         "top_p must be a real number, got str"),
    Case("gen_params_dict", "invalid sampling params", "sampler().generate([[1]], {'n': 1})", TypeError,
         r"params must be a ttrl_fast.SamplingParams, got dict", "params must be a ttrl_fast.SamplingParams, got dict"),
    # ---- prompts
    Case("gen_prompt_too_long", "prompt longer than max_seq_len", "sampler().generate([[1] * 14], SP(max_tokens=4))",
         ValueError, r"max_seq_len=16 is too small for prompts\[0\] of length 14 plus max_tokens=4",
         "max_seq_len=16 is too small for prompts[0] of length 14 plus max_tokens=4"),
    Case("adapter_prompt_too_long", "prompt longer than max_seq_len", "adapter().run([Prompt('q', 'abc' * 10)])",
         ValueError, r"max_seq_len=24 is too small for prompts\[0\] of length 30 plus max_tokens=3",
         "max_seq_len=24 is too small for prompts[0] of length 30 plus max_tokens=3"),
    Case("gen_text_prompt", "malformed prompt (token ids)", "sampler().generate(['abc'], SP(max_tokens=2))",
         TypeError, r"prompts\[0\]",
         "prompts[0] must be a list of int token ids, got str (tokenize the text first)"),
    Case("gen_float_token_ids", "malformed prompt (token ids)",
         "sampler().generate([[1.7, 3.2]], SP(max_tokens=2, seed=0))",
         TypeError, r"prompts\[0\]",
         "prompts[0] must be a list of int token ids, got a float (1.7)"),
    # ---- checkpoints / resume
    Case("resume_truncated_safetensors", "corrupt checkpoint", "resume(run)", ValueError, r"adapter\.safetensors",
         "<tmp>/run/checkpoint/adapter.safetensors (run_dir <tmp>/run) is corrupt: not a safetensors file (Error "
         "while deserializing header: invalid header length)",
         setup="run = made_run(); f = run / 'checkpoint' / 'adapter.safetensors'; f.write_bytes(f.read_bytes()[:40])"),
    Case("resume_garbage_safetensors", "corrupt checkpoint", "resume(run)", ValueError, r"adapter\.safetensors",
         "<tmp>/run/checkpoint/adapter.safetensors (run_dir <tmp>/run) is corrupt: not a safetensors file (Error "
         "while deserializing header: header too large)",
         setup="run = made_run(); (run / 'checkpoint' / 'adapter.safetensors').write_bytes(b'\\x00garbage' * 10)"),
    Case("resume_empty_safetensors", "corrupt checkpoint", "resume(run)", ValueError, r"adapter\.safetensors",
         "<tmp>/run/checkpoint/adapter.safetensors (run_dir <tmp>/run) is corrupt: not a safetensors file (Error "
         "while deserializing header: header too small)",
         setup="run = made_run(); (run / 'checkpoint' / 'adapter.safetensors').write_bytes(b'')"),
    Case("resume_missing_safetensors", "corrupt checkpoint", "resume(run)", FileNotFoundError,
         r"No such file or directory: .*checkpoint/adapter\.safetensors",
         "No such file or directory: <tmp>/run/checkpoint/adapter.safetensors",
         setup="run = made_run(); (run / 'checkpoint' / 'adapter.safetensors').unlink()"),
    Case("resume_missing_checkpoint_dir", "corrupt checkpoint", "resume(run)", FileNotFoundError,
         r"No such file or directory: .*checkpoint/adapter\.safetensors",
         "No such file or directory: <tmp>/run/checkpoint/adapter.safetensors",
         setup="run = made_run(); import shutil; shutil.rmtree(run / 'checkpoint')"),
    Case("resume_missing_trainer_state", "corrupt checkpoint", "resume(run)", FileNotFoundError,
         r"No such file or directory: .*checkpoint/trainer\.pt",
         "[Errno 2] No such file or directory: '<tmp>/run/checkpoint/trainer.pt'",
         setup="run = made_run(); (run / 'checkpoint' / 'trainer.pt').unlink()"),
    Case("resume_garbage_trainer_state", "corrupt checkpoint", "resume(run)", ValueError, r"trainer\.pt",
         "<tmp>/run/checkpoint/trainer.pt (run_dir <tmp>/run) is corrupt: not a trainer checkpoint (UnpicklingError: "
         "invalid load key, 'n'.)",
         setup="run = made_run(); (run / 'checkpoint' / 'trainer.pt').write_bytes(b'nope')"),
    Case("resume_garbage_state_json", "corrupt checkpoint", "resume(run)", ValueError, r"state\.json",
         "<tmp>/run/state.json (run_dir <tmp>/run) is corrupt: not JSON (Expecting property name enclosed in double "
         "quotes: line 1 column 2 (char 1))",
         setup="run = made_run(); (run / 'state.json').write_text('{oops')"),
    Case("resume_state_json_without_steps", "corrupt checkpoint", "resume(run)", ValueError, r"state\.json",
         "<tmp>/run/state.json (run_dir <tmp>/run) is corrupt: it needs \"steps_done\", a count >= 0, got {}",
         setup="run = made_run(); (run / 'state.json').write_text('{}')"),
    Case("resume_garbage_metrics", "corrupt checkpoint", "resume(run)", ValueError, r"metrics\.jsonl",
         "<tmp>/run/metrics.jsonl (run_dir <tmp>/run) is corrupt: line 1 is not JSON (Expecting value)",
         setup="run = made_run(); (run / 'metrics.jsonl').write_text('not json\\n')"),
    Case("resume_wrong_shapes", "corrupt checkpoint", "resume(run)", ValueError, r"model\.",
         "<tmp>/run/checkpoint/adapter.safetensors (run_dir <tmp>/run) does not fit the model: trainable state has 12 "
         "tensors of another shape or dtype than the model's, e.g. 'model.embed_tokens.weight' is (3, 3) "
         "torch.float32, the parameter (30, 16) torch.float32; 'model.layers.0.self_attn.q_proj.weight' is (3, 3) "
         "torch.float32, the parameter (16, 16) torch.float32; 'model.layers.0.self_attn.k_proj.weight' is (3, 3) "
         "torch.float32, the parameter (8, 16) torch.float32",
         setup="run = made_run(); rewrite_weights(run, lambda w: {k: torch.zeros(3, 3) for k in w})"),
    Case("resume_other_model_kind", "run dir mismatch", "resume(run, lora=LoraSettings(r=2))",
         ValueError, r"trainable state lacks \d+ tensors, e.g. \['base_model\.model\.",
         "<tmp>/run/checkpoint/adapter.safetensors (run_dir <tmp>/run) does not fit the model: trainable state lacks "
         "14 tensors, e.g. ['base_model.model.model.layers.0.mlp.down_proj.lora_A.default.weight', "
         "'base_model.model.model.layers.0.mlp.down_proj.lora_B.default.weight', "
         "'base_model.model.model.layers.0.mlp.gate_proj.lora_A.default.weight']",
         setup="run = made_run()"),
    Case("resume_other_prompts", "run dir mismatch", "resume(run, prompts=[Prompt('z', 'abc'), Prompt('y', 'q')])",
         ValueError, r"run_dir .*/run was made with other prompts \(e\.g\. \['a'\]\)",
         "run_dir <tmp>/run was made with other prompts (e.g. ['a'])", setup="run = made_run()"),
    Case("resume_without_run_dir", "run dir mismatch", "adapter().run(PROMPTS, resume=True)", ValueError,
         r"resume=True needs run_dir", "resume=True needs run_dir"),
    Case("run_dir_is_a_file", "run dir mismatch", "adapter(run_dir=tmp / 'f').run(PROMPTS, resume=True)",
         FileExistsError, r"File exists: '.*/f'", "[Errno 17] File exists: '<tmp>/f'",
         setup="(tmp / 'f').write_text('x')"),
    # ---- CLI prompt files
    Case("cli_not_json", "malformed prompt file", "adapt(prompts_file('hello\\n'))", SystemExit,
         r"p\.jsonl:1: not JSON \(Expecting value\)", "<tmp>/p.jsonl:1: not JSON (Expecting value)"),
    Case("cli_missing_prompt", "malformed prompt file", "adapt(prompts_file('{\"id\": 1}\\n'))", SystemExit,
         r"p\.jsonl:1: needs a non-empty \"prompt\" \(or \"text\"\) string",
         "<tmp>/p.jsonl:1: needs a non-empty \"prompt\" (or \"text\") string"),
    Case("cli_prompt_not_string", "malformed prompt file", "adapt(prompts_file('{\"prompt\": 5}\\n'))", SystemExit,
         r"p\.jsonl:1: needs a non-empty \"prompt\" \(or \"text\"\) string",
         "<tmp>/p.jsonl:1: needs a non-empty \"prompt\" (or \"text\") string"),
    Case("cli_empty_file", "malformed prompt file", "adapt(prompts_file(''))", SystemExit, r"p\.jsonl: no prompts",
         "<tmp>/p.jsonl: no prompts"),
    Case("cli_blank_lines", "malformed prompt file", "adapt(prompts_file('\\n  \\n'))", SystemExit,
         r"p\.jsonl: no prompts", "<tmp>/p.jsonl: no prompts"),
    Case("cli_missing_file", "malformed prompt file", "adapt(tmp / 'absent.jsonl')", FileNotFoundError,
         r"No such file or directory: '.*absent\.jsonl'",
         "[Errno 2] No such file or directory: '<tmp>/absent.jsonl'"),
    Case("cli_json_array_line", "malformed prompt file", "adapt(prompts_file('[\"what is 2 + 2?\"]\\n'))",
         SystemExit, r"p\.jsonl:1",
         "<tmp>/p.jsonl:1: needs a JSON object with a \"prompt\" (or \"text\") string, got list"),
    Case("cli_json_string_line", "malformed prompt file", "adapt(prompts_file('\"what is 2 + 2?\"\\n'))",
         SystemExit, r"p\.jsonl:1",
         "<tmp>/p.jsonl:1: needs a JSON object with a \"prompt\" (or \"text\") string, got str"),
    Case("cli_duplicate_ids", "malformed prompt file",
         "adapt(prompts_file('{\"id\": \"a\", \"prompt\": \"x\"}\\n{\"id\": \"a\", \"prompt\": \"y\"}\\n'))",
         SystemExit, r"p\.jsonl.*'a'",
         "<tmp>/p.jsonl:2: duplicate id 'a' (first on line 1)"),
    Case("cli_bad_top_p", "bad CLI arguments", "adapt(prompts_file('{\"prompt\": \"x\"}\\n'), '--top-p', '2')",
         ValueError, r"top_p",
         "SamplingParams.top_p must be in (0, 1], got 2.0"),
    Case("cli_missing_model", "bad CLI arguments", "adapt(prompts_file('{\"prompt\": \"x\"}\\n'))", OSError,
         r"no_model",
         "Repo id must be in the form 'repo_name' or 'namespace/repo_name': '<tmp>/no_model'. Use `repo_type` "
         "argument if needed."),
    Case("cli_bad_monitor", "bad CLI arguments", "adapt(prompts_file('{\"prompt\": \"x\"}\\n'), '--monitor', 'votes')",
         SystemExit, r"exit status 2; .*argument --monitor/--reward: invalid choice: 'votes'",
         "exit status 2; stderr: ttrl-fast adapt: error: argument --monitor/--reward: invalid choice: 'votes' "
         "(choose from 'rubric', 'consensus', 'judge', 'pairwise', 'caption')"),
    Case("cli_bad_int", "bad CLI arguments", "adapt(prompts_file('{\"prompt\": \"x\"}\\n'), '--group-size', 'x')",
         SystemExit, r"exit status 2; .*argument --group-size: invalid int value: 'x'",
         "exit status 2; stderr: ttrl-fast adapt: error: argument --group-size: invalid int value: 'x'"),
    Case("cli_unknown_command", "bad CLI arguments", "cli.main(['frobnicate'])", SystemExit,
         r"exit status 2; .*invalid choice: 'frobnicate'",
         "exit status 2; stderr: ttrl-fast: error: argument command: invalid choice: 'frobnicate' (choose from "
         "'adapt', 'demo', 'bench')"),
    # ---- backend names
    Case("sls_unknown_backend", "bad backend name", "sls(logits, ids, backend='tpu')", ValueError,
         r"backend must be one of \('reference', 'cpp', 'triton', 'cuda'\) or None/'auto', got 'tpu'",
         "backend must be one of ('reference', 'cpp', 'triton', 'cuda') or None/'auto', got 'tpu'"),
    Case("ga_unknown_backend", "bad backend name", "ga(rewards, group_size=3, backend='CPP')", ValueError,
         r"backend must be one of .* got 'CPP'",
         "backend must be one of ('reference', 'cpp', 'triton', 'cuda') or None/'auto', got 'CPP'"),
    Case("use_backend_unknown", "bad backend name", "within(ttrl_fast.use_backend('tpu'), lambda: None)", ValueError,
         r"backend must be one of .* got 'tpu'",
         "backend must be one of ('reference', 'cpp', 'triton', 'cuda') or None/'auto', got 'tpu'"),
    Case("env_backend_unknown", "bad backend name",
         "within(env_var('TTRL_FAST_BACKEND', 'tpu'), lambda: sls(logits, ids))", ValueError,
         r"backend must be one of .* got 'tpu'",
         "backend must be one of ('reference', 'cpp', 'triton', 'cuda') or None/'auto', got 'tpu'"),
    Case("flg_unknown_backend", "bad backend name", "FLG(beta=0.0, backend='tpu')(hidden3, weight, ids3, mask, adv)",
         ValueError, r"backend must be one of .* got 'tpu'",
         "backend must be one of ('reference', 'cpp', 'triton', 'cuda') or None/'auto', got 'tpu'"),
    # ---- an unavailable backend forced (CUDA here: no GPU, or CPU tensors)
    Case("sls_cuda_backend", "unavailable backend",
         "sls(logits, ids, backend='cuda')", ttrl_fast.BackendUnavailableError,
         r"backend 'cuda' cannot run selective_log_softmax\(device=cpu, dtype=torch.float32\): .*"
         r"runs on CUDA tensors only, got device=cpu",
         "backend 'cuda' cannot run selective_log_softmax(device=cpu, dtype=torch.float32): no CUDA device is "
         "available (torch.cuda.is_available() is False); runs on CUDA tensors only, got device=cpu"),
    Case("fl_cuda_backend", "unavailable backend", "fl(hidden, weight, targets, backend='cuda')",
         ttrl_fast.BackendUnavailableError, r"backend 'cuda' cannot run selective_log_softmax\(device=cpu",
         "backend 'cuda' cannot run selective_log_softmax(device=cpu, dtype=torch.float32): no CUDA device is "
         "available (torch.cuda.is_available() is False); runs on CUDA tensors only, got device=cpu"),
    Case("pl_cuda_backend", "unavailable backend", "pl(logp, None, adv, mask, backend='cuda')",
         ttrl_fast.BackendUnavailableError, r"backend 'cuda' cannot run policy_loss\(device=cpu",
         "backend 'cuda' cannot run policy_loss(device=cpu, dtype=torch.float32): no CUDA device is available "
         "(torch.cuda.is_available() is False); runs on CUDA tensors only, got device=cpu"),
    Case("ga_cuda_backend", "unavailable backend", "ga(rewards, group_size=3, backend='cuda')",
         ttrl_fast.BackendUnavailableError, r"backend 'cuda' cannot run group_advantages\(device=cpu",
         "backend 'cuda' cannot run group_advantages(device=cpu, dtype=torch.float32): no CUDA device is "
         "available (torch.cuda.is_available() is False); runs on CUDA tensors only, got device=cpu"),
    Case("st_cuda_backend", "unavailable backend", "st(logits, row_keys=keys, backend='cuda')",
         ttrl_fast.BackendUnavailableError, r"backend 'cuda' cannot run sample_tokens\(device=cpu",
         "backend 'cuda' cannot run sample_tokens(device=cpu, dtype=torch.float32): no CUDA device is available "
         "(torch.cuda.is_available() is False); runs on CUDA tensors only, got device=cpu"),
    Case("sampler_under_use_backend_cuda", "unavailable backend",
         "within(ttrl_fast.use_backend('cuda'), lambda: sampler().generate([[1, 3]], SP(max_tokens=2)))",
         ttrl_fast.BackendUnavailableError, r"backend 'cuda' cannot run sample_tokens\(device=cpu",
         "backend 'cuda' cannot run sample_tokens(device=cpu, dtype=torch.float32): no CUDA device is available "
         "(torch.cuda.is_available() is False); runs on CUDA tensors only, got device=cpu"),
    Case("env_backend_cuda", "unavailable backend",
         "within(env_var('TTRL_FAST_BACKEND', 'cuda'), lambda: sls(logits, ids))", ttrl_fast.BackendUnavailableError,
         r"backend 'cuda' cannot run selective_log_softmax\(device=cpu",
         "backend 'cuda' cannot run selective_log_softmax(device=cpu, dtype=torch.float32): no CUDA device is "
         "available (torch.cuda.is_available() is False); runs on CUDA tensors only, got device=cpu"),
    # ---- hyperparameters
    Case("pl_negative_epsilon", "bad loss hyperparameter", "pl(logp, None, adv, mask, epsilon_low=-0.1)", ValueError,
         r"epsilon_low must be finite and >= 0, got -0.1", "epsilon_low must be finite and >= 0, got -0.1"),
    Case("pl_negative_epsilon_high", "bad loss hyperparameter",
         "pl(logp, None, adv, mask, epsilon_high=-0.1)", ValueError,
         r"epsilon_high must be finite and >= 0, got -0.1", "epsilon_high must be finite and >= 0, got -0.1"),
    Case("pl_unknown_loss_type", "bad loss hyperparameter", "pl(logp, None, adv, mask, loss_type='ppo')", ValueError,
         r"loss_type must be one of \('grpo', .*\), got 'ppo'",
         "loss_type must be one of ('grpo', 'bnpo', 'dr_grpo', 'dapo', 'luspo', 'cispo', 'sapo', 'vespo'), got 'ppo'"),
    Case("pl_unknown_kl_estimator", "bad loss hyperparameter",
         "pl(logp, None, adv, mask, kl_estimator='k4')", ValueError,
         r"kl_estimator must be one of \('k1', 'k2', 'k3'\), got 'k4'",
         "kl_estimator must be one of ('k1', 'k2', 'k3'), got 'k4'"),
    Case("pl_unknown_is_level", "bad loss hyperparameter",
         "pl(logp, None, adv, mask, importance_sampling_level='batch')",
         ValueError, r"importance_sampling_level must be 'token' or 'sequence', got 'batch'",
         "importance_sampling_level must be 'token' or 'sequence', got 'batch'"),
    Case("pl_beta_without_ref", "bad loss hyperparameter", "pl(logp, None, adv, mask, beta=0.04)", ValueError,
         r"ref_logp \[B, T\] is required when beta != 0", "ref_logp [B, T] is required when beta != 0"),
    Case("gl_beta_without_ref", "bad loss hyperparameter",
         "gl(logits3[:, :-1], ids3, adv, mask, beta=0.04)", ValueError,
         r"ref_logp \[B, T\] is required when beta != 0", "ref_logp [B, T] is required when beta != 0"),
    Case("fg_beta_without_ref", "bad loss hyperparameter",
         "fg(hidden3, weight, ids3, mask, adv, beta=0.04)", ValueError,
         r"ref_logp \[B, T\] is required when beta != 0", "ref_logp [B, T] is required when beta != 0"),
    Case("flg_beta_without_ref", "bad loss hyperparameter",
         "FLG(beta=0.04)(hidden3, weight, ids3, mask, adv)", ValueError,
         r"beta != 0 needs ref_per_token_logps or ref_input",
         "beta != 0 needs ref_per_token_logps or ref_input (+ ref_weight)"),
    Case("fg_unknown_loss_type", "bad loss hyperparameter", "fg(hidden3, weight, ids3, mask, adv, loss_type='ppo')",
         ValueError, r"loss_type must be one of .*, got 'ppo'",
         "loss_type must be one of ('grpo', 'bnpo', 'dr_grpo', 'dapo', 'luspo', 'cispo', 'sapo', 'vespo'), got 'ppo'"),
    Case("gl_unknown_keyword", "bad loss hyperparameter",
         "gl(logits3[:, :-1], ids3, adv, mask, epsilon=0.2)", TypeError,
         r"unexpected keyword argument 'epsilon'", "policy_loss() got an unexpected keyword argument 'epsilon'"),
    Case("sls_zero_temperature", "bad temperature", "sls(logits, ids, temperature=0.0)", ValueError,
         r"temperature must be finite and > 0, got 0.0", "temperature must be finite and > 0, got 0.0"),
    Case("sls_string_temperature", "bad temperature", "sls(logits, ids, temperature='hot')", TypeError,
         r"temperature must be a real number, got str", "temperature must be a real number, got str"),
    Case("fl_negative_temperature", "bad temperature", "fl(hidden, weight, targets, temperature=-1.0)", ValueError,
         r"temperature must be finite and > 0, got -1.0", "temperature must be finite and > 0, got -1.0"),
    Case("ga_negative_eps", "bad advantage hyperparameter", "ga(rewards, group_size=3, eps=-1.0)", ValueError,
         r"eps must be >= 0, got -1.0", "eps must be >= 0, got -1.0"),
    Case("ga_unknown_mode", "bad advantage hyperparameter", "ga(rewards, group_size=3, mode='zscore')", ValueError,
         r"mode must be one of \('group', 'batch', 'none', 'rloo'\), got 'zscore'",
         "mode must be one of ('group', 'batch', 'none', 'rloo'), got 'zscore'"),
    Case("config_negative_epsilon", "bad config / constructor argument",
         "ttrl_fast.GRPOConfig(epsilon=-0.1)", ValueError,
         r"GRPOConfig.epsilon must be a finite number >= 0, got -0.1",
         "GRPOConfig.epsilon must be a finite number >= 0, got -0.1"),
    Case("config_negative_beta", "bad config / constructor argument", "ttrl_fast.GRPOConfig(beta=-0.1)", ValueError,
         r"GRPOConfig.beta must be a finite number >= 0, got -0.1",
         "GRPOConfig.beta must be a finite number >= 0, got -0.1"),
    Case("config_unknown_loss_type", "bad config / constructor argument",
         "ttrl_fast.GRPOConfig(loss_type='ppo')", ValueError,
         r"GRPOConfig.loss_type must be one of .*, got 'ppo'",
         "GRPOConfig.loss_type must be one of ('grpo', 'bnpo', 'dr_grpo', 'dapo', 'luspo', 'cispo', 'sapo', 'vespo'), "
         "got 'ppo'"),
    Case("config_bad_sampling_field", "bad config / constructor argument",
         "ttrl_fast.GRPOConfig(top_p=2.0)", ValueError,
         r"SamplingParams.top_p must be in \(0, 1\], got 2.0", "SamplingParams.top_p must be in (0, 1], got 2.0"),
    Case("fg_negative_epsilon", "bad loss hyperparameter", "fg(hidden3, weight, ids3, mask, adv, epsilon_low=-0.1)",
         ValueError, r"epsilon_low",
         "epsilon_low must be finite and >= 0, got -0.1"),
    Case("fg_unknown_kl_estimator", "bad loss hyperparameter",
         "fg(hidden3, weight, ids3, mask, adv, beta=0.1, ref_logp=torch.zeros(2, 5), kl_estimator='k9')",
         ValueError, r"kl_estimator must be one of",
         "kl_estimator must be one of ('k1', 'k2', 'k3'), got 'k9'"),
    Case("fg_unknown_is_level", "bad loss hyperparameter",
         "fg(hidden3, weight, ids3, mask, adv, importance_sampling_level='batch')",
         ValueError, r"importance_sampling_level",
         "importance_sampling_level must be 'token' or 'sequence', got 'batch'"),
    Case("pl_negative_delta", "bad loss hyperparameter", "pl(logp, logp - 0.1, adv, mask, delta=-1.0)",
         ValueError, r"delta",
         "delta must be a finite number > 0 or None, got -1.0"),
    Case("pl_nan_beta", "bad loss hyperparameter", "pl(logp, None, adv, mask, beta=nan, ref_logp=logp)",
         ValueError, r"beta",
         "beta must be finite and >= 0, got nan"),
    Case("pl_dr_grpo_zero_length", "bad loss hyperparameter",
         "pl(logp, None, adv, mask, loss_type='dr_grpo', max_completion_length=0)",
         ValueError, r"max_completion_length",
         "max_completion_length must be a positive int or None, got 0"),
    Case("pl_negative_num_items", "bad loss hyperparameter", "pl(logp, None, adv, mask, num_items_in_batch=-5)",
         ValueError, r"num_items_in_batch",
         "num_items_in_batch must be a finite count >= 0, got -5.0"),
    Case("pl_string_delta", "bad loss hyperparameter", "pl(logp, None, adv, mask, delta='x')", ValueError, r"delta",
         "delta must be a finite number > 0 or None, got 'x'"),
    Case("sampler_without_model", "bad config / constructor argument",
         "ttrl_fast.RolloutSampler(None, max_rows=2, max_seq_len=16)",
         TypeError, r"model",
         "model must be an HF causal LM (a torch.nn.Module with a .config), got NoneType"),
]


# ------------------------------------------------------------------------------------------------
# Running a case
# ------------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    raised: BaseException | None
    value: object
    message: str  # normalised: <tmp> for the temp dir; argparse exits: "exit status N; stderr: <last line>"
    env: dict

    @property
    def type_name(self) -> str:
        return "" if self.raised is None else type(self.raised).__name__


def execute(case: Case, tmp: Path) -> Outcome:
    tmp.mkdir(parents=True, exist_ok=True)
    env = make_env(tmp)
    stderr = io.StringIO()
    raised, value = None, None
    try:
        with contextlib.redirect_stderr(stderr):
            if case.setup:
                exec(case.setup, env)  # noqa: S102 - the table's own statements
            value = eval(case.call, env)  # noqa: S307 - the table's own expressions
    except (Exception, SystemExit) as exc:  # KeyboardInterrupt still stops the run
        raised = exc
    if isinstance(raised, SystemExit) and isinstance(raised.code, int):
        lines = [l for l in stderr.getvalue().splitlines() if l.strip()]
        message = f"exit status {raised.code}; stderr: {lines[-1] if lines else ''}"
    elif isinstance(raised, KeyError):
        message = repr(raised.args[0]) if raised.args else ""
    else:
        message = "" if raised is None else str(raised)
    return Outcome(raised, value, message.replace(str(tmp), "<tmp>"), env)


def verify(case: Case, tmp: Path) -> None:
    """AssertionError unless the case behaves as the table expects (for a finding: the desired way)."""
    out = execute(case, tmp)
    if case.error is None:
        if out.raised is not None:
            raise AssertionError(f"{case.id}: expected a defined output, got {out.type_name}: {out.message}")
        out.env["out"] = out.value
        try:
            holds = bool(eval(case.match, out.env))  # noqa: S307 - the table's own check
        except Exception as exc:  # a check that cannot even be evaluated on this output fails like a false one
            raise AssertionError(f"{case.id}: check {case.match} raised {type(exc).__name__}: {exc}") from exc
        if not holds:
            raise AssertionError(f"{case.id}: check failed: {case.match}; got {out.value!r}")
        return
    if out.raised is None:
        raise AssertionError(f"{case.id}: expected {_names(case.error)}, returned {out.value!r}")
    if not isinstance(out.raised, case.error):
        raise AssertionError(f"{case.id}: expected {_names(case.error)}, got {out.type_name}: {out.message}")
    if not re.search(case.match, out.message):
        raise AssertionError(f"{case.id}: message {out.message!r} does not match {case.match!r}")


def _names(error) -> str:
    return " or ".join(f"`{e.__name__}`" for e in (error if isinstance(error, tuple) else (error,)))


def _skip_reason(case: Case) -> str:
    if case.needs and not ttrl_fast.backends.available(case.needs):
        return f"the {case.needs} backend is not available here"
    return ""


def _params():
    params = []
    for case in CASES:
        marks = []
        if _skip_reason(case):
            marks.append(pytest.mark.skip(reason=_skip_reason(case)))
        if case.finding:
            marks.append(pytest.mark.xfail(strict=True, raises=AssertionError, reason=case.finding))
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


@pytest.mark.parametrize("case", _params())
def test_bad_input(case, tmp_path):
    verify(case, tmp_path)


def test_table_is_consistent():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    for c in CASES:
        assert c.call and c.kind and c.message, c.id
        if c.error is not None and not c.finding:  # the documented message satisfies the tested pattern
            assert re.search(c.match, c.message), (c.id, c.match, c.message)
        if c.error is not None:
            re.compile(c.match)
        else:
            compile(c.match, c.id, "eval")
        compile(c.call, c.id, "eval")
        if c.setup:
            compile(c.setup, c.id, "exec")
        if c.now:
            assert c.finding, f"{c.id}: `now` is only for findings"
        if not c.finding:
            assert not isinstance(c.error, tuple), f"{c.id}: a row documents one exact type; tuples are for findings"
    assert len({c.kind for c in CASES}) >= 20 and len(CASES) >= 20


def test_doc_matches_the_table():
    assert DOC.exists(), "run: python tests/test_bad_inputs.py --write-doc"
    assert DOC.read_text() == render_doc(), (
        "docs/bad_inputs.md is out of date with tests/test_bad_inputs.py; run: python tests/test_bad_inputs.py "
        "--write-doc")


def run_all(base: Path) -> list[dict]:
    """Every case in this one process (no isolation), in table order: what a user calling them in turn
    would see. Returns one record per case."""
    records = []
    for i, case in enumerate(CASES):
        if _skip_reason(case):
            records.append({"id": case.id, "skipped": True})
            continue
        out = execute(case, base / f"{i:03d}")
        records.append({"id": case.id, "type": out.type_name, "message": out.message})
    return records


def test_no_case_crashes_the_process(tmp_path):
    """All cases, run one after another in one child process, end with a normal exit: no segfault, no
    abort, no hang; and each raises today's documented exception type (or returns)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # tiny tensors: threads only add contention on a shared machine
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--run-all", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, f"child exited with {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
    records = {r["id"]: r for r in map(json.loads, lines)}
    assert list(records) == [c.id for c in CASES], "the child did not run every case"
    for case in CASES:
        record = records[case.id]
        if record.get("skipped"):
            continue
        expected = case.now if case.finding else ("" if case.error is None else case.error.__name__)
        assert record["type"] == expected, (case.id, record, expected)


# ------------------------------------------------------------------------------------------------
# The doc
# ------------------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return "`" + _cell(text) + "`" if "`" not in text else "``" + _cell(text) + "``"


def render_doc() -> str:
    findings = [c for c in CASES if c.finding]
    number = {c.id: i + 1 for i, c in enumerate(findings)}
    kinds = list(dict.fromkeys(c.kind for c in CASES))
    lines = [
        "# Bad inputs: what each one gets",
        "",
        "<!-- generated by `python tests/test_bad_inputs.py --write-doc` from the table in tests/test_bad_inputs.py;",
        "     tests/test_bad_inputs.py::test_doc_matches_the_table fails when the two differ. Do not edit by hand. -->",
        "",
        f"{len(CASES)} bad inputs in {len(kinds)} kinds, every one through the public API (`ttrl_fast.*`, "
        "`ttrl_fast.cli.main`, `TestTimeAdapter`), each a row of one table that the tests run "
        "(`tests/test_bad_inputs.py::test_bad_input[<id>]`) and this page is generated from. A row either raises "
        "(exception type and the message it gets today, `<tmp>` standing for a temporary directory; the test "
        "searches a regex of it) or returns a defined output (the test evaluates the check shown). All rows also "
        "run one after another in a single child process (`test_no_case_crashes_the_process`): nothing "
        "segfaults, aborts or hangs.",
        "",
        f"**{len(findings)} rows are findings** (marked F*n*): today's behaviour is a crash inside a kernel, "
        "garbage, or an error that does not say what is wrong. Their test asserts the desired behaviour and is "
        "`xfail(strict=True)`, so it starts failing (XPASS) the day the gap is fixed: then drop the finding from "
        "the table and regenerate this page.",
        "",
        "The calls use these fixtures (`make_env` in the test file):",
        "",
        "```text",
        FIXTURES,
        "```",
        "",
        "| id | kind | example call | exception | message / outcome |",
        "|---|---|---|---|---|",
    ]
    for c in CASES:
        call = (c.setup + "; " if c.setup else "") + c.call
        if c.finding:
            today = f"`{c.now}`" if c.now else "returns"
            wanted = (f"{_names(c.error)} matching {_code(c.match)}" if c.error is not None
                      else f"returns with {_code(c.match)}")
            exc = f"**F{number[c.id]}** {today}; wanted: {wanted}"
        elif c.error is None:
            exc = "— (returns)"
        else:
            exc = f"`{c.error.__name__}`"
        message = c.message
        if c.error is None and not c.finding:
            message += f"; check: {_code(c.match)}"
        lines.append(f"| {c.id} | {c.kind} | {_code(call)} | {exc} | {_cell(message)} |")
    lines += ["", "## Findings", ""]
    for c in findings:
        call = (c.setup + "\n" if c.setup else "") + c.call
        want = (f"raises {_names(c.error)} matching `{c.match}`" if c.error is not None
                else f"returns with `{c.match}` true")
        lines += [
            f"**F{number[c.id]} `{c.id}`** ({c.kind}). {c.finding}",
            "",
            f"Today: {('`' + c.now + '`: ') if c.now else 'returns: '}{c.message.removeprefix('returns: ')}. "
            f"Test expects: {want}.",
            "",
            "```python",
            call.replace("; ", "\n") if c.setup else call,
            "```",
            "",
            f"Run it: `python tests/test_bad_inputs.py --case {c.id}`.",
            "",
        ]
    lines += [
        "## Adding a row",
        "",
        "Append a `Case(id, kind, call, error, match, message, ...)` to `CASES` in tests/test_bad_inputs.py "
        "(for a defined output: `error=None` and `match` a check on `out`), then "
        "`python tests/test_bad_inputs.py --write-doc`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write-doc"]:
        DOC.write_text(render_doc())
        print(f"wrote {DOC} ({len(CASES)} cases)")
    elif sys.argv[1:2] == ["--case"] and len(sys.argv) == 3:  # one case, standalone: a reproducer
        import tempfile

        (case,) = [c for c in CASES if c.id == sys.argv[2]]
        with tempfile.TemporaryDirectory() as tmp:
            if case.setup:
                print(">>> " + case.setup.replace("; ", "\n>>> "))
            print(">>> " + case.call)
            out = execute(case, Path(tmp))
            print(f"{out.type_name}: {out.message}" if out.raised is not None else repr(out.value))
    elif sys.argv[1:2] == ["--run-all"]:
        for record in run_all(Path(sys.argv[2])):
            print(json.dumps(record), flush=True)
        print(f"ran {len(CASES)} cases")
    else:
        sys.exit(__doc__)
