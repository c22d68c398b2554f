r"""Losses built on dropout: R-Drop's consistency term between two stochastic passes.

R-Drop (Liang et al., "R-Drop: Regularized Dropout for Neural Networks", NeurIPS 2021) feeds every batch
through the model twice — two dropout masks, two sub-models — and adds to the task loss the symmetric KL
divergence between the two predictive distributions:

.. math::

    \mathcal L = \mathcal L_{\text{task}}(P_1) + \mathcal L_{\text{task}}(P_2)
        + \alpha \cdot \tfrac12 \big(D_{KL}(P_1 \,\|\, P_2) + D_{KL}(P_2 \,\|\, P_1)\big).

:func:`rdrop_loss` is the bracketed consistency term (without :math:`\alpha`), computed as the authors' code
does (``compute_kl_loss``: ``F.kl_div`` both ways on ``log_softmax`` / ``softmax``, padded positions zeroed,
summed, halved).
"""

from __future__ import annotations

import torch

from . import _validate

__all__ = ["rdrop_loss"]

REDUCTIONS = ("sum", "mean", "batchmean", "none")


def rdrop_loss(
    logits1: torch.Tensor,
    logits2: torch.Tensor,
    *,
    dim: int = -1,
    reduction: str = "sum",
    pad_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Return R-Drop's symmetric KL between the softmax distributions of two dropout passes.

    Per position :math:`i` (every index except ``dim``), with :math:`P = \mathrm{softmax}(\text{logits1})` and
    :math:`Q = \mathrm{softmax}(\text{logits2})` over ``dim``:

    .. math::

        \ell_i = \tfrac12\big(D_{KL}(P_i\|Q_i) + D_{KL}(Q_i\|P_i)\big)
               = \tfrac12 \sum_c (P_{ic} - Q_{ic})(\log P_{ic} - \log Q_{ic}),

    computed from ``log_softmax`` (stable for large logits). Gradients flow into both passes, as in the
    reference. Positions where ``pad_mask`` is ``True`` contribute 0 (sequence tasks).

    Args:
        logits1: Logits of the first pass, shape :math:`(N, *, C)` (classes on ``dim``).
        logits2: Logits of the second pass, same shape.
        dim: The class dimension. Default: ``-1``.
        reduction: ``"sum"`` (the reference's: :math:`\sum_i \ell_i`), ``"batchmean"`` (the sum divided by
            :math:`N`, torch ``kl_div``'s true-KL mean), ``"mean"`` (mean of :math:`\ell_i` over non-padded
            positions) or ``"none"`` (the :math:`\ell_i`, shape of the logits without ``dim``). Default: ``"sum"``.
        pad_mask: Optional bool tensor, ``True`` at positions to ignore, broadcastable to the logits' shape without
            ``dim`` (or to the logits' shape with size 1 at ``dim``, the reference's ``(B, T, 1)``). Default:
            ``None``.

    Returns:
        A scalar tensor, or the per-position losses for ``reduction="none"``.

    Raises:
        TypeError: If the logits are not floating-point tensors, or ``pad_mask`` is not a bool tensor.
        ValueError: If the shapes differ or ``reduction`` is unknown.

    Example:
        >>> a = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> rdrop_loss(a, a)
        tensor(0.)
        >>> rdrop_loss(a, a.flip(1), reduction="none")
        tensor([1.5232, 0.4621])

    References:
        Liang et al., "R-Drop: Regularized Dropout for Neural Networks", NeurIPS 2021,
        https://arxiv.org/abs/2106.14448 (code: https://github.com/dropreg/R-Drop).
    """
    op = "rdrop_loss"
    _validate.tensor_pair(op, logits1, logits2)
    _validate.choice(op, "reduction", reduction, REDUCTIONS)
    log_p = torch.log_softmax(logits1, dim=dim)
    log_q = torch.log_softmax(logits2, dim=dim)
    per_position = 0.5 * ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim)
    kept = None
    if pad_mask is not None:
        _validate.bool_mask(op, "pad_mask", pad_mask)
        if pad_mask.dim() == logits1.dim() and pad_mask.shape[dim] == 1:
            pad_mask = pad_mask.squeeze(dim)
        per_position = per_position.masked_fill(pad_mask, 0.0)
        kept = (~pad_mask).expand_as(per_position)
    if reduction == "none":
        return per_position
    if reduction == "sum":
        return per_position.sum()
    if reduction == "batchmean":
        return per_position.sum() / max(1, logits1.shape[0]) if logits1.dim() > 1 else per_position.sum()
    count = per_position.numel() if kept is None else int(kept.sum())
    return per_position.sum() / max(1, count)
