"""rdrop_loss against the authors' compute_kl_loss, its reductions and padding, errors, and the example script."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch

from dropkit.losses import rdrop_loss

tF = torch.nn.functional
EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "rdrop.py"


def _reference_compute_kl_loss(p, q, pad_mask=None):
    """``compute_kl_loss`` of dropreg/R-Drop (README), verbatim."""
    p_loss = tF.kl_div(tF.log_softmax(p, dim=-1), tF.softmax(q, dim=-1), reduction="none")
    q_loss = tF.kl_div(tF.log_softmax(q, dim=-1), tF.softmax(p, dim=-1), reduction="none")
    if pad_mask is not None:
        p_loss.masked_fill_(pad_mask, 0.0)
        q_loss.masked_fill_(pad_mask, 0.0)
    p_loss = p_loss.sum()
    q_loss = q_loss.sum()
    return (p_loss + q_loss) / 2


def test_matches_the_reference_sum():
    torch.manual_seed(0)
    a, b = torch.randn(8, 10) * 3, torch.randn(8, 10) * 3
    torch.testing.assert_close(rdrop_loss(a, b), _reference_compute_kl_loss(a, b))


def test_matches_the_reference_with_a_pad_mask():
    torch.manual_seed(1)
    a, b = torch.randn(4, 7, 11), torch.randn(4, 7, 11)
    pad = torch.rand(4, 7, 1) < 0.3
    expected = _reference_compute_kl_loss(a, b, pad)
    torch.testing.assert_close(rdrop_loss(a, b, pad_mask=pad), expected)
    torch.testing.assert_close(rdrop_loss(a, b, pad_mask=pad.squeeze(-1)), expected)
    mean = rdrop_loss(a, b, pad_mask=pad, reduction="mean")
    torch.testing.assert_close(mean, expected / (~pad).sum())


def test_is_the_symmetric_kl_per_position():
    torch.manual_seed(2)
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    p, q = a.softmax(-1), b.softmax(-1)
    kl_pq = (p * (p.log() - q.log())).sum(-1)
    kl_qp = (q * (q.log() - p.log())).sum(-1)
    torch.testing.assert_close(rdrop_loss(a, b, reduction="none"), (kl_pq + kl_qp) / 2)
    torch.testing.assert_close(rdrop_loss(a, b, reduction="batchmean"), ((kl_pq + kl_qp) / 2).sum() / 5)
    torch.testing.assert_close(rdrop_loss(a, b, reduction="mean"), ((kl_pq + kl_qp) / 2).mean())
    torch.testing.assert_close(rdrop_loss(a, b), rdrop_loss(b, a))


def test_class_dim_zero_identical_passes_and_large_logits():
    a = torch.randn(6, 3)
    torch.testing.assert_close(rdrop_loss(a.T, a.T + 1.0, dim=0), rdrop_loss(a, a + 1.0))  # shift: same softmax
    assert rdrop_loss(a, a).item() == 0.0
    big = torch.tensor([[1000.0, -1000.0]])
    assert torch.isfinite(rdrop_loss(big, -big))


def test_gradients_flow_into_both_passes():
    a, b = torch.randn(3, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    rdrop_loss(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    a64, b64 = (torch.randn(2, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(lambda x, y: rdrop_loss(x, y, reduction="batchmean"), (a64, b64))


def test_errors():
    a = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"rdrop_loss: logits2 must be of the same shape as logits1 \(2, 3\)"):
        rdrop_loss(a, torch.randn(2, 4))
    with pytest.raises(TypeError, match=r"rdrop_loss: logits1 must be a floating-point torch.Tensor, but got torch"):
        rdrop_loss(torch.ones(2, 3, dtype=torch.int64), a)
    with pytest.raises(TypeError, match=r"rdrop_loss: logits2 must be a floating-point torch.Tensor, but got 'list'"):
        rdrop_loss(a, [1.0])
    with pytest.raises(ValueError, match=r"rdrop_loss: reduction must be one of 'sum', 'mean', 'batchmean', 'none'"):
        rdrop_loss(a, a, reduction="avg")
    with pytest.raises(TypeError, match=r"rdrop_loss: pad_mask must be a bool torch.Tensor, but got torch.int64"):
        rdrop_loss(a, a, pad_mask=torch.zeros(2, dtype=torch.int64))


def test_example_runs_quick(capsys):
    spec = importlib.util.spec_from_file_location("rdrop_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small MLP: intra-op threads only contend on a loaded machine
    try:
        assert module.main(["--quick"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "dropout  test accuracy" in out and "R-Drop   test accuracy" in out
    accuracies = [float(line.split("accuracy")[1].split()[0]) for line in out.splitlines() if "accuracy" in line]
    assert all(a > 0.8 for a in accuracies)  # 10 classes: chance is 0.1
