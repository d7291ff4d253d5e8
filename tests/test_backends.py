"""The dispatch mechanism: priority lists, explicit choices, and errors that say why."""
import os

import pytest
import torch

import ttrl_fast
from ttrl_fast import backends


def _inputs():
    logits = torch.randn(2, 3, 11)
    return logits, torch.randint(0, 11, (2, 3))


def test_auto_picks_cpp_on_cpu_when_built_else_reference():
    expected = "cpp" if backends.available("cpp") else "reference"
    assert backends.select("selective_log_softmax", torch.device("cpu"), torch.float32).backend == expected


def test_explicit_backend_that_cannot_run_raises_with_reasons():
    with pytest.raises(ttrl_fast.BackendUnavailableError) as info:
        ttrl_fast.selective_log_softmax(*_inputs(), backend="cuda")
    message = str(info.value)
    assert "'cuda'" in message and "device=cpu" in message and "CUDA tensors only" in message


def test_triton_on_cpu_only_under_the_interpreter_and_only_when_asked(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert any("TRITON_INTERPRET" in r for r in backends.refusal_reasons(
        "selective_log_softmax", "triton", cpu, torch.float32, explicit=True))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert any("explicitly" in r for r in backends.refusal_reasons(
        "selective_log_softmax", "triton", cpu, torch.float32, explicit=False))
    assert backends.select("selective_log_softmax", cpu, torch.float32).backend != "triton"


def test_unknown_backend_name_is_a_value_error():
    with pytest.raises(ValueError, match="backend must be one of"):
        ttrl_fast.selective_log_softmax(*_inputs(), backend="cudnn")


def test_environment_variable_and_context_manager_override(monkeypatch):
    logits, index = _inputs()
    monkeypatch.setenv("TTRL_FAST_BACKEND", "cuda")
    with pytest.raises(ttrl_fast.BackendUnavailableError):
        ttrl_fast.selective_log_softmax(logits, index)
    # The context manager wins over the environment, the argument over both.
    with ttrl_fast.use_backend("reference"):
        ttrl_fast.selective_log_softmax(logits, index)
        with pytest.raises(ttrl_fast.BackendUnavailableError):
            ttrl_fast.selective_log_softmax(logits, index, backend="cuda")
    monkeypatch.setenv("TTRL_FAST_BACKEND", "auto")
    ttrl_fast.selective_log_softmax(logits, index)


def test_no_backend_at_all_lists_every_rejection(monkeypatch):
    monkeypatch.setitem(backends.PRIORITY, "cpu", ("cuda",))
    with pytest.raises(ttrl_fast.BackendUnavailableError) as info:
        backends.select("selective_log_softmax", torch.device("cpu"), torch.float32)
    assert "no backend for selective_log_softmax" in str(info.value) and "cuda:" in str(info.value)


def test_reference_runs_where_kernels_refuse_the_dtype():
    reasons = backends.refusal_reasons("selective_log_softmax", "cpp", torch.device("cpu"), torch.float64, True)
    assert any("dtype" in r for r in reasons)
    assert not backends.refusal_reasons("selective_log_softmax", "reference", torch.device("cpu"),
                                        torch.float64, True)


def test_available_backends_lists_what_runs_on_cpu():
    names = ttrl_fast.available_backends("cpu")
    assert "reference" in names and "cuda" not in names
    assert ("triton" in names) == (os.environ.get("TRITON_INTERPRET") == "1" and backends.unavailable_reason(
        "triton") is None)
