"""selective_log_softmax on every available backend against a float64 evaluation of the reference:
values and gradients of both outputs, odd shapes, temperatures, large offsets, -inf entries,
masked rows, non-contiguous inputs, 16-bit inputs; plus the error and NaN contracts."""
import pytest
import torch

import ttrl_fast
from ttrl_fast import reference
from ttrl_fast.testing import FP32_RTOL, make_index, make_logits, scaled_error

from ..conftest import DEVICE

# The Triton interpreter runs program by program in numpy: keep its shapes tiny.
INTERPRETED = DEVICE.type == "cpu"


def _vocab_sizes(backend):
    sizes = [1, 97]
    if not (backend == "triton" and INTERPRETED):
        sizes.append(50257)
    return sizes


def _run(fn, logits, index, *, temperature, mask, upstream):
    """Forward both outputs, then backward with upstream grads; returns (logp, entropy, grad)."""
    x = logits.detach().clone().requires_grad_(True)
    logp, entropy = fn(x, index, temperature=temperature, mask=mask, return_entropy=True)
    g_logp, g_ent = upstream
    (logp.double() * g_logp + entropy.double() * g_ent).sum().backward()
    return logp.detach(), entropy.detach(), x.grad


def _check_against_reference(backend, logits, index, *, temperature=1.0, mask=None, rtol=FP32_RTOL):
    shape = index.shape
    upstream = (torch.randn(shape, dtype=torch.float64, device=logits.device),
                torch.randn(shape, dtype=torch.float64, device=logits.device))

    def kernel(*args, **kw):
        return ttrl_fast.selective_log_softmax(*args, **kw, backend=backend)

    logp, entropy, grad = _run(kernel, logits, index, temperature=temperature, mask=mask, upstream=upstream)
    ref_logp, ref_entropy, ref_grad = _run(reference.selective_log_softmax, logits.double(), index,
                                           temperature=temperature, mask=mask, upstream=upstream)
    assert logp.dtype == torch.float32 and entropy.dtype == torch.float32
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    assert scaled_error(logp, ref_logp) <= rtol, scaled_error(logp, ref_logp)
    assert scaled_error(entropy, ref_entropy) <= rtol, scaled_error(entropy, ref_entropy)
    assert scaled_error(grad, ref_grad) <= rtol, scaled_error(grad, ref_grad)
    assert (logp <= 0).all() and (entropy >= 0).all()
    return logp, entropy, grad


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
@pytest.mark.parametrize("offset", [0.0, 1e4, -1e4])
def test_fp32_matches_float64_reference(backend, temperature, offset):
    for v in _vocab_sizes(backend):
        rows = (3, 5) if v < 1000 else (1, 7)
        logits = make_logits(rows + (v,), offset=offset, neg_inf_fraction=0.1, device=DEVICE)
        index = make_index(logits)
        _check_against_reference(backend, logits, index, temperature=temperature)


def test_masked_rows_give_zero_and_are_not_read(backend):
    logits = make_logits((4, 3, 97), neg_inf_fraction=0.05, device=DEVICE)
    index = make_index(logits)
    mask = torch.rand(4, 3, device=DEVICE) > 0.4
    mask[0, 0], mask[0, 1] = False, True
    logp, entropy, grad = _check_against_reference(backend, logits, index, mask=mask, temperature=0.7)
    assert (logp[~mask] == 0).all() and (entropy[~mask] == 0).all()
    assert (grad[~mask] == 0).all()
    # What sits under a False mask is never read: garbage logits and an ignore_index of -100.
    poisoned = logits.clone()
    poisoned[~mask] = float("nan")
    bad_index = index.masked_fill(~mask, -100)
    out = ttrl_fast.selective_log_softmax(poisoned, bad_index, mask=mask, temperature=0.7, backend=backend)
    torch.testing.assert_close(out, logp, rtol=0, atol=0)
    # Integer 0/1 masks (TRL's completion_mask) mean the same as bool ones.
    as_int = ttrl_fast.selective_log_softmax(logits, index, mask=mask.long(), temperature=0.7, backend=backend)
    torch.testing.assert_close(as_int, logp, rtol=0, atol=0)


def test_odd_row_counts_and_row_shapes(backend):
    for shape in [(1, 97), (13, 97), (2, 3, 5, 97)]:
        logits = make_logits(shape, device=DEVICE)
        _check_against_reference(backend, logits, make_index(logits), temperature=1.3)
    # Zero rows: empty outputs, no kernel launch.
    empty = torch.empty(0, 97, device=DEVICE)
    assert ttrl_fast.selective_log_softmax(empty, torch.empty(0, dtype=torch.long, device=DEVICE),
                                           backend=backend).shape == (0,)


