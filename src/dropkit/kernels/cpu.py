r"""Compiled CPU kernels (numba): Philox4x32-10 masks fused with the masked affine map, no mask stored.

Each kernel computes, for a contiguous input viewed as ``(M, L)`` (``M`` mask elements, each broadcast
over ``L`` consecutive elements),

.. math:: y_{m,l} = \begin{cases} x_{m,l}\cdot \text{scale} + \text{bias} & \text{fold}(w_0(s, o + m)) \ge t \\
          \text{fill} & \text{otherwise} \end{cases}

with the exact Philox word, fold and integer threshold of :mod:`dropkit.rng`, so the masks are
bit-identical to the torch-ops reference. bfloat16 is handled on its raw bits (widen to float32,
compute, round to nearest even), float32 and float64 natively. The same kernel serves forward and
backward: the gradient of a masked affine map is the masked linear map of the incoming gradient.
Internal: no stability promise. Import is lazy (numba loads on first use).
"""

from __future__ import annotations

import os
import threading

import numpy as np
import torch

if "NUMBA_THREADING_LAYER" not in os.environ:
    # workqueue threads sleep between launches instead of spinning against torch's OpenMP pool, and are
    # fork-safe (DataLoader workers); the lock below makes concurrent calls from Python threads safe.
    os.environ["NUMBA_THREADING_LAYER"] = "workqueue"

import numba  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import njit, prange, types, uint16, uint32, uint64  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

from .. import rng  # noqa: E402

__all__ = ["DTYPES", "keep_mask", "masked_affine"]

#: dtypes with a fused kernel; other dtypes use :func:`keep_mask` plus torch ops.
DTYPES = (torch.float32, torch.float64, torch.bfloat16)

_LOCK = threading.Lock()
_KA, _KB = uint32(rng.PHILOX_KEY_A), uint32(rng.PHILOX_KEY_B)
_RA, _RB = uint64(rng.PHILOX_ROUND_A), uint64(rng.PHILOX_ROUND_B)
_SIGN = uint32(0x80000000)


@njit(inline="always")
def _philox_word0(ctr: np.uint64, k0: np.uint32, k1: np.uint32) -> np.uint32:  # pragma: no cover - compiled
    """Philox4x32-10 on counter ``(lo(ctr), hi(ctr), 0, 0)``; returns output word 0."""
    c0 = uint32(ctr & uint64(0xFFFFFFFF))
    c1 = uint32(ctr >> uint64(32))
    c2 = uint32(0)
    c3 = uint32(0)
    for _ in range(10):
        p0 = _RA * uint64(c0)
        p1 = _RB * uint64(c2)
        n0 = uint32(uint32(p1 >> uint64(32)) ^ c1 ^ k0)
        n2 = uint32(uint32(p0 >> uint64(32)) ^ c3 ^ k1)
        c1 = uint32(p1)
        c3 = uint32(p0)
        c0 = n0
        c2 = n2
        k0 = uint32(k0 + _KA)
        k1 = uint32(k1 + _KB)
    return c0


@njit(inline="always")
def _kept(ctr: np.uint64, k0: np.uint32, k1: np.uint32, threshold: np.uint32) -> bool:  # pragma: no cover
    w = _philox_word0(ctr, k0, k1)
    folded = w if w < _SIGN else uint32(~w)
    return folded >= threshold


@intrinsic
def _u32_as_f32(typingctx, bits):  # pragma: no cover - compiled
    """Reinterpret uint32 bits as float32 (an LLVM bitcast; numba's .view fails inside parallel loops)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def _f32_as_u32(typingctx, value):  # pragma: no cover - compiled
    """Reinterpret float32 bits as uint32."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@njit(inline="always")
def _bf16_to_f32(bits: np.uint16) -> np.float32:  # pragma: no cover
    return _u32_as_f32(uint32(uint32(bits) << uint32(16)))


@njit(inline="always")
def _f32_to_bf16(value: np.float32) -> np.uint16:  # pragma: no cover
    bits = _f32_as_u32(value)
    if (bits & uint32(0x7FFFFFFF)) > uint32(0x7F800000):
        return uint16(0x7FC0)  # canonical quiet NaN, as c10::BFloat16
    return uint16((bits + uint32(0x7FFF) + ((bits >> uint32(16)) & uint32(1))) >> uint32(16))


