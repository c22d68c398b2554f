r"""Compiled CPU kernels (numba): Philox4x32-10 masks fused with the masked affine map, no mask stored.

Each kernel computes, for a contiguous input viewed as ``(M, L)`` (``M`` mask elements, each broadcast
over ``L`` consecutive elements; element-wise when ``L = 1``), with :math:`w(s, o + m)` the Philox word of
mask element ``m`` in the grouped layout of :mod:`dropkit.rng` (four words per counter),

.. math:: y_{m,l} = \begin{cases} x_{m,l}\cdot \text{scale} + \text{bias} & \text{fold}(w(s, o + m)) \ge t \\
          \text{fill} & \text{otherwise} \end{cases}

with the exact Philox word, fold and integer threshold of :mod:`dropkit.rng`, so the masks are
bit-identical to the torch-ops reference. bfloat16 is handled on its raw bits (widen to float32,
compute, round to nearest even), float32 and float64 natively. The same kernel serves forward and
backward: the gradient of a masked affine map is the masked linear map of the incoming gradient.
Internal: no stability promise. Import is lazy (numba loads on first use).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types, uint16, uint32, uint64
from numba.extending import intrinsic, overload

from .. import rng

__all__ = ["DTYPES", "advise_huge_pages", "keep_mask", "masked_affine", "masked_affine_repeat"]

#: dtypes with a fused kernel; other dtypes use :func:`keep_mask` plus torch ops.
DTYPES = (torch.float32, torch.float64, torch.bfloat16)

_LOCK = threading.Lock()
_KA, _KB = uint32(rng.PHILOX_KEY_A), uint32(rng.PHILOX_KEY_B)
_RA, _RB = uint64(rng.PHILOX_ROUND_A), uint64(rng.PHILOX_ROUND_B)
_SIGN = uint32(0x80000000)


@njit(inline="always")
def _round(c0, c1, c2, c3, k0, k1):  # pragma: no cover - compiled
    """One Philox4x32 round (Random123's philox4x32round)."""
    p0 = _RA * uint64(c0)
    p1 = _RB * uint64(c2)
    return (
        uint32(uint32(p1 >> uint64(32)) ^ c1 ^ k0),
        uint32(p1),
        uint32(uint32(p0 >> uint64(32)) ^ c3 ^ k1),
        uint32(p0),
    )


@njit(inline="always")
def _philox4(counter, k0, k1):  # pragma: no cover - compiled
    """Philox4x32-10 on counter ``(lo(counter), hi(counter), 0, 0)`` with key ``(k0, k1)``: the four output words.

    The ten rounds are written out: LLVM vectorises the unrolled form across lanes, not the loop.
    """
    c0, c1, c2, c3 = uint32(counter & uint64(0xFFFFFFFF)), uint32(counter >> uint64(32)), uint32(0), uint32(0)
    ka, kb = _KA, _KB
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, k0, k1)
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, uint32(k0 + ka), uint32(k1 + kb))
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, uint32(k0 + uint32(2) * ka), uint32(k1 + uint32(2) * kb))
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, uint32(k0 + uint32(3) * ka), uint32(k1 + uint32(3) * kb))
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, uint32(k0 + uint32(4) * ka), uint32(k1 + uint32(4) * kb))
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, uint32(k0 + uint32(5) * ka), uint32(k1 + uint32(5) * kb))
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, uint32(k0 + uint32(6) * ka), uint32(k1 + uint32(6) * kb))
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, uint32(k0 + uint32(7) * ka), uint32(k1 + uint32(7) * kb))
    c0, c1, c2, c3 = _round(c0, c1, c2, c3, uint32(k0 + uint32(8) * ka), uint32(k1 + uint32(8) * kb))
    return _round(c0, c1, c2, c3, uint32(k0 + uint32(9) * ka), uint32(k1 + uint32(9) * kb))


@njit(inline="always")
def _fold(w):  # pragma: no cover - compiled
    """Triton's int32 fold ``x if x >= 0 else ~x``, on uint32 bits: a value in [0, 2^31)."""
    return w if w < _SIGN else uint32(~w)


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


@overload(_load)
def _load_overload(x, i):  # pragma: no cover - compiled
    """Read element ``i`` as a number: bfloat16 (held as uint16 bits) widens to float32."""
    if x.dtype == types.uint16:
        return lambda x, i: _bf16_to_f32(x[i])
    return lambda x, i: x[i]


