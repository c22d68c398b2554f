r"""Triton GPU kernels: seeded dropout and fused dropout + residual + norm, no mask stored.

Every kernel draws its mask from Triton's ``tl.randint4x`` in the grouped layout of :mod:`dropkit.rng`
(element ``m`` takes word :math:`\lfloor m/256 \rfloor \bmod 4` of counter
:math:`256\lfloor m/1024 \rfloor + m \bmod 256`), so its masks are bit-identical to the torch-ops
reference and the numba CPU kernels. A program covers whole groups of 1024 elements: one Philox call
yields the four words of 256 counters and each word is used once, so the generator costs a quarter of a
Philox call per element and the kernels stay memory-bound.

Kernels (launched through ops registered with :func:`torch.library.triton_op`, so ``torch.compile`` and
``torch.export`` see them):

- ``dropkit::masked_affine``: :math:`y = \text{keep}\;?\;(x + b_{col})\cdot s + \beta : f` (+ residual),
  element-wise (``row = 1``) or with one mask element per ``row`` consecutive elements (channel dropout).
  Backward is the same op on the gradient with the linear part of the map.
- ``dropkit::dropout_add_norm_fwd`` / ``_bwd``: per row of length ``H``,
  :math:`h = \text{dropout}(x \cdot r) + \text{residual}`, :math:`y = \text{LN}(h)\,w + b` or
  :math:`\text{RMS}(h)\,w + b`; backward regenerates the dropout mask from the seed.

The seed and base offset come either as integers or from a two-element int64 device tensor
``(seed, offset)`` (``state``): then nothing is read on the host, and a CUDA graph that advances the
tensor after each launch draws fresh masks on every replay.

Internal: no stability promise. Imported lazily, only for CUDA tensors (or under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .. import rng

__all__ = ["DTYPES", "MAX_NORM_COLS", "masked_affine", "dropout_add_norm_fwd", "dropout_add_norm_bwd"]

#: dtypes with Triton kernels (float64 goes to the torch-ops reference).
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: Longest row the fused norm kernels hold in registers.
MAX_NORM_COLS = 16384

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
#: Launch settings (tuned on an H100; a benchmark may override them).
TUNING = {
    "max_groups": 4,  # groups of 1024 elements per element-wise program, at most
    "min_programs_per_sm": 8,  # fewer groups per program until the grid fills the GPU this many times over
    "elementwise_warps": 4,
    "norm_fwd_bytes_per_warp": 2048,  # forward warps: row bytes / this, in [4, 16]
    "norm_bwd_warps": 0,  # 0: max(4, NG) (NG = row length / 1024, rounded up to 2^k)
    "norm_bwd_min_rows": 16,  # rows per backward program, at least (each writes a partial dw, db row)
    "norm_bwd_programs_per_sm": {1: 8, 2: 8, 4: 2, 8: 2, 16: 2},  # by NG
    "norm_bwd_rows": 1,  # rows in flight per loop step of a backward program (2+ spills registers at NG >= 4)
}


def _sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (4 under the interpreter)."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` on the host (``triton.cdiv`` is a constexpr function: about 2 µs a call in Python)."""
    return -(-a // b)


def _pow2(n: int) -> int:
    """The smallest power of two ``>= n`` (``triton.next_power_of_2`` on the host, without its call overhead)."""
    if type(n) is not int:  # a symbolic size while torch traces
        return triton.next_power_of_2(n)
    return 1 << max(0, n - 1).bit_length()


def _signed(value: int) -> int:
    """Return a uint64 as the int64 with the same bits (ops take int64; the kernel reads the bits)."""
    return value - 2**64 if value >= 2**63 else value


def _traced(x: torch.Tensor) -> bool:
    """Whether torch is tracing (compile, export, fake tensors): then calls go through the registered ops."""
    return (
        torch.compiler.is_compiling()
        or type(x) is not torch.Tensor
        or torch.utils._python_dispatch._get_current_dispatch_mode() is not None
    )


def _launch(kernel, x: torch.Tensor):
    """Return ``kernel``, wrapped for torch's tracing when it traces (the interpreter runs raw kernels)."""
    return torch.library.wrap_triton(kernel) if _traced(x) and not _INTERPRET else kernel


def _seed_args(seed: int, state: torch.Tensor | None) -> tuple[int, int]:
    """Encode a seed as two kernel arguments of one fixed Triton signature, whatever the seed.

    Triton types an int argument by its value (int32 below 2^31, int64 above) and specialises it on
    divisibility by 16, so raw seeds would compile a new kernel variant now and then, which must not
    happen while a CUDA graph is being captured. Each 32-bit half ``k`` is passed as
    ``2^36 + 16 k + 3``: always int64, never a multiple of 16 (nor 1). :func:`_seed` decodes it.
    With a ``state`` tensor the kernel reads the key there, and the two arguments are the placeholder 3
    (which also keeps constants above 2^31 out of ``torch.compile``'s graphs: Inductor fails on them).
    """
    if state is not None:
        return 3, 3
    return 2**36 + ((seed & 0xFFFFFFFF) << 4) + 3, 2**36 + (((seed >> 32) & 0xFFFFFFFF) << 4) + 3


@triton.jit
def _seed(STATE, seed_lo, seed_hi, FROM_STATE: tl.constexpr):
    """The 64-bit Philox key: from the device state, or decoded from the two arguments of :func:`_seed_args`."""
    if FROM_STATE:  # one return: the branch not taken is not compiled, so its types never meet the other's
        key = tl.load(STATE)
    else:
        key = (((seed_hi >> 4) & 0xFFFFFFFF) << 32) | ((seed_lo >> 4) & 0xFFFFFFFF)
    return key


@triton.jit
def _mul_rn(x, s, EXACT: tl.constexpr):
    """``x * s`` rounded on its own: with EXACT the product is never fused into a later add (PTX mul.rn)."""
    if EXACT:
        return tl.inline_asm_elementwise(
            "mul.rn.f32 $0, $1, $2;", "=f,f,f", [x, s + tl.zeros_like(x)], dtype=tl.float32, is_pure=True, pack=1
        )
    return x * s


@triton.jit
def _fold(w):
    """Triton's uint32 → [0, 2^31) fold of ``tl.rand``: the int32 bits, complemented when negative."""
    wi = w.to(tl.int32, bitcast=True)
    return tl.where(wi < 0, ~wi, wi)


@triton.jit
def _select(w0, w1, w2, w3, j):
    return tl.where(j == 0, w0, tl.where(j == 1, w1, tl.where(j == 2, w2, w3)))


@triton.jit
def _word_of(seed, m):
    """The Philox word of global element index ``m`` (any shape), computed per element."""
    w0, w1, w2, w3 = tl.randint4x(seed, (m // 1024) * 256 + m % 256)
    return _select(w0, w1, w2, w3, (m // 256) % 4)


@triton.jit
def _affine_part(X, Y, R, B, n, w, numel, ncols, threshold, scale, shift, fill,
                 HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SHIFT: tl.constexpr,
                 EXACT_MUL: tl.constexpr):
    inb = (n >= 0) & (n < numel)
    x = tl.load(X + n, mask=inb, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(B + n % ncols, mask=inb, other=0.0).to(tl.float32)
    keep = _fold(w) >= threshold
    y = tl.where(keep, _mul_rn(x, scale, EXACT_MUL), fill)
    if HAS_SHIFT:  # x * scale rounded before the add (no FMA): the reference's two roundings
        y = tl.where(keep, y + shift, fill)
    if HAS_RESIDUAL:
        y += tl.load(R + n, mask=inb, other=0.0).to(tl.float32)
    tl.store(Y + n, y.to(Y.dtype.element_ty), mask=inb)


@triton.jit
def _masked_affine_fwd_kernel(X, Y, R, B, STATE, numel, ncols, seed_lo, seed_hi, offset, threshold, scale, shift, fill,
                              GROUPS: tl.constexpr, FROM_STATE: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                              HAS_BIAS: tl.constexpr, HAS_SHIFT: tl.constexpr, EXACT_MUL: tl.constexpr):
    """Element-wise: each program takes GROUPS whole groups of 1024 elements, one Philox call per 4 elements."""
    seed = _seed(STATE, seed_lo, seed_hi, FROM_STATE)
    if FROM_STATE:  # DeviceGenerator offsets are whole groups: tell the compiler, so loads stay vectorised
        offset = tl.multiple_of(tl.load(STATE + 1), 1024) + offset
    pid = tl.program_id(0).to(tl.int64)
    g = offset // 1024 + pid * GROUPS + tl.arange(0, GROUPS).to(tl.int64)[:, None]
    lane = tl.arange(0, 256)[None, :]
    w0, w1, w2, w3 = tl.randint4x(seed, g * 256 + lane)
    n = g * 1024 + lane - offset
    _affine_part(X, Y, R, B, n, w0, numel, ncols, threshold, scale, shift, fill,
                 HAS_RESIDUAL, HAS_BIAS, HAS_SHIFT, EXACT_MUL)
    _affine_part(X, Y, R, B, n + 256, w1, numel, ncols, threshold, scale, shift, fill,
                 HAS_RESIDUAL, HAS_BIAS, HAS_SHIFT, EXACT_MUL)
    _affine_part(X, Y, R, B, n + 512, w2, numel, ncols, threshold, scale, shift, fill,
                 HAS_RESIDUAL, HAS_BIAS, HAS_SHIFT, EXACT_MUL)
    _affine_part(X, Y, R, B, n + 768, w3, numel, ncols, threshold, scale, shift, fill,
                 HAS_RESIDUAL, HAS_BIAS, HAS_SHIFT, EXACT_MUL)


@triton.jit
def _masked_affine_rows_fwd_kernel(X, Y, STATE, rows, row, seed_lo, seed_hi, offset, threshold, scale, shift, fill,
                                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, FROM_STATE: tl.constexpr,
                                   HAS_SHIFT: tl.constexpr, EXACT_MUL: tl.constexpr):
    """Channel-wise: mask element ``r`` covers elements ``r * row .. r * row + row - 1``."""
    seed = _seed(STATE, seed_lo, seed_hi, FROM_STATE)
    if FROM_STATE:  # DeviceGenerator offsets are whole groups: tell the compiler, so loads stay vectorised
        offset = tl.multiple_of(tl.load(STATE + 1), 1024) + offset
    r = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    keep = _fold(_word_of(seed, offset + r)) >= threshold
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    n = r[:, None] * row + cols[None, :]
    inb = (r[:, None] < rows) & (cols[None, :] < row)
    x = tl.load(X + n, mask=inb, other=0.0).to(tl.float32)
    y = tl.where(keep[:, None], _mul_rn(x, scale, EXACT_MUL), fill)
    if HAS_SHIFT:
        y = tl.where(keep[:, None], y + shift, fill)
    tl.store(Y + n, y.to(Y.dtype.element_ty), mask=inb)


def _masked_affine_into(x, y, residual, bias, state, seed, offset, threshold, scale, shift, fill, row):
    numel = x.numel()
    from_state = state is not None
    state_arg = state if from_state else x
    if row == 1:
        groups = _cdiv(numel, rng.GROUP) + 1  # an unaligned offset spans at most one more group
        per_program = TUNING["max_groups"]
        while per_program > 1 and groups < per_program * TUNING["min_programs_per_sm"] * _sms(x.device):
            per_program //= 2
        grid = (_cdiv(groups, per_program),)
        _launch(_masked_affine_fwd_kernel, x)[grid](
            x, y, residual if residual is not None else x, bias if bias is not None else x, state_arg,
            numel, bias.numel() if bias is not None else 1, *_seed_args(seed, state), offset, threshold, scale, shift,
            fill,
            GROUPS=per_program, FROM_STATE=from_state, HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None,
            HAS_SHIFT=shift != 0.0, EXACT_MUL=shift != 0.0 and not _INTERPRET, num_warps=TUNING["elementwise_warps"],
        )
    else:
        rows = numel // row
        block_c = min(1024, _pow2(row))
        block_r = max(1, 2048 // block_c)
        grid = (_cdiv(rows, block_r), _cdiv(row, block_c))
        _launch(_masked_affine_rows_fwd_kernel, x)[grid](
            x, y, state_arg, rows, row, *_seed_args(seed, state), offset, threshold, scale, shift, fill,
            BLOCK_R=block_r, BLOCK_C=block_c, FROM_STATE=from_state, HAS_SHIFT=shift != 0.0,
            EXACT_MUL=shift != 0.0 and not _INTERPRET, num_warps=4,
        )


def _masked_affine_impl(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    bias: torch.Tensor | None,
    state: torch.Tensor | None,
    seed: int,
    offset: int,
    threshold: int,
    scale: float,
    shift: float,
    fill: float,
    row: int,
) -> torch.Tensor:
    y = torch.empty_like(x)
    _masked_affine_into(x, y, residual, bias, state, seed, offset, threshold, scale, shift, fill, row)
    return y


def _masked_affine_inplace_impl(
    x: torch.Tensor,
    out: torch.Tensor,
    state: torch.Tensor | None,
    seed: int,
    offset: int,
    threshold: int,
    scale: float,
    shift: float,
    fill: float,
    row: int,
) -> None:
    _masked_affine_into(x, out, None, None, state, seed, offset, threshold, scale, shift, fill, row)


def masked_affine(
    x: torch.Tensor,
    seed: int,
    offset: int,
    threshold: int,
    scale: float,
    shift: float = 0.0,
    fill: float = 0.0,
    row: int = 1,
    *,
    out: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    state: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return ``keep ? (x + bias) * scale + shift : fill`` (+ ``residual``) for contiguous ``x``.

    ``bias`` (broadcast over the last dimension) and ``residual`` are element-wise only (``row = 1``).
    With ``state`` (int64 device tensor ``(seed, offset)``) the seed and base offset are read on the device
    and ``offset`` is added to the base.
    """
    seed = _signed(seed)
    if out is not None:
        fn = torch.ops.dropkit.masked_affine_ if _traced(x) else _masked_affine_inplace_impl
        fn(x, out, state, seed, offset, threshold, scale, shift, fill, row)
        return out
    fn = torch.ops.dropkit.masked_affine if _traced(x) else _masked_affine_impl
    return fn(x, residual, bias, state, seed, offset, threshold, scale, shift, fill, row)


# ---------------------------------------------------------------------------------------------------------------
# Fused dropout + residual add + LayerNorm / RMSNorm
# ---------------------------------------------------------------------------------------------------------------


@triton.jit
def _row_words(seed, m0, g, lane, ALIGNED: tl.constexpr):
    """Words of the four (NG, 256) tiles of a row whose first element has global index ``m0``.

    Tile ``j`` holds columns ``g * 1024 + j * 256 + lane``. Aligned rows (``m0 % 1024 == 0``) take one
    Philox call per 4 elements; otherwise each element computes its own counter.
    """
    if ALIGNED:
        w0, w1, w2, w3 = tl.randint4x(seed, (m0 // 1024 + g) * 256 + lane)
    else:
        col = g * 1024 + lane
        w0 = _word_of(seed, m0 + col)
        w1 = _word_of(seed, m0 + col + 256)
        w2 = _word_of(seed, m0 + col + 512)
        w3 = _word_of(seed, m0 + col + 768)
    return w0, w1, w2, w3


@triton.jit
def _sum_tile(x):
    return tl.sum(tl.sum(x, axis=1), axis=0)


@triton.jit
def _norm_fwd_part(X, R, H_OUT, base, col, w, ncols, threshold, scale, rs,
                   DROPOUT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_ROWSCALE: tl.constexpr):
    inb = col < ncols
    x = tl.load(X + base + col, mask=inb, other=0.0).to(tl.float32)
    if HAS_ROWSCALE:
        x = x * rs
    if DROPOUT:
        x = tl.where(_fold(w) >= threshold, x * scale, 0.0)
    if HAS_RESIDUAL:
        x += tl.load(R + base + col, mask=inb, other=0.0).to(tl.float32)
    tl.store(H_OUT + base + col, x.to(H_OUT.dtype.element_ty), mask=inb)
    return x


@triton.jit
def _norm_out_part(Y, W, B, base, col, h, mean, rstd, ncols,
                   IS_RMS: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr):
    inb = col < ncols
    y = (h - mean) * rstd if not IS_RMS else h * rstd
    if HAS_WEIGHT:
        y = y * tl.load(W + col, mask=inb, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(B + col, mask=inb, other=0.0).to(tl.float32)
    tl.store(Y + base + col, y.to(Y.dtype.element_ty), mask=inb)


@triton.jit
def _dropout_add_norm_fwd_kernel(X, R, W, B, ROWSCALE, Y, H_OUT, MEAN, RSTD, STATE,
                                 ncols, seed_lo, seed_hi, offset, threshold, scale, eps,
                                 NG: tl.constexpr, ALIGNED: tl.constexpr, IS_RMS: tl.constexpr,
                                 DROPOUT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_ROWSCALE: tl.constexpr,
                                 HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, FROM_STATE: tl.constexpr):
    """One program per row: h = dropout(x * rowscale) + residual (stored), y = norm(h) * w + b."""
    row = tl.program_id(0).to(tl.int64)
    seed = _seed(STATE, seed_lo, seed_hi, FROM_STATE)
    if FROM_STATE:  # DeviceGenerator offsets are whole groups: tell the compiler, so loads stay vectorised
        offset = tl.multiple_of(tl.load(STATE + 1), 1024) + offset
    base = row * ncols
    g = tl.arange(0, NG).to(tl.int64)[:, None]
    lane = tl.arange(0, 256)[None, :]
    col = g * 1024 + lane
    w0, w1, w2, w3 = col, col, col, col
    if DROPOUT:
        w0, w1, w2, w3 = _row_words(seed, offset + base, g, lane, ALIGNED)
    rs = 1.0
    if HAS_ROWSCALE:
        rs = tl.load(ROWSCALE + row).to(tl.float32)
    h0 = _norm_fwd_part(X, R, H_OUT, base, col, w0, ncols, threshold, scale, rs, DROPOUT, HAS_RESIDUAL, HAS_ROWSCALE)
    h1 = _norm_fwd_part(X, R, H_OUT, base, col + 256, w1, ncols, threshold, scale, rs,
                        DROPOUT, HAS_RESIDUAL, HAS_ROWSCALE)
    h2 = _norm_fwd_part(X, R, H_OUT, base, col + 512, w2, ncols, threshold, scale, rs,
                        DROPOUT, HAS_RESIDUAL, HAS_ROWSCALE)
    h3 = _norm_fwd_part(X, R, H_OUT, base, col + 768, w3, ncols, threshold, scale, rs,
                        DROPOUT, HAS_RESIDUAL, HAS_ROWSCALE)
    mean = 0.0
    if not IS_RMS:
        mean = (_sum_tile(h0) + _sum_tile(h1) + _sum_tile(h2) + _sum_tile(h3)) / ncols
        tl.store(MEAN + row, mean)
        d0 = tl.where(col < ncols, h0 - mean, 0.0)
        d1 = tl.where(col + 256 < ncols, h1 - mean, 0.0)
        d2 = tl.where(col + 512 < ncols, h2 - mean, 0.0)
        d3 = tl.where(col + 768 < ncols, h3 - mean, 0.0)
        var = (_sum_tile(d0 * d0) + _sum_tile(d1 * d1) + _sum_tile(d2 * d2) + _sum_tile(d3 * d3)) / ncols
    else:
        var = (_sum_tile(h0 * h0) + _sum_tile(h1 * h1) + _sum_tile(h2 * h2) + _sum_tile(h3 * h3)) / ncols
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(RSTD + row, rstd)
    _norm_out_part(Y, W, B, base, col, h0, mean, rstd, ncols, IS_RMS, HAS_WEIGHT, HAS_BIAS)
    _norm_out_part(Y, W, B, base, col + 256, h1, mean, rstd, ncols, IS_RMS, HAS_WEIGHT, HAS_BIAS)
    _norm_out_part(Y, W, B, base, col + 512, h2, mean, rstd, ncols, IS_RMS, HAS_WEIGHT, HAS_BIAS)
    _norm_out_part(Y, W, B, base, col + 768, h3, mean, rstd, ncols, IS_RMS, HAS_WEIGHT, HAS_BIAS)


@triton.jit
def _norm_bwd_load(H, DY, DRES_OUT, wt, base, col, ok, mean, rstd, ncols, IS_RMS: tl.constexpr,
                   HAS_DRES_OUT: tl.constexpr):
    """Load one (ROWS, NG, 256) tile set: xhat, dy, w * dy and the incoming residual gradient (or 0)."""
    inb = (col < ncols) & ok
    h = tl.load(H + base + col, mask=inb, other=0.0).to(tl.float32)
    dy = tl.load(DY + base + col, mask=inb, other=0.0).to(tl.float32)
    dres = 0.0
    if HAS_DRES_OUT:
        dres = tl.load(DRES_OUT + base + col, mask=inb, other=0.0).to(tl.float32)
    xhat = tl.where(inb, (h - mean) * rstd if not IS_RMS else h * rstd, 0.0)
    return xhat, dy, dy * wt, dres


@triton.jit
def _norm_bwd_store(DX, DRES, base, col, ok, w, xhat, wdy, dres, c1, c2, rstd, ncols, threshold, scale, rs,
                    IS_RMS: tl.constexpr, DROPOUT: tl.constexpr, STORE_DRES: tl.constexpr,
                    HAS_ROWSCALE: tl.constexpr):
    inb = (col < ncols) & ok
    if IS_RMS:
        dh = (wdy - xhat * c1) * rstd + dres
    else:
        dh = (wdy - (xhat * c1 + c2)) * rstd + dres
    if STORE_DRES:
        tl.store(DRES + base + col, dh.to(DRES.dtype.element_ty), mask=inb)
    dx = dh
    if DROPOUT:
        dx = tl.where(_fold(w) >= threshold, dh * scale, 0.0)
    if HAS_ROWSCALE:
        dx = dx * rs
    tl.store(DX + base + col, dx.to(DX.dtype.element_ty), mask=inb)


@triton.jit
def _row_sum(x):
    """Sum a (ROWS, NG, 256) tile per row, keeping the dimensions: (ROWS, 1, 1)."""
    return tl.sum(tl.sum(x, axis=2, keep_dims=True), axis=1, keep_dims=True)


@triton.jit
def _dropout_add_norm_bwd_kernel(H, DY, W, ROWSCALE, MEAN, RSTD, DRES_OUT, DX, DRES, DW, DB, STATE,
                                 rows, ncols, rows_per_program, seed_lo, seed_hi, offset, threshold, scale,
                                 NG: tl.constexpr, ROWS: tl.constexpr, ALIGNED: tl.constexpr, IS_RMS: tl.constexpr,
                                 DROPOUT: tl.constexpr, HAS_ROWSCALE: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                                 HAS_BIAS: tl.constexpr, HAS_DRES_OUT: tl.constexpr, STORE_DRES: tl.constexpr,
                                 FROM_STATE: tl.constexpr):
    """Each program takes ``rows_per_program`` rows, ROWS at a time, and writes its partial sums of dw and db."""
    pid = tl.program_id(0)
    seed = _seed(STATE, seed_lo, seed_hi, FROM_STATE)
    if FROM_STATE:  # DeviceGenerator offsets are whole groups: tell the compiler, so loads stay vectorised
        offset = tl.multiple_of(tl.load(STATE + 1), 1024) + offset
    g = tl.arange(0, NG).to(tl.int64)[None, :, None]
    lane = tl.arange(0, 256)[None, None, :]
    col = g * 1024 + lane  # (1, NG, 256)
    zero = tl.zeros((NG, 256), dtype=tl.float32)
    dw0, dw1, dw2, dw3 = zero, zero, zero, zero
    db0, db1, db2, db3 = zero, zero, zero, zero
    wt0, wt1, wt2, wt3 = 1.0, 1.0, 1.0, 1.0
    if HAS_WEIGHT:  # loaded once per program
        wt0 = tl.load(W + col, mask=col < ncols, other=0.0).to(tl.float32)
        wt1 = tl.load(W + col + 256, mask=col + 256 < ncols, other=0.0).to(tl.float32)
        wt2 = tl.load(W + col + 512, mask=col + 512 < ncols, other=0.0).to(tl.float32)
        wt3 = tl.load(W + col + 768, mask=col + 768 < ncols, other=0.0).to(tl.float32)
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, rows)
    for first in range(row_start, row_end, ROWS):
        row = first + tl.arange(0, ROWS).to(tl.int64)[:, None, None]  # (ROWS, 1, 1)
        ok = row < row_end
        base = row * ncols
        w0, w1, w2, w3 = col, col, col, col
        if DROPOUT:
            w0, w1, w2, w3 = _row_words(seed, offset + base, g, lane, ALIGNED)
        mean = 0.0
        if not IS_RMS:
            mean = tl.load(MEAN + row, mask=ok, other=0.0)
        rstd = tl.load(RSTD + row, mask=ok, other=0.0)
        rs = 1.0
        if HAS_ROWSCALE:
            rs = tl.load(ROWSCALE + row, mask=ok, other=0.0).to(tl.float32)
        xh0, dy0, wdy0, dr0 = _norm_bwd_load(H, DY, DRES_OUT, wt0, base, col, ok, mean, rstd, ncols, IS_RMS,
                                             HAS_DRES_OUT)
        xh1, dy1, wdy1, dr1 = _norm_bwd_load(H, DY, DRES_OUT, wt1, base, col + 256, ok, mean, rstd, ncols, IS_RMS,
                                             HAS_DRES_OUT)
        xh2, dy2, wdy2, dr2 = _norm_bwd_load(H, DY, DRES_OUT, wt2, base, col + 512, ok, mean, rstd, ncols, IS_RMS,
                                             HAS_DRES_OUT)
        xh3, dy3, wdy3, dr3 = _norm_bwd_load(H, DY, DRES_OUT, wt3, base, col + 768, ok, mean, rstd, ncols, IS_RMS,
                                             HAS_DRES_OUT)
        c1 = (_row_sum(xh0 * wdy0) + _row_sum(xh1 * wdy1) + _row_sum(xh2 * wdy2) + _row_sum(xh3 * wdy3)) / ncols
        c2 = 0.0
        if not IS_RMS:
            c2 = (_row_sum(wdy0) + _row_sum(wdy1) + _row_sum(wdy2) + _row_sum(wdy3)) / ncols
        _norm_bwd_store(DX, DRES, base, col, ok, w0, xh0, wdy0, dr0, c1, c2, rstd, ncols, threshold, scale, rs,
                        IS_RMS, DROPOUT, STORE_DRES, HAS_ROWSCALE)
        _norm_bwd_store(DX, DRES, base, col + 256, ok, w1, xh1, wdy1, dr1, c1, c2, rstd, ncols, threshold, scale, rs,
                        IS_RMS, DROPOUT, STORE_DRES, HAS_ROWSCALE)
        _norm_bwd_store(DX, DRES, base, col + 512, ok, w2, xh2, wdy2, dr2, c1, c2, rstd, ncols, threshold, scale, rs,
                        IS_RMS, DROPOUT, STORE_DRES, HAS_ROWSCALE)
        _norm_bwd_store(DX, DRES, base, col + 768, ok, w3, xh3, wdy3, dr3, c1, c2, rstd, ncols, threshold, scale, rs,
                        IS_RMS, DROPOUT, STORE_DRES, HAS_ROWSCALE)
        if HAS_WEIGHT:
            dw0 += tl.sum(dy0 * xh0, axis=0)
            dw1 += tl.sum(dy1 * xh1, axis=0)
            dw2 += tl.sum(dy2 * xh2, axis=0)
            dw3 += tl.sum(dy3 * xh3, axis=0)
        if HAS_BIAS:
            db0 += tl.sum(dy0, axis=0)
            db1 += tl.sum(dy1, axis=0)
            db2 += tl.sum(dy2, axis=0)
            db3 += tl.sum(dy3, axis=0)
    out = pid.to(tl.int64) * ncols
    col2 = tl.arange(0, NG).to(tl.int64)[:, None] * 1024 + tl.arange(0, 256)[None, :]
    if HAS_WEIGHT:
        tl.store(DW + out + col2, dw0, mask=col2 < ncols)
        tl.store(DW + out + col2 + 256, dw1, mask=col2 + 256 < ncols)
        tl.store(DW + out + col2 + 512, dw2, mask=col2 + 512 < ncols)
        tl.store(DW + out + col2 + 768, dw3, mask=col2 + 768 < ncols)
    if HAS_BIAS:
        tl.store(DB + out + col2, db0, mask=col2 < ncols)
        tl.store(DB + out + col2 + 256, db1, mask=col2 + 256 < ncols)
        tl.store(DB + out + col2 + 512, db2, mask=col2 + 512 < ncols)
        tl.store(DB + out + col2 + 768, db3, mask=col2 + 768 < ncols)


def _norm_config(ncols: int, offset: int, esize: int, which: str) -> tuple[int, bool, int]:
    """Return (NG, ALIGNED, num_warps) for rows of ``ncols`` (state offsets are kept multiples of 1024)."""
    ng = _pow2(_cdiv(ncols, rng.GROUP))
    aligned = ncols % rng.GROUP == 0 and offset % rng.GROUP == 0
    if which == "fwd":
        warps = min(16, max(4, ncols * esize // TUNING["norm_fwd_bytes_per_warp"]))
    else:
        warps = TUNING["norm_bwd_warps"] or max(4, ng)
    return ng, aligned, _pow2(warps)


def _dropout_add_norm_fwd_impl(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    rowscale: torch.Tensor | None,
    state: torch.Tensor | None,
    seed: int,
    offset: int,
    threshold: int,
    scale: float,
    eps: float,
    is_rms: bool,
    dropout: bool,
    out_dtype: torch.dtype,
    residual_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, ncols = x.shape
    y = torch.empty((rows, ncols), dtype=out_dtype, device=x.device)
    h = torch.empty((rows, ncols), dtype=residual_dtype, device=x.device)
    mean = torch.empty((rows,), dtype=torch.float32, device=x.device)
    rstd = torch.empty((rows,), dtype=torch.float32, device=x.device)
    ng, aligned, warps = _norm_config(ncols, offset, x.element_size(), "fwd")
    _launch(_dropout_add_norm_fwd_kernel, x)[(rows,)](
        x, residual if residual is not None else x, weight if weight is not None else x,
        bias if bias is not None else x, rowscale if rowscale is not None else x, y, h, mean, rstd,
        state if state is not None else x, ncols, *_seed_args(seed, state), offset, threshold, scale, eps,
        NG=ng, ALIGNED=aligned, IS_RMS=is_rms, DROPOUT=dropout, HAS_RESIDUAL=residual is not None,
        HAS_ROWSCALE=rowscale is not None, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
        FROM_STATE=state is not None, num_warps=warps,
    )
    return y, h, mean, rstd


def _dropout_add_norm_bwd_impl(
    dy: torch.Tensor,
    h: torch.Tensor,
    weight: torch.Tensor | None,
    has_bias: bool,
    rowscale: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dres_out: torch.Tensor | None,
    state: torch.Tensor | None,
    seed: int,
    offset: int,
    threshold: int,
    scale: float,
    is_rms: bool,
    dropout: bool,
    x_dtype: torch.dtype,
    residual_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, ncols = h.shape
    ng = _pow2(_cdiv(ncols, rng.GROUP))
    per_sm = TUNING["norm_bwd_programs_per_sm"][ng]
    programs = min(_cdiv(rows, TUNING["norm_bwd_min_rows"]), per_sm * _sms(h.device))
    rows_per_program = _cdiv(rows, max(1, programs))
    programs = _cdiv(rows, rows_per_program)
    dx = torch.empty((rows, ncols), dtype=x_dtype, device=h.device)
    dres = torch.empty((rows, ncols) if residual_dtype is not None else (0,), dtype=residual_dtype or x_dtype,
                       device=h.device)
    dw = torch.empty((programs, ncols) if weight is not None else (0,), dtype=torch.float32, device=h.device)
    db = torch.empty((programs, ncols) if has_bias else (0,), dtype=torch.float32, device=h.device)
    ng, aligned, warps = _norm_config(ncols, offset, h.element_size(), "bwd")
    _launch(_dropout_add_norm_bwd_kernel, h)[(programs,)](
        h, dy, weight if weight is not None else h, rowscale if rowscale is not None else h, mean, rstd,
        dres_out if dres_out is not None else h, dx, dres, dw, db, state if state is not None else h,
        rows, ncols, rows_per_program, *_seed_args(seed, state), offset, threshold, scale,
        NG=ng, ROWS=TUNING["norm_bwd_rows"], ALIGNED=aligned, IS_RMS=is_rms, DROPOUT=dropout,
        HAS_ROWSCALE=rowscale is not None, HAS_WEIGHT=weight is not None, HAS_BIAS=has_bias,
        HAS_DRES_OUT=dres_out is not None,
        STORE_DRES=residual_dtype is not None, FROM_STATE=state is not None, num_warps=warps,
    )
    return dx, dres, dw.sum(0) if weight is not None else dw, db.sum(0) if has_bias else db


# Registered ops: torch.compile and torch.export see these; eager calls launch the kernels directly.
torch.library.triton_op("dropkit::masked_affine", _masked_affine_impl, mutates_args=())
torch.library.triton_op("dropkit::masked_affine_", _masked_affine_inplace_impl, mutates_args=("out",))
torch.library.triton_op("dropkit::dropout_add_norm_fwd", _dropout_add_norm_fwd_impl, mutates_args=())
torch.library.triton_op("dropkit::dropout_add_norm_bwd", _dropout_add_norm_bwd_impl, mutates_args=())


def dropout_add_norm_fwd(x, residual, weight, bias, rowscale, state, seed, offset, threshold, scale, eps, is_rms,
                         dropout, out_dtype, residual_dtype):
    """Launch the fused forward on 2-D contiguous tensors; return ``(y, h, mean, rstd)``."""
    fn = torch.ops.dropkit.dropout_add_norm_fwd if _traced(x) else _dropout_add_norm_fwd_impl
    return fn(
        x, residual, weight, bias, rowscale, state, _signed(seed), offset, threshold, scale, eps, is_rms, dropout,
        out_dtype, residual_dtype,
    )


def dropout_add_norm_bwd(dy, h, weight, has_bias, rowscale, mean, rstd, dres_out, state, seed, offset, threshold,
                         scale, is_rms, dropout, x_dtype, residual_dtype):
    """Launch the fused backward; return ``(dx, dresidual, dweight, dbias)`` (empty where not asked for)."""
    fn = torch.ops.dropkit.dropout_add_norm_bwd if _traced(dy) else _dropout_add_norm_bwd_impl
    return fn(
        dy, h, weight, has_bias, rowscale, mean, rstd, dres_out, state, _signed(seed), offset, threshold, scale,
        is_rms, dropout, x_dtype, residual_dtype,
    )