def test_non_contiguous_views_are_read_in_place(backend):
    full = make_logits((3, 6, 97), device=DEVICE)
    sliced = full[:, :-1, :]  # the TRL pattern: logits[:, :-1]
    _check_against_reference(backend, sliced, make_index(sliced))
    padded = make_logits((4, 128), device=DEVICE)[:, :97]  # vocab padded wider than V
    _check_against_reference(backend, padded, make_index(padded))
    transposed = make_logits((5, 3, 97), device=DEVICE).transpose(0, 1)  # leading dims not mergeable
    _check_against_reference(backend, transposed, make_index(transposed))
    strided_vocab = make_logits((4, 194), device=DEVICE)[:, ::2]  # stride(-1) != 1: copied once
    _check_against_reference(backend, strided_vocab, make_index(strided_vocab))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_16bit_logits_no_worse_than_torch_in_that_dtype(backend, dtype):
    if backend == "triton" and INTERPRETED and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16")
    v = 97 if backend == "triton" and INTERPRETED else 50257
    logits = make_logits((2, 5, v), dtype=dtype, neg_inf_fraction=0.05, device=DEVICE)
    index = make_index(logits)
    temperature = 0.7
    upstream = (torch.randn(2, 5, dtype=torch.float64, device=DEVICE),
                torch.randn(2, 5, dtype=torch.float64, device=DEVICE))

    def torch_same_dtype(x, idx, *, temperature, mask, return_entropy):
        # torch's own computation in the logits' dtype, as an eager user would write it
        lsm = torch.log_softmax(x / temperature, dim=-1)
        p = lsm.exp()
        ent = -(p * torch.where(p > 0, lsm, torch.zeros_like(lsm))).sum(-1)
        return lsm.gather(-1, idx.unsqueeze(-1)).squeeze(-1), ent

    def kernel(x, idx, **kw):
        return ttrl_fast.selective_log_softmax(x, idx, **kw, backend=backend)

    ours = _run(kernel, logits, index, temperature=temperature, mask=None, upstream=upstream)
    theirs = _run(torch_same_dtype, logits, index, temperature=temperature, mask=None, upstream=upstream)
    exact = _run(reference.selective_log_softmax, logits.double(), index, temperature=temperature, mask=None,
                 upstream=upstream)
    for name, a, b, ref in zip(("logp", "entropy", "grad"), ours, theirs, exact):
        assert scaled_error(a, ref) <= 2 * scaled_error(b, ref) + 1e-6, (name, scaled_error(a, ref),
                                                                       scaled_error(b, ref))
    assert ours[2].dtype == dtype


def test_each_output_alone_has_the_right_gradient(backend):
    logits = make_logits((3, 4, 97), device=DEVICE)
    index = make_index(logits)
    for use_logp, use_entropy in [(True, False), (False, True)]:
        x = logits.clone().requires_grad_(True)
        xr = logits.double().requires_grad_(True)
        lp, h = ttrl_fast.selective_log_softmax(x, index, return_entropy=True, backend=backend)
        rlp, rh = reference.selective_log_softmax(xr, index, return_entropy=True)
        ((lp.sum() if use_logp else 0) + (h.sum() if use_entropy else 0)).backward()
        ((rlp.sum() if use_logp else 0) + (rh.sum() if use_entropy else 0)).backward()
        assert scaled_error(x.grad, xr.grad) <= FP32_RTOL
    # logp only (no entropy requested): the common training path.
    x = logits.clone().requires_grad_(True)
    xr = logits.double().requires_grad_(True)
    (ttrl_fast.selective_log_softmax(x, index, backend=backend) * 2).sum().backward()
    (reference.selective_log_softmax(xr, index) * 2).sum().backward()
    assert scaled_error(x.grad, xr.grad) <= FP32_RTOL


def test_backward_returns_a_fresh_gradient(backend):
    logits = make_logits((3, 97), device=DEVICE).requires_grad_(True)
    before = logits.detach().clone()
    ttrl_fast.selective_log_softmax(logits, make_index(logits), backend=backend).sum().backward()
    torch.testing.assert_close(logits.detach(), before, rtol=0, atol=0)
    assert logits.grad.data_ptr() != logits.data_ptr()