@overload(_store)
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
def _affine(x, out, i, word, threshold, scale, bias, fill):  # pragma: no cover - compiled
    """``out[i] = x[i] * scale + bias`` if the word keeps element ``i``, else ``fill`` (a select: no branch)."""
    y = _load(x, i) * scale
    if bias != 0:
        y = y + bias
    _store(out, i, y if _fold(word) >= threshold else fill)


@njit(inline="always")
def _elementwise_span(x, out, g0, g1, k0, k1, offset, threshold, scale, bias, fill):  # pragma: no cover
    """Elements of groups ``g0 .. g1 - 1`` (global index ``m = offset + i``): ``out[i] = affine or fill``."""
    n = x.size
    for g in range(g0, g1):
        base = g * _GROUP - offset  # local index of the group's first slot (may be negative at the start)
        if base >= 0 and base + _GROUP <= n:  # a whole group: four unit-stride streams, vectorised
            start = uint64(base)  # unsigned indices: no negative-index wrap-around checks in the loop
            for lane in range(_LANES):
                w0, w1, w2, w3 = _philox4(uint64(g * _LANES + lane), k0, k1)
                i = start + uint64(lane)
                _affine(x, out, i, w0, threshold, scale, bias, fill)
                _affine(x, out, i + uint64(_LANES), w1, threshold, scale, bias, fill)
                _affine(x, out, i + uint64(2 * _LANES), w2, threshold, scale, bias, fill)
                _affine(x, out, i + uint64(3 * _LANES), w3, threshold, scale, bias, fill)
        else:  # a group cut by the ends of the tensor
            for lane in range(_LANES):
                words = _philox4(uint64(g * _LANES + lane), k0, k1)
                for j in range(4):
                    i = base + j * _LANES + lane
                    if 0 <= i < n:
                        _affine(x, out, i, words[j], threshold, scale, bias, fill)


@njit(inline="always")
def _mask_span(out, g0, g1, k0, k1, offset, threshold):  # pragma: no cover
    """Keep decisions of groups ``g0 .. g1 - 1`` into the bool array ``out``."""
    n = out.size
    for g in range(g0, g1):
        base = g * _GROUP - offset
        for lane in range(_LANES):
            words = _philox4(uint64(g * _LANES + lane), k0, k1)
            for j in range(4):
                i = base + j * _LANES + lane
                if 0 <= i < n:
                    out[i] = _fold(words[j]) >= threshold


@njit(inline="always")
def _rows_span(x, out, keep, m0, m1, scale, bias, fill, row):  # pragma: no cover
    """Rows ``m0 .. m1 - 1`` of ``x`` viewed as ``(M, row)``: row ``m`` kept iff ``keep[m]``.

    Unsigned indices (no negative-index wrap-around checks) and the ``bias`` test hoisted out of the inner
    loops: each row is then one unit-stride loop that LLVM vectorises, as fast as a copy.
    """
    r = uint64(row)
    for m in range(m0, m1):
        base = uint64(m) * r
        if keep[m]:
            if bias == 0:
                for j in range(r):
                    _store(out, base + j, _load(x, base + j) * scale)
            else:
                for j in range(r):
                    _store(out, base + j, _load(x, base + j) * scale + bias)
        else:
            for j in range(r):
                _store(out, base + j, fill)


def _groups(offset: int, n: int) -> tuple[int, int]:
    """Groups that global indices ``offset .. offset + n - 1`` touch: ``[first, last + 1)``."""
    return offset // _GROUP, (offset + n - 1) // _GROUP + 1


_LANES = rng.LANES
_GROUP = rng.GROUP
# Parallel kernels give each thread whole groups; their serial twins (see _launch) run the same span in one go.
# Rows kernels split rows the same way.
_GROUPS_PER_TASK = 4


@njit(parallel=True, cache=True)
def _elementwise_parallel(x, out, g0, g1, k0, k1, offset, threshold, scale, bias, fill):  # pragma: no cover
    tasks = (g1 - g0 + _GROUPS_PER_TASK - 1) // _GROUPS_PER_TASK
    for t in prange(tasks):
        start = g0 + t * _GROUPS_PER_TASK
        _elementwise_span(
            x, out, start, min(g1, start + _GROUPS_PER_TASK), k0, k1, offset, threshold, scale, bias, fill
        )


