"""fp32 skinny GEMM of the C++ CPU extension (csrc/cpu/linear_skinny_f32*.cpp) and its Python entry
point ttrl_fast.cpu_linear.linear_f32: out[M, N] = x[M, K] @ w[N, K]^T (+ bias), checked on both
paths (the AVX-512 kernel where the CPU has it, and the portable fallback) against a float64 ground
truth, plus the summation-order contract: bitwise equal across calls, thread counts and paths."""
import math

import pytest
import torch
import torch.nn.functional as F

from ttrl_fast import _ext
from ttrl_fast import cpu_linear

ext = _ext.extension("cpu")
HAS_EXT = ext is not None and hasattr(ext, "linear_f32")
needs_ext = pytest.mark.skipif(not HAS_EXT, reason=_ext.LOAD_ERRORS.get("cpu") or "C++ extension lacks linear_f32")
HAS_NATIVE = HAS_EXT and ext.linear_f32_has_native()
needs_native = pytest.mark.skipif(not HAS_NATIVE, reason="no AVX-512 (or no extension) here")
PATHS = [pytest.param("native", marks=needs_native), pytest.param("portable", marks=needs_ext)]
# Per element, |out - exact| <= TOL * (|x| @ |w|^T + |bias|) (+ a denormal floor): fp32 accumulation
# of K / 16 terms per lane, 4 folding levels and the bias add stay far below 1e-5 for these K.
TOL = 1e-5


def linear(x, w, bias=None, path="portable"):
    return ext.linear_f32(x, w, bias, path == "portable")


def assert_close(out, x, w, bias=None, tol=TOL):
    ref = x.double() @ w.double().T
    scale = x.double().abs() @ w.double().abs().T
    if bias is not None:
        ref = ref + bias.double()
        scale = scale + bias.double().abs()
    assert out.shape == ref.shape and out.dtype == torch.float32
    err = (out.double() - ref).abs()
    bound = tol * scale + x.shape[1] * 2.0**-149 + 1e-300
    worst = (err / bound).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"max error {worst:.3g} x the bound ({tol} * sum |x||w|)"


def operands(m, n, k, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    return x, w, b


def bits(t):
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("k", [1, 5, 16, 17, 63, 333])
@pytest.mark.parametrize("n", [1, 3, 5, 17, 130])
@pytest.mark.parametrize("m", [1, 2, 3, 6, 8, 11])
def test_odd_shapes_match_float64(m, n, k, bias, path):
    """Every register-block height (1, 2, 3, 6, 8 = 4 + 4, 11 = 6 + 5), column tails (N % 4) and K
    tails (K % 16)."""
    x, w, b = operands(m, n, k, bias, seed=m * 1000003 + n * 1009 + k)
    assert_close(linear(x, w, b, path), x, w, b)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(65, 70, 100), (130, 33, 256), (200, 9, 40), (30, 21, 20000)])
def test_many_rows_and_passes(shape, path):
    """M > 64 (several passes over w, balanced register blocks) and a K so large that a pass holds
    fewer than 64 rows (rows_per_pass)."""
    x, w, b = operands(*shape, True, seed=sum(shape))
    assert_close(linear(x, w, b, path), x, w, b)


@needs_native
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 17), (8, 301, 256), (13, 64, 1000), (67, 130, 45), (6, 5, 0)])
def test_native_bitwise_equals_portable(shape, bias):
    """Both kernels evaluate the same summation order (linear_f32_math.h), bit for bit."""
    x, w, b = operands(*shape, bias, seed=3)
    assert torch.equal(bits(linear(x, w, b, "native")), bits(linear(x, w, b, "portable")))


@pytest.mark.parametrize("path", PATHS)
def test_deterministic_and_thread_count_independent(path):
    m, n, k = (8, 4100, 256) if path == "native" else (9, 203, 64)
    x, w, b = operands(m, n, k, True, seed=11)
    first = linear(x, w, b, path)
    assert torch.equal(bits(first), bits(linear(x, w, b, path)))
    threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            assert torch.equal(bits(first), bits(linear(x, w, b, path))), f"{t} threads"
    finally:
        torch.set_num_threads(threads)
    assert_close(first, x, w, b)


@pytest.mark.parametrize("path", PATHS)
def test_exact_when_sums_are_representable(path):
    """Small integers: every product and partial sum is exact in fp32, so the result is exact."""
    g = torch.Generator().manual_seed(3)
    m, n, k = 11, 37, 515
    x = torch.randint(-8, 9, (m, k), generator=g).float()
    w = torch.randint(-8, 9, (n, k), generator=g).float()
    b = torch.randint(-100, 100, (n,), generator=g).float()
    out = linear(x, w, b, path)
    assert torch.equal(out.double(), x.double() @ w.double().T + b.double())


