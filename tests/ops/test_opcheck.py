"""The torch.library ops pass opcheck (schema, fake tensors, autograd registration, AOT dispatch)
and the public function traces under torch.compile."""
import pytest
import torch

import ttrl_fast
from ttrl_fast.ops import selective_log_softmax as op

from ..conftest import DEVICE


def _samples():
    logits = torch.randn(2, 3, 17, device=DEVICE, requires_grad=True)
    index = torch.randint(0, 17, (6,), device=DEVICE)
    mask = torch.tensor([True, False, True, True, True, False], device=DEVICE)
    return [
        (logits, index, None, 1.0, False, ""),
        (logits, index, mask, 1 / 0.7, True, ""),
        (logits[:, :2], index[:4], None, 1.0, True, "reference"),
    ]


@pytest.mark.parametrize("sample", range(3))
def test_forward_op_passes_opcheck(sample):
    torch.library.opcheck(op.selective_log_softmax_fwd, _samples()[sample])


def test_backward_op_passes_opcheck():
    logits, index, mask, inv_t, _, _ = _samples()[1]
    _, entropy, stats = op.selective_log_softmax_fwd(logits.detach(), index, mask, inv_t, True, "")
    g = torch.randn(6, device=DEVICE)
    torch.library.opcheck(op.selective_log_softmax_bwd, (g, g, logits.detach(), index, mask, stats, entropy, inv_t, ""))
    torch.library.opcheck(op.selective_log_softmax_bwd, (g, None, logits.detach(), index, None, stats, entropy, inv_t,
                                                        ""))


def test_torch_compile_traces_the_public_op_with_its_gradient():
    def loss(x, idx):
        logp, entropy = ttrl_fast.selective_log_softmax(x, idx, temperature=0.9, return_entropy=True)
        return (logp * 2 + 0.1 * entropy).sum()

    x = torch.randn(4, 33, device=DEVICE, requires_grad=True)
    idx = torch.randint(0, 33, (4,), device=DEVICE)
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=False)
    expected = loss(x, idx)
    (g_expected,) = torch.autograd.grad(expected, x)
    got = compiled(x, idx)
    (g_got,) = torch.autograd.grad(got, x)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(g_got, g_expected)
