r"""Scores for probabilistic predictions: NLL, Brier, calibration (ECE + reliability data), AUROC.

All take predictive probabilities ``probs`` of shape ``(N, C)`` (rows summing to 1, e.g.
:attr:`dropkit.mc.MCResult.mean`) and integer labels ``target`` of shape ``(N,)``; anything else (logits, a NaN)
is refused with a ``ValueError`` naming the first bad entry or row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["nll", "brier", "ece", "Reliability", "auroc"]


def _check(op: str, probs: torch.Tensor, target: torch.Tensor) -> None:
    if not isinstance(probs, torch.Tensor) or probs.dim() != 2 or not probs.is_floating_point():
        raise ValueError(f"{op}: probs must be a floating-point tensor of shape (N, C), but got {_describe(probs)}.")
    if probs.shape[0] == 0:
        raise ValueError(f"{op}: probs must hold at least one prediction (N >= 1), but got shape {tuple(probs.shape)}.")
    if not isinstance(target, torch.Tensor) or target.shape != probs.shape[:1] or target.is_floating_point():
        raise ValueError(
            f"{op}: target must be an integer tensor of shape ({probs.shape[0]},), but got {_describe(target)}."
        )
    low, high = int(target.min()), int(target.max())
    if low < 0 or high >= probs.shape[1]:
        raise ValueError(f"{op}: target must hold class indices in [0, {probs.shape[1]}), but got {low}..{high}.")
    _probabilities(op, probs)


def _probabilities(op: str, probs: torch.Tensor) -> None:
    """Refuse rows that are not probability vectors (logits passed by mistake give a negative NLL, a Brier above 2).

    Entries in ``[0, 1]`` and rows summing to 1 within the rounding of ``probs``' dtype (summed in float64),
    widened with the square root of the class count (a float32 softmax over 4M classes sums to 1 + 1.4e-4).
    """
    outside = ~((probs >= 0) & (probs <= 1))  # NaN too
    if bool(outside.any()):
        row, col = (int(i) for i in outside.nonzero()[0])
        raise ValueError(
            f"{op}: probs must hold probabilities in [0, 1] (softmax outputs, not logits), but probs[{row}, {col}] "
            f"= {float(probs[row, col])!r}."
        )
    sums = probs.double().sum(1)
    tolerance = max(1e-4, 8 * torch.finfo(probs.dtype).eps) * max(1.0, math.sqrt(probs.shape[1]) / 8)
    off = (sums - 1).abs() > tolerance
    if bool(off.any()):
        row = int(off.nonzero()[0])
        raise ValueError(
            f"{op}: probs must have rows summing to 1 (within {tolerance:.1e}), but row {row} sums to "
            f"{float(sums[row]):.6g}."
        )


def _describe(t: object) -> str:
    return f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__


def nll(probs: torch.Tensor, target: torch.Tensor) -> float:
    r"""Mean negative log-likelihood :math:`-\frac1N\sum_i \log p_{i, y_i}` (nats; probabilities clamped at tiny).

    Example:
        >>> probs, target = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 1, 1])
        >>> round(nll(probs, target), 4)  # -(log 0.9 + log 0.8 + log 0.4) / 3
        0.4149
    """
    _check("nll", probs, target)
    picked = probs.gather(1, target.long().unsqueeze(1)).squeeze(1)
    return float(-torch.log(picked.clamp_min(torch.finfo(probs.dtype).tiny)).mean())


def brier(probs: torch.Tensor, target: torch.Tensor) -> float:
    r"""Multi-class Brier score :math:`\frac1N\sum_i \lVert p_i - e_{y_i} \rVert^2` (0 is perfect, 2 the worst).

    Example:
        >>> probs, target = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 1, 1])
        >>> round(brier(probs, target), 4)  # (0.02 + 0.08 + 0.72) / 3
        0.2733
    """
    _check("brier", probs, target)
    onehot = torch.nn.functional.one_hot(target.long(), probs.shape[1]).to(probs.dtype)
    return float(((probs - onehot) ** 2).sum(1).mean())


@dataclass(frozen=True)
class Reliability:
    """Reliability-diagram data: per confidence bin, the mean confidence, the accuracy and the count."""

    edges: torch.Tensor  #: bin edges, shape (bins + 1,)
    confidence: torch.Tensor  #: mean top-class probability per bin (NaN where empty)
    accuracy: torch.Tensor  #: fraction correct per bin (NaN where empty)
    count: torch.Tensor  #: predictions per bin


def ece(probs: torch.Tensor, target: torch.Tensor, bins: int = 15) -> tuple[float, Reliability]:
    r"""Expected calibration error over ``bins`` equal-width confidence bins, and the reliability data.

    :math:`\mathrm{ECE} = \sum_b \frac{n_b}{N}\,|\mathrm{acc}_b - \mathrm{conf}_b|` with the top-class
    probability as confidence (Guo et al. 2017). Bins are right-closed: ``(lo, hi]``.

    Example:
        >>> probs, target = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 1, 1])
        >>> value, rel = ece(probs, target, bins=2)
        >>> round(value, 4), rel.count.tolist()  # one bin: mean confidence 0.767, accuracy 0.667
        (0.1, [0, 3])
    """
    _check("ece", probs, target)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"ece: bins must be an int >= 1, but got {bins!r}.")
    confidence, predicted = probs.max(1)
    edges = torch.linspace(0, 1, bins + 1, dtype=probs.dtype)  # binned in the input's dtype, edges included
    index = (torch.bucketize(confidence, edges[1:-1], right=False)).clamp(0, bins - 1)
    count = torch.bincount(index, minlength=bins)
    wide = torch.float64  # sums over N in float64: in half precision they drift (0.0028 for 0.447 at 100k rows)
    conf_sum = torch.zeros(bins, dtype=wide).index_add_(0, index, confidence.to(wide))
    acc_sum = torch.zeros(bins, dtype=wide).index_add_(0, index, (predicted == target.long()).to(wide))
    safe = count.clamp_min(1).to(wide)
    conf_mean = torch.where(count > 0, conf_sum / safe, torch.nan).to(probs.dtype)
    acc_mean = torch.where(count > 0, acc_sum / safe, torch.nan).to(probs.dtype)
    value = float((count.to(wide) / len(probs) * (acc_sum / safe - conf_sum / safe).abs()).sum())
    return value, Reliability(edges, conf_mean, acc_mean, count)


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for separating ``labels == 1`` from ``labels == 0``.

    The Mann–Whitney statistic with average ranks for ties: 0.5 is chance, 1 perfect. Typical use:
    uncertainty scores (entropy, mutual information) with label 1 for out-of-distribution inputs.

    Example:
        >>> auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        0.75
    """
    scores, labels = torch.as_tensor(scores), torch.as_tensor(labels)
    if scores.shape != labels.shape or scores.dim() != 1:
        raise ValueError(f"auroc: scores and labels must be 1-D of the same length, but got {_describe(scores)} "
                         f"and {_describe(labels)}.")  # fmt: skip
    if bool(torch.isnan(scores.double()).any()):
        raise ValueError("auroc: scores must not be NaN, but got a NaN score (a sample with no defined uncertainty).")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError(f"auroc: labels must be 0 or 1, but got values {sorted(set(labels.tolist()))[:6]}.")
    positive = labels.bool()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"auroc: labels must contain both classes, but got {n_pos} positives and {n_neg} negatives.")
    order = torch.argsort(scores.double())
    sorted_scores = scores.double()[order]
    ranks = torch.empty(len(scores), dtype=torch.float64)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    unique, inverse = torch.unique(sorted_scores, return_inverse=True)
    mean_rank = torch.zeros(len(unique), dtype=torch.float64).index_add_(0, inverse, ranks[order])
    mean_rank /= torch.bincount(inverse, minlength=len(unique)).double()
    average = torch.empty_like(ranks)
    average[order] = mean_rank[inverse]
    return float((average[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