def test_nan_and_inf_rows_give_nan_never_a_plausible_number(backend):
    logits = make_logits((4, 97), device=DEVICE)
    index = make_index(logits)
    logits[0, 50] = float("nan")
    logits[1, 3] = float("inf")
    logits[2, :] = float("-inf")  # no finite entry: no distribution at all
    logits[2, 7] = float("nan")
    logp, entropy = ttrl_fast.selective_log_softmax(logits, index, return_entropy=True, backend=backend)
    assert logp[:3].isnan().all() and entropy[:3].isnan().all()
    assert torch.isfinite(logp[3]) and logp[3] <= 0


def test_log_probs_are_never_positive(backend):
    # A near-certain token: logp rounds to within an ulp of 0 and must not cross it.
    logits = torch.full((6, 97), -30.0, device=DEVICE)
    logits[:, 5] = 30.0
    logits[3, 5] = 1e4
    index = torch.full((6,), 5, device=DEVICE)
    for t in (0.7, 1.0, 1.3):
        logp, entropy = ttrl_fast.selective_log_softmax(logits, index, temperature=t, return_entropy=True,
                                                        backend=backend)
        assert (logp <= 0).all() and (entropy >= 0).all() and not logp.isnan().any()


@pytest.mark.parametrize(
    "case, error, words",
    [
        ("index_high", IndexError, ["index", "V=97"]),
        ("index_negative", IndexError, ["index", "min -1"]),
        ("shape", ValueError, ["index", "(3, 4)"]),
        ("int_logits", ValueError, ["logits", "torch.int64"]),
        ("float_index", ValueError, ["index", "integer"]),
        ("temperature_zero", ValueError, ["temperature", "> 0"]),
        ("temperature_nan", ValueError, ["temperature"]),
        ("temperature_inf", ValueError, ["temperature"]),
        ("mask_shape", ValueError, ["mask", "(3, 4)"]),
        ("float64_logits", ValueError, ["logits", "float64"]),
        ("not_a_tensor", TypeError, ["logits", "list"]),
    ],
)
def test_bad_input_names_the_argument(case, error, words):
    logits = torch.randn(3, 4, 97)
    index = torch.randint(0, 97, (3, 4))
    kwargs = {}
    if case == "index_high":
        index[1, 2] = 97
    elif case == "index_negative":
        index[0, 0] = -1
    elif case == "shape":
        index = index[:, :3]
    elif case == "int_logits":
        logits = logits.long()
    elif case == "float_index":
        index = index.float()
    elif case == "temperature_zero":
        kwargs["temperature"] = 0.0
    elif case == "temperature_nan":
        kwargs["temperature"] = float("nan")
    elif case == "temperature_inf":
        kwargs["temperature"] = float("inf")
    elif case == "mask_shape":
        kwargs["mask"] = torch.ones(4, 3, dtype=torch.bool)
    elif case == "float64_logits":
        logits = logits.double()
    elif case == "not_a_tensor":
        logits = logits.tolist()
    with pytest.raises(error) as info:
        ttrl_fast.selective_log_softmax(logits, index, **kwargs)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_temperature_is_a_runtime_scalar_tensor_or_float():
    logits = torch.randn(2, 97)
    index = torch.randint(0, 97, (2,))
    a = ttrl_fast.selective_log_softmax(logits, index, temperature=torch.tensor(0.5))
    b = ttrl_fast.selective_log_softmax(logits, index, temperature=0.5)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_reused_gradient_blocks_never_leak_stale_values():
    """The C++ backend reuses the last released logits-sized gradient block (large_buffers.h):
    a second backward into a reused block must still write every element, masked rows included."""
    if not ttrl_fast.backends.available("cpp"):
        pytest.skip("C++ extension not built")
    ttrl_fast.empty_cache()
    shape = (2, 40, 32768)  # 10 MB of fp32: above the block threshold
    first = make_logits(shape).requires_grad_(True)
    ttrl_fast.selective_log_softmax(first, make_index(first), backend="cpp").sum().backward()
    del first  # its gradient block goes back to the cache
    logits = make_logits(shape, offset=5.0)
    index = make_index(logits)
    mask = torch.rand(shape[:-1]) > 0.5
    _check_against_reference("cpp", logits, index, mask=mask, temperature=1.3)
    assert ttrl_fast.empty_cache() >= logits.numel() * 4  # the block came back and is freed now
