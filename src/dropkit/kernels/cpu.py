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
from numba.extending import intrinsic, overload  # noqa: E402

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


def _load(x, i):  # pragma: no cover - replaced by the overload below inside compiled code
    raise NotImplementedError


def _store(out, i, value):  # pragma: no cover
    raise NotImplementedError


@overload(_load, inline="always")
def _load_overload(x, i):  # pragma: no cover - compiled
    """Read element ``i`` as a number: bfloat16 (held as uint16 bits) widens to float32."""
    if x.dtype == types.uint16:
        return lambda x, i: _bf16_to_f32(x[i])
    return lambda x, i: x[i]


@overload(_store, inline="always")
def _store_overload(out, i, value):  # pragma: no cover - compiled
    """Write a number to element ``i``: to bfloat16 bits with round-to-nearest-even when ``out`` holds uint16."""
    if out.dtype == types.uint16:

        def store_bf16(out, i, value):
            out[i] = _f32_to_bf16(value)

        return store_bf16

    def store(out, i, value):
        out[i] = value

    return store


@njit(inline="always")
def _elementwise_span(x, out, start, stop, k0, k1, offset, threshold, scale, bias, fill):  # pragma: no cover
    for i in range(start, stop):
        y = _load(x, i) * scale
        if bias != 0:
            y = y + bias
        _store(out, i, y if _kept(offset + uint64(i), k0, k1, threshold) else fill)


@njit(inline="always")
def _rows_span(x, out, start, stop, k0, k1, offset, threshold, scale, bias, fill, row):  # pragma: no cover
    for m in range(start, stop):
        base = m * row
        if _kept(offset + uint64(m), k0, k1, threshold):
            for j in range(base, base + row):
                y = _load(x, j) * scale
                if bias != 0:
                    y = y + bias
                _store(out, j, y)
        else:
            for j in range(base, base + row):
                _store(out, j, fill)


@njit(inline="always")
def _mask_span(out, start, stop, k0, k1, offset, threshold):  # pragma: no cover
    for i in range(start, stop):
        out[i] = _kept(offset + uint64(i), k0, k1, threshold)


# Parallel kernels split the work into chunks of _CHUNK counters; their serial twins (for small inputs, where
# a parallel launch costs more than the work) run the same span in one go.
_CHUNK = 4096


@njit(parallel=True, cache=True)
def _elementwise_parallel(x, out, k0, k1, offset, threshold, scale, bias, fill):  # pragma: no cover
    n = x.size
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        _elementwise_span(x, out, c * _CHUNK, min(n, (c + 1) * _CHUNK), k0, k1, offset, threshold, scale, bias, fill)


@njit(cache=True)
def _elementwise_serial(x, out, k0, k1, offset, threshold, scale, bias, fill):  # pragma: no cover
    _elementwise_span(x, out, 0, x.size, k0, k1, offset, threshold, scale, bias, fill)


@njit(parallel=True, cache=True)
def _rows_parallel(x, out, k0, k1, offset, threshold, scale, bias, fill, row):  # pragma: no cover
    m = x.size // row
    step = max(1, _CHUNK // row)
    for c in prange((m + step - 1) // step):
        _rows_span(x, out, c * step, min(m, (c + 1) * step), k0, k1, offset, threshold, scale, bias, fill, row)


@njit(cache=True)
def _rows_serial(x, out, k0, k1, offset, threshold, scale, bias, fill, row):  # pragma: no cover
    _rows_span(x, out, 0, x.size // row, k0, k1, offset, threshold, scale, bias, fill, row)


@njit(parallel=True, cache=True)
def _mask_parallel(out, k0, k1, offset, threshold):  # pragma: no cover
    n = out.size
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        _mask_span(out, c * _CHUNK, min(n, (c + 1) * _CHUNK), k0, k1, offset, threshold)


@njit(cache=True)
def _mask_serial(out, k0, k1, offset, threshold):  # pragma: no cover
    _mask_span(out, 0, out.size, k0, k1, offset, threshold)


#: Below this many elements the serial kernels win: a parallel launch costs about as much as 16k elements.
PARALLEL_MIN = 1 << 14


def _key(seed: int) -> tuple[np.uint32, np.uint32]:
    return np.uint32(seed & 0xFFFFFFFF), np.uint32((seed >> 32) & 0xFFFFFFFF)


def keep_mask(numel: int, seed: int, offset: int, threshold: int) -> torch.Tensor:
    """Return the bool keep mask of counters ``offset .. offset + numel - 1`` on the CPU, as :mod:`dropkit.rng` says."""
    out = torch.empty(numel, dtype=torch.bool)
    kernel = _mask_parallel if numel >= PARALLEL_MIN else _mask_serial
    with _LOCK:
        kernel(out.numpy(), *_key(seed), np.uint64(offset), np.uint32(threshold))
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
    if x.dtype == torch.bfloat16:  # numba has no bfloat16: pass the bits, widen and round inside the kernel
        xs, os_ = (t.detach().view(torch.int16).numpy().view(np.uint16) for t in (x, out))
        real = np.float32
    else:
        xs, os_ = x.detach().numpy(), out.detach().numpy()
        real = np.float32 if x.dtype == torch.float32 else np.float64
    xs, os_ = xs.reshape(-1), os_.reshape(-1)
    args = (*_key(seed), np.uint64(offset), np.uint32(threshold), real(scale), real(bias), real(fill))
    parallel = x.numel() >= PARALLEL_MIN
    with _LOCK:
        if row == 1:
            (_elementwise_parallel if parallel else _elementwise_serial)(xs, os_, *args)
        else:
            (_rows_parallel if parallel else _rows_serial)(xs, os_, *args, np.int64(row))


def threads() -> int:
    """Number of threads the kernels run on (numba's setting)."""
    return int(numba.get_num_threads())