@pytest.mark.parametrize("path", PATHS)
def test_extreme_magnitudes(path):
    """Rows and columns scaled over 10^-18 .. 10^18 (products up to ~1e36, sums near the fp32 range,
    denormal products): still within the relative bound of each element's own scale."""
    g = torch.Generator().manual_seed(5)
    m, n, k = 9, 23, 70
    x = torch.randn(m, k, generator=g) * torch.logspace(-18, 18, m).unsqueeze(1)
    w = torch.randn(n, k, generator=g) * torch.logspace(18, -18, n).unsqueeze(1)
    b = torch.randn(n, generator=g) * 1e30
    assert_close(linear(x, w, None, path), x, w)
    assert_close(linear(x, w, b, path), x, w, b)


@pytest.mark.parametrize("path", PATHS)
def test_overflow_nan_and_inf_propagate(path):
    x, w, _ = operands(9, 70, 33, False, seed=2)
    x[2, 5] = float("nan")
    w[40, 7] = float("inf")
    x[4] = 3e38  # every product overflows
    out = linear(x, w, None, path)
    assert out[2].isnan().all()
    assert not out[4].isfinite().any()
    rest = torch.ones(9, dtype=torch.bool)
    rest[2] = rest[4] = False
    assert out[rest, 40].isinf().all()  # x[:, 7] is nonzero
    finite = torch.ones(9, 70, dtype=torch.bool)
    finite[2] = finite[4] = False
    finite[:, 40] = False
    assert out[finite].isfinite().all()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_strided_rows(path, bias):
    """x and w column slices of wider tensors (row strides > K, unaligned starts) and a broadcast
    row (stride 0): the kernel reads rows in place."""
    m, n, k = 19, 150, 131
    g = torch.Generator().manual_seed(7)
    x_wide = torch.randn(m, k + 9, generator=g)
    w_wide = torch.randn(n, k + 5, generator=g)
    x, w = x_wide[:, 3:3 + k], w_wide[:, 1:1 + k]
    assert x.stride() == (k + 9, 1) and w.stride() == (k + 5, 1)
    b = torch.randn(n, generator=g) if bias else None
    out = linear(x, w, b, path)
    assert_close(out, x, w, b)
    assert torch.equal(bits(out), bits(linear(x.contiguous(), w.contiguous(), b, path)))
    row = torch.randn(1, k, generator=g).expand(4, k)
    out = linear(row, w, b, path)
    assert (out == out[:1]).all()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_k_zero_writes_bias_or_zeros(path, bias):
    m, n = 5, 37
    b = torch.randn(n) if bias else None
    out = linear(torch.empty(m, 0), torch.empty(n, 0), b, path)
    assert torch.equal(out, b.expand(m, n) if bias else torch.zeros(m, n))


@pytest.mark.parametrize("path", PATHS)
def test_empty_m_or_n(path):
    assert linear(torch.empty(0, 8), torch.randn(4, 8), None, path).shape == (0, 4)
    assert linear(torch.randn(3, 8), torch.empty(0, 8), torch.empty(0), path).shape == (3, 0)


@needs_ext
def test_validation_errors():
    x = torch.randn(4, 8)
    w = torch.randn(6, 8)
    cases = [
        ((x.double(), w), "x must be float32, got Double"),
        ((x, w.bfloat16()), "weight must be float32, got BFloat16"),
        ((x.view(2, 2, 8), w), r"x must be 2-D \[M, K\], got 3-D shape \[2, 2, 8\]"),
        ((x, w[0]), r"weight must be 2-D \[N, K\]"),
        ((torch.randn(8, 4).T, w), r"x\.stride\(1\) must be 1"),
        ((x, torch.randn(8, 6).T), r"weight\.stride\(1\) must be 1"),
        ((x, torch.randn(6, 9)), r"share the inner dimension K: x \[4, 8\] is \[M, K\] and weight \[6, 9\]"),
        ((x, w, torch.randn(5)), r"bias must be a contiguous \[N\] = \[6\] tensor .* got shape \[5\]"),
        ((x, w, torch.randn(6, 2)[:, 0]), r"bias must be a contiguous \[N\] = \[6\]"),
        ((x, w, torch.randn(6).double()), "bias must be float32"),
        ((x.to("meta"), w), "x must be a CPU tensor, got device meta"),
        ((x, w.to("meta")), "weight must be a CPU tensor"),
    ]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            ext.linear_f32(*args)


# --------------------------------------------------------------------------- Python entry point