@njit(cache=True)
def _elementwise_serial(x, out, g0, g1, k0, k1, offset, threshold, scale, bias, fill):  # pragma: no cover
    _elementwise_span(x, out, g0, g1, k0, k1, offset, threshold, scale, bias, fill)


@njit(parallel=True, cache=True)
def _mask_parallel(out, g0, g1, k0, k1, offset, threshold):  # pragma: no cover
    tasks = (g1 - g0 + _GROUPS_PER_TASK - 1) // _GROUPS_PER_TASK
    for t in prange(tasks):
        start = g0 + t * _GROUPS_PER_TASK
        _mask_span(out, start, min(g1, start + _GROUPS_PER_TASK), k0, k1, offset, threshold)


@njit(cache=True)
def _mask_serial(out, g0, g1, k0, k1, offset, threshold):  # pragma: no cover
    _mask_span(out, g0, g1, k0, k1, offset, threshold)


@njit(inline="always")
def _repeat_task(x, out, task, per_copy, k0, k1, offset, threshold, scale, bias, fill):  # pragma: no cover
    """Task ``task`` of the repeat kernel: a run of groups of copy ``task // per_copy`` (global offset shifted)."""
    n = x.size
    copy = task // per_copy
    base = offset + copy * n  # global index of this copy's first element
    g0 = base // _GROUP + (task % per_copy) * _GROUPS_PER_TASK
    g1 = min((base + n - 1) // _GROUP + 1, g0 + _GROUPS_PER_TASK)
    if g0 < g1:
        _elementwise_span(x, out[copy * n : (copy + 1) * n], g0, g1, k0, k1, base, threshold, scale, bias, fill)


@njit(parallel=True, cache=True)
def _repeat_parallel(x, out, copies, k0, k1, offset, threshold, scale, bias, fill):  # pragma: no cover
    per_copy = (x.size + _GROUP - 1) // _GROUP // _GROUPS_PER_TASK + 2  # tasks per copy, spare ones for misalignment
    for task in prange(copies * per_copy):
        _repeat_task(x, out, task, per_copy, k0, k1, offset, threshold, scale, bias, fill)


@njit(cache=True)
def _repeat_serial(x, out, copies, k0, k1, offset, threshold, scale, bias, fill):  # pragma: no cover
    per_copy = (x.size + _GROUP - 1) // _GROUP // _GROUPS_PER_TASK + 2
    for task in range(copies * per_copy):
        _repeat_task(x, out, task, per_copy, k0, k1, offset, threshold, scale, bias, fill)


#: Below this many mask elements the fused rows kernels draw the mask on one thread before the parallel apply:
#: one parallel region (one wake-up of the pool) instead of two.
_SERIAL_MASK_BELOW = 1 << 16


@njit(parallel=True, cache=True)
def _rows_parallel(x, out, g0, g1, k0, k1, offset, threshold, scale, bias, fill, row):  # pragma: no cover
    m = x.size // row
    keep = np.empty(m, dtype=np.bool_)
    if m < _SERIAL_MASK_BELOW:
        _mask_span(keep, g0, g1, k0, k1, offset, threshold)
    else:
        tasks = (g1 - g0 + _GROUPS_PER_TASK - 1) // _GROUPS_PER_TASK
        for t in prange(tasks):
            start = g0 + t * _GROUPS_PER_TASK
            _mask_span(keep, start, min(g1, start + _GROUPS_PER_TASK), k0, k1, offset, threshold)
    step = max(1, (_GROUPS_PER_TASK * _GROUP) // row)
    for t in prange((m + step - 1) // step):
        _rows_span(x, out, keep, t * step, min(m, (t + 1) * step), scale, bias, fill, row)


@njit(cache=True)
def _rows_serial(x, out, g0, g1, k0, k1, offset, threshold, scale, bias, fill, row):  # pragma: no cover
    keep = np.empty(x.size // row, dtype=np.bool_)
    _mask_span(keep, g0, g1, k0, k1, offset, threshold)
    _rows_span(x, out, keep, 0, keep.size, scale, bias, fill, row)


_forked = False


def _mark_forked() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_mark_forked)

#: Below this many elements the parallel kernels run on the calling thread alone: waking the pool costs a few
#: microseconds on an idle machine and milliseconds when other processes keep the cores busy.
_ONE_THREAD_BELOW = 1 << 18


def _launch(parallel, serial, numel: int, *args) -> None:
    """Run a kernel: torch's threads for large inputs, one below :data:`_ONE_THREAD_BELOW`, serial in forks.

    Large inputs run on ``torch.get_num_threads()`` threads (at most numba's own setting), so
    ``torch.set_num_threads`` limits dropkit's kernels as it limits torch's ops. The one-thread launch still
    runs the parallel kernel, which LLVM vectorises (numba's gufuncs tell it that ``out`` and ``x`` do not
    alias; the plain serial twins it cannot vectorise). Forked children (DataLoader workers) run the serial
    twins: GNU OpenMP, numba's usual threading layer, is not fork-safe.
    """
    if _forked:
        serial(*args)
        return
    threads = _get_threads()
    wanted = 1 if numel < _ONE_THREAD_BELOW else min(torch.get_num_threads(), threads)
    if wanted == threads:
        parallel(*args)
        return
    _set_threads(wanted)
    try:
        parallel(*args)
    finally:
        _set_threads(threads)


def _key(seed: int) -> tuple[np.uint32, np.uint32]:
    low, high = rng._split_seed(seed)
    return np.uint32(low), np.uint32(high)


def keep_mask(numel: int, seed: int, offset: int, threshold: int) -> torch.Tensor:
    """Return the bool keep mask of global indices ``offset .. offset + numel - 1``, as :mod:`dropkit.rng` says."""
    out = torch.empty(numel, dtype=torch.bool)
    if numel:
        args = (out.numpy(), *_groups(offset, numel), *_key(seed), np.int64(offset), np.uint32(threshold))
        with _LOCK:
            _launch(_mask_parallel, _mask_serial, numel, *args)
    return out


def _arrays(x: torch.Tensor, out: torch.Tensor) -> tuple[np.ndarray, np.ndarray, type]:
    """Flat NumPy views of contiguous CPU ``x`` and ``out``, and the float type the kernels compute in.

    numba has no bfloat16: its tensors pass as their uint16 bits, widened and rounded inside the kernels.
    """
    if x.dtype == torch.bfloat16:
        xs, os_ = (t.detach().view(torch.int16).numpy().view(np.uint16) for t in (x, out))
        return xs.reshape(-1), os_.reshape(-1), np.float32
    real = np.float32 if x.dtype == torch.float32 else np.float64
    return x.detach().numpy().reshape(-1), out.detach().numpy().reshape(-1), real


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

    ``x`` is viewed as ``(numel // row, row)``; mask element ``m`` has global index ``offset + m``.
    """
    if x.numel() == 0:
        return
    xs, os_, real = _arrays(x, out)
    affine = (real(scale), real(bias), real(fill))
    if row == 1:
        args = (xs, os_, *_groups(offset, x.numel()), *_key(seed), np.int64(offset), np.uint32(threshold), *affine)
        with _LOCK:
            _launch(_elementwise_parallel, _elementwise_serial, x.numel(), *args)
        return
    m = x.numel() // row  # mask and apply fused: one compiled call, one parallel region for small masks
    args = (xs, os_, *_groups(offset, m), *_key(seed), np.int64(offset), np.uint32(threshold), *affine, np.int64(row))
    with _LOCK:
        _launch(_rows_parallel, _rows_serial, x.numel(), *args)


#: Outputs of at least this many bytes get huge pages when fresh (see :func:`advise_huge_pages`).
HUGE_PAGES_FROM = 1 << 22
_HUGE_PAGE = 1 << 21
_MADV_HUGEPAGE = 14


def _libc_calls():
    """``madvise`` and ``mincore`` from libc, or ``(None, None)`` off Linux."""
    if not sys.platform.startswith("linux"):
        return None, None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise, mincore = libc.madvise, libc.mincore
    except (OSError, AttributeError):  # pragma: no cover - no libc symbol
        return None, None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    madvise.restype = mincore.restype = ctypes.c_int
    return madvise, mincore


_MADVISE, _MINCORE = _libc_calls()
_PAGE = 4096


def _resident(address: int) -> bool:
    """Whether the 4 KB page at ``address`` (page-aligned) is in memory: written before, not a fresh mapping."""
    vec = ctypes.create_string_buffer(1)
    return _MINCORE(address, _PAGE, vec) == 0 and vec.raw[0] & 1 == 1


def advise_huge_pages(t: torch.Tensor) -> torch.Tensor:
    """Ask Linux to back the 2 MB-aligned span of a new, large CPU tensor with transparent huge pages; return it.

    torch's CPU allocator maps large buffers afresh (glibc serves anything above 32 MB with ``mmap``), so the
    first write faults in every 4 KB page: writing 200 MB that way costs about 4x the write itself. With
    ``madvise(MADV_HUGEPAGE)`` before that first write (what NumPy does for its large arrays, and torch with
    ``THP_MEM_ALLOC_ENABLE=1``) the kernel faults 2 MB pages instead. Memory the allocator reuses (the span's
    last page already in memory, ``mincore``: a heap trimmed from the top loses its last pages first) is left
    alone: there the advice would only split the heap's mapping, which costs about as much as writing a few MB.
    A no-op below :data:`HUGE_PAGES_FROM` bytes, off Linux, or where transparent huge pages are disabled; the
    contents are unaffected.
    """
    nbytes = t.numel() * t.element_size()
    if _MADVISE is None or nbytes < HUGE_PAGES_FROM or t.device.type != "cpu":
        return t
    ptr = t.data_ptr()
    start, end = -(-ptr // _HUGE_PAGE) * _HUGE_PAGE, (ptr + nbytes) // _HUGE_PAGE * _HUGE_PAGE
    if end > start and not _resident(end - _PAGE):
        _MADVISE(start, end - start, _MADV_HUGEPAGE)  # advice only: failures (EINVAL on old kernels) are ignored
    return t


def masked_affine_repeat(
    x: torch.Tensor, out: torch.Tensor, seed: int, offset: int, threshold: int, scale: float, bias: float, fill: float
) -> None:
    """Write ``copies = out.numel() // x.numel()`` masked copies of contiguous ``x`` into contiguous ``out``.

    Element-wise masks; element ``i`` of copy ``c`` has global index ``offset + c * x.numel() + i``: exactly
    :func:`masked_affine` of ``x`` repeated ``copies`` times along a new leading dimension, without building
    the repeat, in one parallel launch.
    """
    n = x.numel()
    if n == 0 or out.numel() == 0:
        return
    xs, os_, real = _arrays(x, out)
    args = (xs, os_, np.int64(out.numel() // n), *_key(seed), np.int64(offset), np.uint32(threshold),
            real(scale), real(bias), real(fill))  # fmt: skip
    with _LOCK:
        _launch(_repeat_parallel, _repeat_serial, out.numel(), *args)


def _start_quiet_pool() -> None:
    """Start numba's thread pool with idle threads that sleep instead of spinning.

    torch and numba each load their own OpenMP runtime; by default idle OpenMP threads busy-wait, so on a
    small machine numba's idle threads steal the cores from torch's next operation (and the reverse). numba's
    runtime reads ``OMP_WAIT_POLICY`` once, when its pool starts: set it to ``PASSIVE`` for that moment only
    (torch's runtime, already running, keeps its own setting; a value the user set is left alone).
    """
    ours = "OMP_WAIT_POLICY" not in os.environ
    if ours:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:  # the first parallel launch starts the pool
        _mask_parallel(np.empty(1, dtype=np.bool_), 0, 1, np.uint32(0), np.uint32(0), np.int64(0), np.uint32(0))
    finally:
        if ours:
            del os.environ["OMP_WAIT_POLICY"]


_start_quiet_pool()


def _thread_setters():
    """Return numba's raw thread-count getter and setter, now that its pool runs.

    The public ones re-check the pool under a process lock on every call: microseconds that count on small
    inputs. Falls back to the public ones if numba's internals change.
    """
    from numba.np.ufunc import parallel

    get, set_ = getattr(parallel, "_get_num_threads", None), getattr(parallel, "_set_num_threads", None)
    if callable(get) and callable(set_) and get() == numba.get_num_threads():
        return get, set_
    return numba.get_num_threads, numba.set_num_threads


_get_threads, _set_threads = _thread_setters()


def threads() -> int:
    """Number of threads the kernels run on (numba's setting)."""
    return int(numba.get_num_threads())
