"""The compiled extensions: present when the build was required (CI sets TTRL_FAST_REQUIRE_EXT=1, so
a broken build fails here instead of silently skipping every C++ test), loadable, and their
shared arithmetic (the helpers the CUDA kernels run per thread) checked on the CPU."""
import os

import pytest
import torch

from ttrl_fast import _ext, backends, reference
from ttrl_fast.testing import make_logits, scaled_error

REQUIRED = os.environ.get("TTRL_FAST_REQUIRE_EXT") == "1"


def test_cpu_extension_loads_when_required():
    if not REQUIRED and _ext.extension("cpu") is None:
        pytest.skip(_ext.LOAD_ERRORS["cpu"])
    lib = _ext.extension("cpu")
    assert lib is not None, _ext.LOAD_ERRORS.get("cpu")
    assert lib.build_info()["isa"] in ("avx512", "avx2", "baseline")
    assert backends.available("cpp")


def test_cuda_extension_builds_and_loads_when_required():
    """On a machine without a GPU the CUDA extension still has to build, link and import."""
    wanted = REQUIRED and torch.version.cuda is not None
    if not wanted and _ext.extension("cuda") is None:
        pytest.skip(_ext.LOAD_ERRORS["cuda"])
    lib = _ext.extension("cuda")
    assert lib is not None, _ext.LOAD_ERRORS.get("cuda")
    info = lib.build_info()
    assert info["arch_list"], info
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA tensor"):  # a readable refusal, not a crash
            lib.selective_log_softmax_fwd(torch.randn(1, 2, 5), torch.zeros(2, dtype=torch.long), None, 1.0, False)


@pytest.mark.skipif(_ext.extension("cpu") is None, reason="C++ extension not built")
@pytest.mark.parametrize("temperature", [0.7, 1.3])
@pytest.mark.parametrize("case", ["random", "offset", "neg_inf", "leading_neg_inf", "growing_max"])
def test_per_thread_streaming_helpers_match_the_reference(case, temperature):
    """lse_rebase / lse_accumulate element by element and lse_merge of two halves: the path every
    CUDA thread takes, run here through the C++ test hook."""
    v = 301
    row = make_logits((v,), offset=1e4 if case == "offset" else 0.0,
                      neg_inf_fraction=0.2 if case == "neg_inf" else 0.0)
    if case == "leading_neg_inf":
        row[: v // 2] = float("-inf")
    if case == "growing_max":
        row = torch.linspace(-20, 20, v)
    out = _ext.extension("cpu").debug_lse_paths(row.float().contiguous(), 1.0 / temperature)
    x = row.double() / temperature
    log_sum_ref = torch.logsumexp(x - x.max(), 0)
    _, entropy_ref = reference.selective_log_softmax(row.double(), torch.tensor(0), temperature=temperature,
                                                     return_entropy=True)
    for path in range(2):  # 0: one stream, 1: two halves merged
        assert out[path, 0].item() == row.max().item()
        assert scaled_error(out[path, 1], log_sum_ref) <= 1e-6
        assert scaled_error(out[path, 2], entropy_ref) <= 1e-5


@pytest.mark.skipif(_ext.extension("cpu") is None, reason="C++ extension not built")
def test_streaming_helpers_poison_nan_and_inf():
    lib = _ext.extension("cpu")
    for bad in (float("nan"), float("inf")):
        row = torch.randn(64)
        row[40] = bad
        assert lib.debug_lse_paths(row, 1.0)[:, 1:].isnan().all()