def test_has_native_is_a_bool():
    assert cpu_linear.has_native() is HAS_NATIVE


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("lead", [(), (1,), (3,), (2, 5), (2, 0)], ids=str)
def test_entry_point_flattens_leading_dims(lead, bias):
    k, n = 37, 21
    g = torch.Generator().manual_seed(len(lead))
    x = torch.randn(*lead, k, generator=g)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    out = cpu_linear.linear_f32(x, w, b)
    assert out.shape == (*lead, n) and out.dtype == torch.float32
    flat = x.reshape(-1, k)
    if flat.shape[0]:
        assert_close(out.reshape(-1, n), flat, w, b)
    if HAS_NATIVE:
        assert torch.equal(bits(out.reshape(-1, n)), bits(ext.linear_f32(flat, w, b)))


@needs_native
def test_entry_point_non_contiguous_x_and_bias():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 40, 3, generator=g)[..., 0]  # [6, 40] with stride(-1) == 3
    w = torch.randn(10, 40, generator=g)
    b = torch.randn(10, 2, generator=g)[:, 1]
    out = cpu_linear.linear_f32(x, w, b)
    assert torch.equal(bits(out), bits(ext.linear_f32(x.contiguous(), w, b.contiguous())))


@pytest.mark.parametrize("case", ["bf16", "float64", "grad", "weight_transposed"])
def test_entry_point_falls_back_to_f_linear(case):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 16, generator=g)
    w = torch.randn(8, 16, generator=g)
    b = torch.randn(8, generator=g)
    if case == "bf16":
        x, w, b = x.bfloat16(), w.bfloat16(), b.bfloat16()
    elif case == "float64":
        x, w, b = x.double(), w.double(), b.double()
    elif case == "grad":
        w.requires_grad_(True)
    else:
        w = w.T.contiguous().T  # stride(-1) != 1
    out = cpu_linear.linear_f32(x, w, b)
    assert out.dtype == x.dtype
    assert torch.equal(out, F.linear(x, w, b))
    if case == "grad":
        out.sum().backward()
        assert torch.allclose(w.grad, x.sum(0).expand(8, 16))
        with torch.no_grad():  # nothing to record: the kernel runs
            assert_close(cpu_linear.linear_f32(x, w, b), x, w.detach(), b)


def test_entry_point_shape_errors():
    x = torch.randn(2, 3, 8)
    w = torch.randn(5, 8)
    k_message = r"x must have shape \[\.\.\., K\] with K = weight.shape\[1\] = 8, got x \(2, 3, 7\)"
    with pytest.raises(ValueError, match=k_message):
        cpu_linear.linear_f32(torch.randn(2, 3, 7), w)
    with pytest.raises(ValueError, match=r"weight must be 2-D \[N, K\]"):
        cpu_linear.linear_f32(x, torch.randn(8))
    with pytest.raises(ValueError, match=r"bias must have shape \[N\] = \[5\] .* got \(4,\)"):
        cpu_linear.linear_f32(x, w, torch.randn(4))
    with pytest.raises(ValueError, match=r"x must have shape \[\.\.\., K\]"):
        cpu_linear.linear_f32(torch.tensor(1.0), w)
    with pytest.raises(TypeError, match="weight must be a torch.Tensor"):
        cpu_linear.linear_f32(x, [[1.0] * 8])
    # The same ValueError on the fallback path (bf16), not F.linear's message.
    with pytest.raises(ValueError, match="K = weight.shape"):
        cpu_linear.linear_f32(torch.randn(2, 7).bfloat16(), w.bfloat16())


@needs_native
def test_entry_point_matches_float64_on_decode_shapes():
    """A decode-sized call (M = 8 rows against a 4100-row head, K = 300: K tail, N tail, threads)."""
    x, w, b = operands(8, 4101, 300, True, seed=9)
    out = cpu_linear.linear_f32(x.view(2, 4, 300), w, b)
    assert_close(out.view(8, 4101), x, w, b)
    assert math.isfinite(out.sum().item())


def test_decode_linears_swaps_plain_fp32_layers_and_restores_them():
    from ttrl_fast.cpu_linear import SkinnyLinear, decode_linears, has_native

    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8).double())
    x = torch.randn(5, 16)
    expected = model[0](x)
    with pytest.raises(RuntimeError, match="boom"):
        with decode_linears(model):
            if has_native():
                assert type(model[0]) is SkinnyLinear and type(model[2]) is torch.nn.Linear  # fp64 left alone
                with torch.no_grad():
                    torch.testing.assert_close(model[0](x), expected.detach(), rtol=1e-5, atol=1e-6)
                    big = torch.randn(200, 16)  # more than 64 rows: torch's GEMM, identical result
                    assert torch.equal(model[0](big), torch.nn.functional.linear(big, model[0].weight, model[0].bias))
            raise RuntimeError("boom")
    assert type(model[0]) is torch.nn.Linear and type(model[2]) is torch.nn.Linear
