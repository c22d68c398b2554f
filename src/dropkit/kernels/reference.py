r"""Torch-ops reference kernels: the ground truth every fast kernel is tested against, on any device.

Masks come from :mod:`dropkit.rng` (Philox4x32-10 in torch integer ops). The masked affine map takes
an explicit keep mask, so a test can feed the same mask to a kernel and to this oracle:

.. math:: y = \text{keep} \;?\; x\cdot\text{scale} + \text{bias} \;:\; \text{fill}

computed in float32 for half and bfloat16 inputs (one rounding at the end), in the input dtype otherwise.
"""

from __future__ import annotations

import torch

from .. import rng

__all__ = ["keep_mask_ref", "masked_affine_ref"]


def keep_mask_ref(numel: int, seed: int, offset: int, threshold: int, device: torch.device | str | None = None):
    """Return the bool keep mask ``fold(word(seed, offset + n)) >= threshold`` for ``n < numel``."""
    return rng.fold(rng.element_words(numel, seed, offset, device=device)) >= threshold


def masked_affine_ref(x: torch.Tensor, keep: torch.Tensor, scale: float, bias: float = 0.0, fill: float = 0.0):
    """Return ``where(keep, x * scale + bias, fill)`` with ``keep`` broadcast against ``x``.

    Dropped elements are exactly ``fill`` whatever their input (NaN and inf included). The output
    follows the input's memory layout (channels_last, permuted and sliced views included).
    """
    opmath = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    y = x.to(opmath) * scale
    if bias:
        y = y + bias
    # y is a fresh tensor laid out like x (TensorIterator follows x's stride order); fill it in place
    return y.masked_fill_(~keep, fill).to(x.dtype)
