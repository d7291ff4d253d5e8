"""bf16 x bf16 -> fp32 GEMM of the C++ CPU extension (csrc/cpu/gemm_bf16*.cpp):
out[M, N] = a[M, K] @ b[N, K]^T (+ bias), checked on both paths (the avx512-bf16 kernel where the
CPU has it, and the portable fallback) against a float64 ground truth."""
import pytest
import torch

from ttrl_fast import _ext

ext = _ext.extension("cpu")
pytestmark = pytest.mark.skipif(ext is None or not hasattr(ext, "gemm_bf16_nt_f32"),
                                reason=_ext.LOAD_ERRORS.get("cpu") or "C++ extension lacks gemm_bf16_nt_f32")

HAS_NATIVE = ext is not None and hasattr(ext, "gemm_bf16_has_native") and ext.gemm_bf16_has_native()
PATHS = [pytest.param("native", marks=pytest.mark.skipif(not HAS_NATIVE, reason="no avx512-bf16 on this CPU")),
         pytest.param("portable")]
# Per element, |out - exact| <= TOL * (|a| @ |b|^T + |bias|): fp32 accumulation of exact products.
TOL = 1e-6


def gemm(a, b, out, bias=None, path="portable"):
    ext.gemm_bf16_nt_f32(a, b, out, bias, path == "portable")
    return out


def reference(a, b, bias=None):
    ref = a.double() @ b.double().T
    scale = a.double().abs() @ b.double().abs().T
    if bias is not None:
        ref = ref + bias.double()
        scale = scale + bias.double().abs()
    return ref, scale


def assert_close(out, a, b, bias=None, tol=TOL):
    ref, scale = reference(a, b, bias)
    err = (out.double() - ref).abs()
    bound = tol * scale + 1e-30
    worst = (err / bound).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"max error {worst:.3g} x the bound ({tol} * sum |a||b|)"


def operands(m, n, k, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g).bfloat16()
    b = torch.randn(n, k, generator=g).bfloat16()
    bv = torch.randn(n, generator=g) if bias else None
    return a, b, bv


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("k", [1, 3, 64, 129])
@pytest.mark.parametrize("n", [1, 15, 17, 100, 1000])
@pytest.mark.parametrize("m", [1, 5, 7, 33])
def test_odd_shapes_match_float64(m, n, k, bias, path):
    a, b, bv = operands(m, n, k, bias, seed=m * 1000003 + n * 1009 + k)
    out = torch.full((m, n), float("nan"))
    assert_close(gemm(a, b, out, bv, path), a, b, bv)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("shape", [(37, 300, 1100), (64, 2000, 513), (13, 129, 1025), (260, 70, 40)])
def test_several_k_blocks_tiles_and_threads(shape, path):
    """K over several 512-wide blocks (odd K in the last), many 64-column tiles split over
    threads, and a narrow N where the rows are split instead."""
    a, b, bv = operands(*shape, True, seed=sum(shape))
    out = torch.empty(shape[0], shape[1])
    assert_close(gemm(a, b, out, bv, path), a, b, bv)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_strided_views(path, bias):
    """a and b column slices of wider tensors (lda, ldb > K, unaligned starts) and out a slice of a
    wider buffer (ldc > N): the values land in the slice, everything around stays untouched."""
    m, n, k = 19, 150, 131
    g = torch.Generator().manual_seed(7)
    a_wide = torch.randn(m, k + 9, generator=g).bfloat16()
    b_wide = torch.randn(n, k + 5, generator=g).bfloat16()
    a, b = a_wide[:, 3:3 + k], b_wide[:, 1:1 + k]
    assert a.stride() == (k + 9, 1) and b.stride() == (k + 5, 1)
    bv = torch.randn(n, generator=g) if bias else None
    buf = torch.full((m + 2, n + 21), -7.0)
    out = buf[1:1 + m, 10:10 + n]
    gemm(a, b, out, bv, path)
    assert_close(out, a, b, bv)
    mask = torch.ones_like(buf, dtype=torch.bool)
    mask[1:1 + m, 10:10 + n] = False
    assert (buf[mask] == -7.0).all()


