"""Kernel dispatch: one place that picks how a seeded mask is generated and applied.

Internal, not re-exported. Backends:

- ``cpu``: numba kernels (:mod:`dropkit.kernels.cpu`), fused mask generation and apply for contiguous
  float32 / float64 / bfloat16 CPU tensors; mask generation for other CPU cases.
- ``reference``: torch ops (:mod:`dropkit.kernels.reference`), any device and dtype.

``DROPKIT_CPU_BACKEND`` (``auto`` | ``numba`` | ``reference``) or :func:`use_backend` force a choice;
``auto`` takes numba when it imports and falls back to the reference otherwise. Both give identical masks.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .reference import keep_mask_ref, masked_affine_ref

__all__ = ["MaskSpec", "apply", "keep_mask", "backend", "use_backend"]

_BACKENDS = ("auto", "numba", "reference")
_forced: str | None = None


@dataclass(frozen=True)
class MaskSpec:
    """Everything needed to (re)generate and apply one call's mask: O(1) bytes whatever the tensor size.

    Element ``m`` of the mask (row-major over the leading ``mask_dims`` dimensions of the input) is kept
    iff ``fold(w0(seed, offset + m)) >= threshold``; kept elements map to ``x * scale + bias``, dropped
    ones to ``fill``; the mask broadcasts over the remaining dimensions.
    """

    seed: int
    offset: int
    threshold: int
    scale: float
    bias: float = 0.0
    fill: float = 0.0
    mask_dims: int = -1  # -1: every dimension (element-wise)

    def mask_shape(self, shape: torch.Size) -> tuple[int, ...]:
        """Return the broadcastable mask shape for an input of ``shape``."""
        k = len(shape) if self.mask_dims < 0 else self.mask_dims
        return tuple(shape[:k]) + (1,) * (len(shape) - k)

    def linear(self) -> MaskSpec:
        """Return the spec of the derivative: the same mask, kept elements scaled, no bias, dropped to 0."""
        return MaskSpec(self.seed, self.offset, self.threshold, self.scale, 0.0, 0.0, self.mask_dims)


def backend() -> str:
    """Return the CPU backend in force: ``numba`` or ``reference``."""
    choice = _forced or os.environ.get("DROPKIT_CPU_BACKEND", "auto")
    if choice not in _BACKENDS:
        raise ValueError(f"DROPKIT_CPU_BACKEND must be one of {', '.join(_BACKENDS)}, but got {choice!r}.")
    if choice == "reference":
        return "reference"
    try:
        from . import cpu  # noqa: F401
    except ImportError:
        if choice == "numba":
            raise RuntimeError("numba backend requested but numba is not installed (pip install numba).") from None
        return "reference"
    return "numba"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force the CPU backend (``auto``, ``numba`` or ``reference``) inside a ``with`` block."""
    global _forced
    if name not in _BACKENDS:
        raise ValueError(f"use_backend: name must be one of {', '.join(map(repr, _BACKENDS))}, but got {name!r}.")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


def keep_mask(spec: MaskSpec, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Return the bool keep mask of ``spec`` with the given (mask) shape."""
    numel = math.prod(shape)
    if device.type == "cpu" and backend() == "numba":
        from . import cpu

        return cpu.keep_mask(numel, spec.seed, spec.offset, spec.threshold).reshape(shape)
    return keep_mask_ref(numel, spec.seed, spec.offset, spec.threshold, device).reshape(shape)


def apply(x: torch.Tensor, spec: MaskSpec, out: torch.Tensor | None = None) -> torch.Tensor:
    """Return the masked affine map of ``x`` under ``spec``, written into ``out`` when given (``out`` may be ``x``)."""
    mask_shape = spec.mask_shape(x.shape)
    fused = x.device.type == "cpu" and x.is_contiguous() and (out is None or out.is_contiguous())
    if fused and backend() == "numba":
        from . import cpu

        if x.dtype in cpu.DTYPES:
            dst = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
            row = x.numel() // max(1, math.prod(mask_shape))
            cpu.masked_affine(x, dst, spec.seed, spec.offset, spec.threshold, spec.scale, spec.bias, spec.fill, row)
            return dst
    keep = keep_mask(spec, mask_shape, x.device)
    result = masked_affine_ref(x, keep, spec.scale, spec.bias, spec.fill)
    return result if out is None else out.copy_(result)