@njit(parallel=True, cache=True)
def _affine_elementwise(x, out, k0, k1, offset, threshold, scale, bias, fill):  # pragma: no cover
    for i in prange(x.size):
        y = x[i] * scale
        if bias != 0:
            y = y + bias
        out[i] = y if _kept(offset + uint64(i), k0, k1, threshold) else fill


@njit(parallel=True, cache=True)
def _affine_rows(x, out, k0, k1, offset, threshold, scale, bias, fill, row):  # pragma: no cover
    for m in prange(x.size // row):
        base = m * row
        if _kept(offset + uint64(m), k0, k1, threshold):
            for j in range(row):
                y = x[base + j] * scale
                if bias != 0:
                    y = y + bias
                out[base + j] = y
        else:
            for j in range(row):
                out[base + j] = fill


@njit(parallel=True, cache=True)
def _affine_elementwise_bf16(x, out, k0, k1, offset, threshold, scale, bias, fill):  # pragma: no cover
    for i in prange(x.size):
        y = _bf16_to_f32(x[i]) * scale
        if bias != 0:
            y = y + bias
        out[i] = _f32_to_bf16(y) if _kept(offset + uint64(i), k0, k1, threshold) else fill


@njit(parallel=True, cache=True)
def _affine_rows_bf16(x, out, k0, k1, offset, threshold, scale, bias, fill, row):  # pragma: no cover
    for m in prange(x.size // row):
        base = m * row
        if _kept(offset + uint64(m), k0, k1, threshold):
            for j in range(row):
                y = _bf16_to_f32(x[base + j]) * scale
                if bias != 0:
                    y = y + bias
                out[base + j] = _f32_to_bf16(y)
        else:
            for j in range(row):
                out[base + j] = fill


@njit(parallel=True, cache=True)
def _keep_mask(out, k0, k1, offset, threshold):  # pragma: no cover
    for i in prange(out.size):
        out[i] = _kept(offset + uint64(i), k0, k1, threshold)


def _key(seed: int) -> tuple[np.uint32, np.uint32]:
    return np.uint32(seed & 0xFFFFFFFF), np.uint32((seed >> 32) & 0xFFFFFFFF)


def keep_mask(numel: int, seed: int, offset: int, threshold: int) -> torch.Tensor:
    """Return the bool keep mask of counters ``offset .. offset + numel - 1`` on the CPU, as :mod:`dropkit.rng` says."""
    out = torch.empty(numel, dtype=torch.bool)
    if numel:
        with _LOCK:
            _keep_mask(out.numpy(), *_key(seed), np.uint64(offset), np.uint32(threshold))
    return out


def masked_affine(
    x: torch.Tensor,
    out: torch.Tensor,
    seed: int,
    offset: int,
    threshold: int,
    scale: float,
    bias: float,
    fill: float,
    row: int,
) -> None:
    """Write the masked affine map of contiguous CPU ``x`` into contiguous ``out`` (may alias ``x``).

    ``x`` is viewed as ``(numel // row, row)``; mask element ``m`` uses counter ``offset + m``.
    """
    if x.numel() == 0:
        return
    k0, k1 = _key(seed)
    if x.dtype == torch.bfloat16:
        xs, os_ = (t.detach().view(torch.int16).numpy().view(np.uint16) for t in (x, out))
        fill_bf16 = torch.tensor(fill, dtype=torch.float32).to(torch.bfloat16)
        fill_bits = np.uint16(fill_bf16.view(torch.int16).item() & 0xFFFF)
        args = (k0, k1, np.uint64(offset), np.uint32(threshold), np.float32(scale), np.float32(bias), fill_bits)
        elementwise, rows = _affine_elementwise_bf16, _affine_rows_bf16
    else:
        xs, os_ = x.detach().numpy(), out.detach().numpy()
        real = np.float32 if x.dtype == torch.float32 else np.float64
        args = (k0, k1, np.uint64(offset), np.uint32(threshold), real(scale), real(bias), real(fill))
        elementwise, rows = _affine_elementwise, _affine_rows
    xs, os_ = xs.reshape(-1), os_.reshape(-1)
    with _LOCK:
        if row == 1:
            elementwise(xs, os_, *args)
        else:
            rows(xs, os_, *args, np.int64(row))


def threads() -> int:
    """Number of threads the kernels run on (numba's setting)."""
    return int(numba.get_num_threads())
