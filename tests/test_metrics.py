"""NLL, Brier, ECE and AUROC against hand computations and brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dropkit import metrics


def test_nll_and_brier_known_values():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    target = torch.tensor([0, 2])
    assert math.isclose(metrics.nll(probs, target), -(math.log(0.7) + math.log(0.1)) / 2, rel_tol=1e-6)
    expected = ((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.8**2 + 0.9**2)) / 2
    assert math.isclose(metrics.brier(probs, target), expected, rel_tol=1e-6)


def test_ece_matches_a_hand_count_and_is_zero_when_calibrated():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    target = torch.tensor([0, 1, 0, 1])
    value, rel = metrics.ece(probs, target, bins=10)
    # bins: conf 0.9 (2 predictions, acc 0.5), 0.6 (1, acc 1), 0.7 (1, acc 1)
    expected = 2 / 4 * abs(0.5 - 0.9) + 1 / 4 * abs(1 - 0.6) + 1 / 4 * abs(1 - 0.7)
    assert math.isclose(value, expected, rel_tol=1e-5)
    assert int(rel.count.sum()) == 4 and rel.edges.shape == (11,)
    assert math.isclose(float(rel.accuracy[8]), 0.5) and math.isclose(float(rel.confidence[8]), 0.9, rel_tol=1e-6)
    torch.manual_seed(0)
    conf = torch.rand(20000) * 0.5 + 0.5
    labels = (torch.rand(20000) < conf).long()  # class 0 correct with probability conf
    probs = torch.stack([conf, 1 - conf], 1)
    assert metrics.ece(probs, 1 - labels)[0] < 0.02


def test_auroc_matches_pairwise_count_with_ties():
    torch.manual_seed(1)
    scores = torch.randint(0, 5, (40,)).float()
    labels = torch.randint(0, 2, (40,))
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos.tolist(), neg.tolist()))
    assert math.isclose(metrics.auroc(scores, labels), wins / (len(pos) * len(neg)), rel_tol=1e-12)
    assert metrics.auroc(torch.tensor([0.0, 1.0]), torch.tensor([0, 1])) == 1.0


def test_metric_errors():
    with pytest.raises(ValueError, match=r"^nll: probs must be a floating-point tensor of shape \(N, C\)"):
        metrics.nll(torch.ones(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^brier: target must be an integer tensor of shape \(2,\)"):
        metrics.brier(torch.ones(2, 2) / 2, torch.zeros(2))
    with pytest.raises(ValueError, match=r"^ece: bins must be an int >= 1, but got 0.$"):
        metrics.ece(torch.ones(2, 2) / 2, torch.zeros(2, dtype=torch.long), bins=0)
    with pytest.raises(ValueError, match=r"^auroc: labels must contain both classes, but got 0 positives"):
        metrics.auroc(torch.rand(4), torch.zeros(4))


def test_half_precision_sums_and_bad_inputs():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(1000, 5), 1)
    target = torch.randint(0, 5, (1000,))
    reference = metrics.ece(probs.repeat(100, 1).double(), target.repeat(100), 10)[0]
    for dtype in (torch.float16, torch.bfloat16):  # 100,000 rows: summed in half precision this drifted far
        assert abs(metrics.ece(probs.repeat(100, 1).to(dtype), target.repeat(100), 10)[0] - reference) < 1e-2
    with pytest.raises(ValueError, match=r"target must hold class indices in \[0, 5\), but got 0..7"):
        metrics.ece(probs[:3], torch.tensor([0, 1, 7]))
    with pytest.raises(ValueError, match="at least one prediction"):
        metrics.nll(probs[:0], target[:0])
    with pytest.raises(ValueError, match="must not be NaN"):
        metrics.auroc(torch.tensor([0.1, float("nan"), 0.5, 0.7]), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        metrics.auroc(torch.tensor([0.1, 0.2, 0.5]), torch.tensor([0, 2, 1]))
    assert metrics.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75  # sequences too


@pytest.mark.parametrize("op", [metrics.nll, metrics.brier, metrics.ece])
def test_logits_and_unnormalised_rows_are_refused(op):
    target = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"probs must hold probabilities in \[0, 1\].*probs\[0, 0\] = 3.0"):
        op(torch.tensor([[3.0, -1.0], [0.2, 0.8]]), target)  # logits passed by mistake
    with pytest.raises(ValueError, match=r"rows summing to 1 .* row 1 sums to 0.5"):
        op(torch.tensor([[0.5, 0.5], [0.25, 0.25]]), target)
    with pytest.raises(ValueError, match="probs must hold probabilities"):
        op(torch.tensor([[float("nan"), 0.5], [0.2, 0.8]]), target)
    # rounding of a low-precision softmax is accepted
    probs = torch.softmax(torch.randn(1000, 37), 1).to(torch.bfloat16)
    op(probs, torch.randint(0, 37, (1000,)))