@pytest.mark.parametrize("path", PATHS)
def test_exact_when_sums_are_representable(path):
    """Small integers: every product and partial sum is exact in fp32, so the result is exact."""
    g = torch.Generator().manual_seed(3)
    m, n, k = 21, 333, 1031
    a = torch.randint(-4, 5, (m, k), generator=g).bfloat16()
    b = torch.randint(-4, 5, (n, k), generator=g).bfloat16()
    bv = torch.randint(-100, 100, (n,), generator=g).float()
    out = gemm(a, b, torch.empty(m, n), bv, path)
    assert torch.equal(out.double(), a.double() @ b.double().T + bv.double())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_k_zero_writes_bias_or_zeros(path, bias):
    m, n = 5, 37
    a = torch.empty(m, 0, dtype=torch.bfloat16)
    b = torch.empty(n, 0, dtype=torch.bfloat16)
    bv = torch.randn(n) if bias else None
    out = gemm(a, b, torch.full((m, n), float("nan")), bv, path)
    expected = bv.expand(m, n) if bias else torch.zeros(m, n)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("path", PATHS)
def test_empty_m_or_n(path):
    gemm(torch.empty(0, 8, dtype=torch.bfloat16), torch.randn(4, 8).bfloat16(), torch.empty(0, 4), None, path)
    gemm(torch.randn(3, 8).bfloat16(), torch.empty(0, 8, dtype=torch.bfloat16), torch.empty(3, 0), None, path)


@pytest.mark.parametrize("path", PATHS)
def test_deterministic_and_thread_count_independent(path):
    a, b, bv = operands(45, 1500, 1100, True, seed=11)
    first = gemm(a, b, torch.empty(45, 1500), bv, path)
    second = gemm(a, b, torch.empty(45, 1500), bv, path)
    assert torch.equal(first, second)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = gemm(a, b, torch.empty(45, 1500), bv, path)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, single)


@pytest.mark.skipif(not HAS_NATIVE, reason="no avx512-bf16 on this CPU")
def test_native_and_portable_agree():
    a, b, bv = operands(30, 700, 600, True, seed=5)
    native = gemm(a, b, torch.empty(30, 700), bv, "native")
    portable = gemm(a, b, torch.empty(30, 700), bv, "portable")
    _, scale = reference(a, b, bv)
    assert ((native.double() - portable.double()).abs() <= 2 * TOL * scale).all()


@pytest.mark.parametrize("path", PATHS)
def test_nan_and_inf_propagate(path):
    a, b, _ = operands(9, 70, 33, False, seed=2)
    a[2, 5] = float("nan")
    b[40, 7] = float("inf")
    out = gemm(a, b, torch.empty(9, 70), None, path)
    assert out[2].isnan().all()
    rest = torch.ones(9, dtype=torch.bool)
    rest[2] = False
    assert out[rest, 40].isinf().all()  # a[:, 7] is nonzero
    finite = torch.ones(9, 70, dtype=torch.bool)
    finite[2] = False
    finite[:, 40] = False
    assert out[finite].isfinite().all()


def test_validation_errors():
    a = torch.randn(4, 8).bfloat16()
    b = torch.randn(6, 8).bfloat16()
    out = torch.empty(4, 6)
    with pytest.raises(RuntimeError, match="a must be BFloat16"):
        ext.gemm_bf16_nt_f32(a.float(), b, out)
    with pytest.raises(RuntimeError, match="b must be BFloat16"):
        ext.gemm_bf16_nt_f32(a, b.half(), out)
    with pytest.raises(RuntimeError, match="out must be Float"):
        ext.gemm_bf16_nt_f32(a, b, out.double())
    with pytest.raises(RuntimeError, match="a must be 2-D"):
        ext.gemm_bf16_nt_f32(a.view(2, 2, 8), b, out)
    with pytest.raises(RuntimeError, match=r"a\.stride\(1\) must be 1"):
        ext.gemm_bf16_nt_f32(torch.randn(8, 4).bfloat16().T, b, out)
    with pytest.raises(RuntimeError, match=r"out\.stride\(1\) must be 1"):
        ext.gemm_bf16_nt_f32(a, b, torch.empty(6, 4).T)
    with pytest.raises(RuntimeError, match="share the inner dimension K"):
        ext.gemm_bf16_nt_f32(a, torch.randn(6, 9).bfloat16(), out)
    with pytest.raises(RuntimeError, match=r"out must have shape \[4, 6\]"):
        ext.gemm_bf16_nt_f32(a, b, torch.empty(4, 7))
    with pytest.raises(RuntimeError, match=r"bias must be a contiguous \[6\] tensor"):
        ext.gemm_bf16_nt_f32(a, b, out, torch.randn(5))
    with pytest.raises(RuntimeError, match="bias must be float32"):
        ext.gemm_bf16_nt_f32(a, b, out, torch.randn(6).bfloat16())
    with pytest.raises(RuntimeError, match="out rows overlap"):
        ext.gemm_bf16_nt_f32(a, b, torch.empty(1, 6).expand(4, 6))
    with pytest.raises(RuntimeError, match="must be a CPU tensor"):
        ext.gemm_bf16_nt_f32(a.to("meta"), b, out)
