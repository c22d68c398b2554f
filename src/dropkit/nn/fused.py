"""Fused dropout + residual (+ bias) (+ norm) Modules: thin shells over :mod:`dropkit.functional`.

The norm modules hold the norm's parameters (``weight``, ``bias``) like ``torch.nn.LayerNorm`` /
``torch.nn.RMSNorm``, so a checkpoint of those loads into them; constructor and forward follow
flash-attn's ``DropoutAddLayerNorm`` / ``DropoutAddRMSNorm``.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _validate
from .. import functional as F
from .._overrides import fx_leaf_call
from .dropout import _SeededMixin

__all__ = ["BiasDropoutAdd", "DropoutAddLayerNorm", "DropoutAddRMSNorm"]


class _DropoutAddNorm(_SeededMixin, nn.Module):
    _op = staticmethod(F.dropout_add_layer_norm)
    _has_bias = True

    def __init__(
        self,
        hidden_size: int,
        prenorm: bool = False,
        p: float = 0.0,
        eps: float = 1e-5,
        residual_in_fp32: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.p = _validate.probability(name, p)
        self.eps = _validate.nonnegative(name, "eps", eps)
        self.hidden_size, self.prenorm, self.residual_in_fp32 = int(hidden_size), bool(prenorm), bool(residual_in_fp32)
        self.weight = nn.Parameter(torch.ones(self.hidden_size, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(self.hidden_size, device=device, dtype=dtype)) if self._has_bias else None
        self._setup_rng(seed, generator)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, rowscale: torch.Tensor | None = None):
        if (leaf := fx_leaf_call(self, x, residual, rowscale)) is not None:  # torch.fx: one call_module node
            return leaf
        return self._op(
            x, residual, self.weight, self.bias, self.p, self.eps, rowscale, self.prenorm, self.residual_in_fp32,
            training=self.training, generator=self.generator,
        )

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, prenorm={self.prenorm}, p={self.p}, eps={self.eps}" + self._extras()


class DropoutAddLayerNorm(_DropoutAddNorm):
    r"""``LayerNorm(dropout(x) + residual)``, one kernel on CUDA. See :func:`dropkit.functional.dropout_add_layer_norm`.

    Args:
        hidden_size: Size :math:`H` of the last dimension.
        prenorm: Also return the new residual ``dropout(x) + residual``. Default: ``False``.
        p: Probability of zeroing an element of ``x``. Must satisfy ``0 <= p <= 1``. Default: ``0.0``.
        eps: Added to the variance. Default: ``1e-5``.
        residual_in_fp32: With no residual given, keep the new residual in float32. Default: ``False``.
        device: Device of the parameters. Default: ``None``.
        dtype: Dtype of the parameters. Default: ``None``.
        seed: Seed of the module's own generator. Default: ``None``.
        generator: Generator to draw seeds from. Default: torch's global CPU generator.

    Example:
        >>> m = DropoutAddLayerNorm(8, p=0.1)
        >>> m(torch.randn(2, 8), torch.randn(2, 8)).shape
        torch.Size([2, 8])
    """


class DropoutAddRMSNorm(_DropoutAddNorm):
    r"""``RMSNorm(dropout(x) + residual)``, one kernel on CUDA. See :func:`dropkit.functional.dropout_add_rms_norm`.

    Same arguments as :class:`DropoutAddLayerNorm`; the norm has a ``weight`` and no ``bias``.

    Example:
        >>> m = DropoutAddRMSNorm(8, prenorm=True, p=0.1)
        >>> [t.shape for t in m(torch.randn(2, 8), torch.randn(2, 8))]
        [torch.Size([2, 8]), torch.Size([2, 8])]
    """

    _op = staticmethod(F.dropout_add_rms_norm)
    _has_bias = False


class BiasDropoutAdd(_SeededMixin, nn.Module):
    r"""``residual + dropout(x + bias)`` in one kernel on CUDA. See :func:`dropkit.functional.bias_dropout_add`.

    Args:
        p: Probability of zeroing an element. Must satisfy ``0 <= p <= 1``. Default: ``0.1``.
        seed: Seed of the module's own generator. Default: ``None``.
        generator: Generator to draw seeds from. Default: torch's global CPU generator.

    Example:
        >>> BiasDropoutAdd(0.1)(torch.ones(2, 4), torch.ones(4), torch.zeros(2, 4)).shape
        torch.Size([2, 4])
    """

    def __init__(self, p: float = 0.1, *, seed: int | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.p = _validate.probability(type(self).__name__, p)
        self._setup_rng(seed, generator)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor) -> torch.Tensor:
        """Return ``residual + dropout(x + bias)``."""
        if (leaf := fx_leaf_call(self, x, bias, residual)) is not None:  # torch.fx: one call_module node
            return leaf
        return F.bias_dropout_add(x, bias, residual, self.p, self.training, generator=self.generator)

    def extra_repr(self) -> str:
        """Return the module's settings for ``repr``."""
        return f"p={self.p}" + self._extras()
