"""The compiled CPU kernels against the torch-ops reference: identical masks and values, odd shapes, offsets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dropkit import kernels
from dropkit.kernels import MaskSpec, cpu
from dropkit.kernels.reference import keep_mask_ref, masked_affine_ref

# odd sizes: primes and powers of two plus or minus one, to hit every loop tail
SIZES = [1, 2, 3, 7, 31, 127, 255, 257, 1009, 4095, 4097, 65537]
SPECS = [
    pytest.param(MaskSpec(seed=0, offset=0, threshold=2**30 + 65, scale=2.0), id="dropout-p0.5"),
    pytest.param(
        MaskSpec(seed=2**64 - 1, offset=1024 * 2**32 - 700, threshold=123456789, scale=1.06), id="counter-2^32"
    ),
    pytest.param(MaskSpec(seed=77, offset=5, threshold=2**31 - 5, scale=3.5, bias=0.25, fill=-1.5), id="affine"),
    pytest.param(MaskSpec(seed=3, offset=0, threshold=0, scale=1.0), id="keep-all"),
    pytest.param(MaskSpec(seed=3, offset=0, threshold=2**31, scale=0.0), id="keep-none"),
]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("numel", SIZES)
def test_keep_mask_numba_equals_reference(spec, numel):
    expected = keep_mask_ref(numel, spec.seed, spec.offset, spec.threshold)
    assert torch.equal(cpu.keep_mask(numel, spec.seed, spec.offset, spec.threshold), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("shape", [(4097,), (31, 7), (5, 3, 17), (2, 3, 1, 1)])
@pytest.mark.parametrize("mask_dims", [-1, 1, 2])
def test_fused_kernel_equals_reference(dtype, spec, shape, mask_dims):
    spec = MaskSpec(spec.seed, spec.offset, spec.threshold, spec.scale, spec.bias, spec.fill, mask_dims)
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    x.view(-1)[:3] = torch.tensor([math.nan, math.inf, -math.inf], dtype=dtype)
    mask_shape = spec.mask_shape(x.shape)
    keep = keep_mask_ref(math.prod(mask_shape), spec.seed, spec.offset, spec.threshold).reshape(mask_shape)
    expected = masked_affine_ref(x, keep, spec.scale, spec.bias, spec.fill)
    with kernels.use_backend("numba"):
        got = kernels.apply(x, spec)
        inplace = x.clone()
        assert kernels.apply(inplace, spec, out=inplace) is inplace
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(inplace, expected, rtol=0, atol=0, equal_nan=True)


def test_bfloat16_rounding_is_nearest_even():
    # values chosen so x * scale lands exactly between two bfloat16 numbers
    x = torch.tensor([1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8)], dtype=torch.float32).to(torch.bfloat16)
    spec = MaskSpec(seed=0, offset=0, threshold=0, scale=1.0 + 2**-9)
    with kernels.use_backend("numba"):
        got = kernels.apply(x, spec)
    expected = (x.float() * (1.0 + 2**-9)).to(torch.bfloat16)
    assert torch.equal(got, expected)


def test_backend_selection(monkeypatch):
    monkeypatch.setenv("DROPKIT_CPU_BACKEND", "reference")
    assert kernels.backend() == "reference"
    monkeypatch.setenv("DROPKIT_CPU_BACKEND", "numba")
    assert kernels.backend() == "numba"
    with kernels.use_backend("reference"):
        assert kernels.backend() == "reference"
    monkeypatch.setenv("DROPKIT_CPU_BACKEND", "fast")
    message = "DROPKIT_CPU_BACKEND must be one of auto, numba, reference, triton, but got 'fast'"
    with pytest.raises(ValueError, match=message):
        kernels.backend()
    with pytest.raises(ValueError, match="use_backend: name must be one of"):
        with kernels.use_backend("gpu"):
            pass


def test_fp16_and_complex_use_the_mask_route():
    x16 = torch.randn(1001, dtype=torch.float16)
    spec = MaskSpec(seed=5, offset=0, threshold=2**30, scale=2.0)
    with kernels.use_backend("numba"):
        got = kernels.apply(x16, spec)
    with kernels.use_backend("reference"):
        assert torch.equal(kernels.apply(x16, spec), got)
    xc = torch.randn(64, dtype=torch.complex64)
    y = kernels.apply(xc, spec)
    assert y.dtype == torch.complex64 and bool(((y == 0) | (y == xc * 2)).all())


def test_concurrent_calls_from_threads_are_safe():
    from concurrent.futures import ThreadPoolExecutor

    x = torch.randn(1 << 16)
    spec = MaskSpec(seed=1, offset=0, threshold=2**30, scale=2.0)
    expected = kernels.apply(x, spec)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: kernels.apply(x, spec), range(16)))
    assert all(torch.equal(r, expected) for r in results)


def _dropout_in_child(x: np.ndarray) -> tuple[np.ndarray, bool]:
    from dropkit import functional as F

    # numpy in and out: torch's tensor pickling shares memory through a file-descriptor server, which a
    # pool worker forked from a multi-threaded parent can deadlock on
    return F.dropout(torch.from_numpy(x), 0.5, seed=3).numpy(), cpu._forked


def test_forked_child_runs_the_serial_kernels_with_the_same_masks():
    """DataLoader-style fork after the parent used the thread pool: the child must not abort (GNU OpenMP)."""
    import multiprocessing

    from dropkit import functional as F

    x = torch.randn(1 << 19)  # large enough for the multi-threaded kernel in the parent
    with kernels.use_backend("numba"):
        expected = F.dropout(x, 0.5, seed=3)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got, forked = pool.apply_async(_dropout_in_child, (x.numpy(),)).get(timeout=120)
    assert forked and not cpu._forked
    assert torch.equal(torch.from_numpy(got), expected)


# ---- channel (rows) kernel: mask fused with the broadcast apply -------------------------------------------------

ROW_SHAPES = [
    pytest.param((3, 5, 7, 9), 2, id="nchw-small"),  # one thread, mask drawn serially
    pytest.param((64, 32, 28, 28), 2, id="nchw-mc-cnn"),  # all threads (>= 2^18 elements)
    pytest.param((40000, 3, 2), 2, id="mask-2^17"),  # mask >= _SERIAL_MASK_BELOW: drawn in its own parallel loop
    pytest.param((5, 3, 1), 2, id="row-of-one"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(("shape", "mask_dims"), ROW_SHAPES)
@pytest.mark.parametrize("spec", SPECS[:3])
def test_rows_kernel_equals_reference(dtype, shape, mask_dims, spec):
    spec = MaskSpec(spec.seed, spec.offset, spec.threshold, spec.scale, spec.bias, spec.fill, mask_dims)
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    x.view(-1)[:3] = torch.tensor([math.nan, math.inf, -math.inf], dtype=dtype)  # dropped: exactly the fill
    mask_shape = spec.mask_shape(x.shape)
    keep = keep_mask_ref(math.prod(mask_shape), spec.seed, spec.offset, spec.threshold).reshape(mask_shape)
    expected = masked_affine_ref(x, keep, spec.scale, spec.bias, spec.fill)
    threads = cpu.numba.get_num_threads()
    with kernels.use_backend("numba"):
        got = kernels.apply(x, spec)
    assert cpu.numba.get_num_threads() == threads  # the one-thread launch restores the thread count
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("bias", [0.0, 0.5])
def test_rows_serial_twin_equals_parallel(monkeypatch, bias):
    """The fork-safe serial kernel (DataLoader workers) writes what the parallel one writes."""
    x = torch.randn(6, 40, 33)
    args = (11, 3, 2**30, 1.5, bias, -0.25, 33)
    parallel = torch.empty_like(x)
    cpu.masked_affine(x, parallel, *args)
    monkeypatch.setattr(cpu, "_forked", True)
    serial = torch.empty_like(x)
    cpu.masked_affine(x, serial, *args)
    assert torch.equal(serial, parallel)
    kept = (parallel.flatten(0, 1) != -0.25).all(-1)
    assert 0 < int(kept.sum()) < kept.numel()  # both kinds of rows occur


def test_rows_kernel_in_place_and_negative_zero():
    # bias 0: kept rows are x * scale exactly (no "+ 0.0", which would turn -0.0 into +0.0)
    x = torch.full((4, 8, 5), -0.0)
    spec = MaskSpec(seed=2, offset=0, threshold=2**30, scale=2.0, mask_dims=2)
    with kernels.use_backend("numba"):
        y = kernels.apply(x.clone(), spec)
        z = x.clone()
        assert kernels.apply(z, spec, out=z) is z
    kept = keep_mask_ref(32, 2, 0, 2**30).reshape(4, 8)
    assert bool(torch.signbit(y[kept]).all()) and not bool(torch.signbit(y[~kept]).any())
    assert torch.equal(z, y)


def test_apply_fast_path_dtypes_match_the_kernels():
    assert kernels._NUMBA_DTYPES == cpu.DTYPES


def _vm_flags(address: int) -> list[str]:
    """VmFlags of the mapping of this process that holds ``address`` (/proc/self/smaps)."""
    lines = open("/proc/self/smaps").read().splitlines()
    inside = False
    for line in lines:
        head = line.split()[0] if line else ""
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    return []


def test_large_outputs_are_advised_huge_pages_and_values_unchanged():
    import mmap
    import sys

    region = mmap.mmap(-1, 1 << 26)  # 64 MB, a fresh mapping (as glibc gives buffers above its mmap threshold)
    big = torch.frombuffer(region, dtype=torch.float32)
    middle = big.data_ptr() + big.numel() * 2
    if sys.platform.startswith("linux"):
        assert "hg" not in _vm_flags(middle)  # torch itself does not advise (unless THP_MEM_ALLOC_ENABLE is set)
    assert cpu.advise_huge_pages(big) is big
    if sys.platform.startswith("linux"):
        assert "hg" in _vm_flags(middle)  # MADV_HUGEPAGE recorded on the mapping
    else:
        assert cpu._MADVISE is None
    x = torch.randn(1 << 22)
    spec = MaskSpec(seed=4, offset=0, threshold=2**30, scale=2.0)
    with kernels.use_backend("numba"):
        got = kernels.apply(x, spec)
    keep = keep_mask_ref(x.numel(), 4, 0, 2**30)
    assert torch.equal(got, masked_affine_ref(x, keep, 2.0, 0.0, 0.0))
    small = torch.empty(16)
    assert cpu.advise_huge_pages(small) is small


@pytest.mark.skipif(not cpu._MADVISE, reason="madvise and mincore are Linux calls")
def test_memory_already_written_is_not_advised(monkeypatch):
    """A buffer the allocator reuses (its pages in memory) keeps its mapping: the advice would only split it."""
    import mmap

    calls = []
    monkeypatch.setattr(cpu, "_MADVISE", lambda *args: calls.append(args) or 0)
    region = mmap.mmap(-1, 1 << 26)  # a fresh anonymous mapping, whatever the allocator does: nothing resident
    fresh = torch.frombuffer(region, dtype=torch.float32)
    assert cpu.advise_huge_pages(fresh) is fresh
    assert len(calls) == 1  # fresh: advised
    fresh.fill_(1.0)  # written: every page resident, as in a buffer the allocator hands out again
    assert cpu._resident(fresh.data_ptr() + fresh.numel() * 4 - cpu._PAGE)
    assert cpu.advise_huge_pages(fresh) is fresh
    assert len(calls) == 1  # resident: left alone
    del fresh
    region.close()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(("n", "copies", "offset"), [(1000, 3, 5), (4096, 5, 123456789), (777, 1, 0), (70000, 4, 2)])
@pytest.mark.parametrize("forked", [False, True])
def test_repeat_kernel_equals_reference_of_the_repeat(monkeypatch, dtype, n, copies, offset, forked):
    monkeypatch.setattr(cpu, "_forked", forked)  # True: the fork-safe serial twin
    x = torch.randn(n, dtype=torch.float64).to(dtype)
    x[:3] = torch.tensor([math.nan, math.inf, -math.inf], dtype=dtype)
    out = torch.empty(copies, n, dtype=dtype)
    cpu.masked_affine_repeat(x, out, 77, offset, 2**30, 1.5, 0.25, -1.0)
    keep = keep_mask_ref(n * copies, 77, offset, 2**30).reshape(copies, n)
    expected = masked_affine_ref(x.expand(copies, n), keep, 1.5, 0.25, -1.0)
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)


def test_large_launches_run_on_torchs_thread_count(monkeypatch):
    """``torch.set_num_threads(n)`` limits dropkit's kernels as it limits torch's ops (multi-process jobs)."""
    used = []
    setter = cpu._set_threads
    monkeypatch.setattr(cpu, "_set_threads", lambda n: (used.append(n), setter(n)))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        kernels.apply(torch.ones(1 << 19), MaskSpec(1, 0, 1 << 31, 2.0))
    finally:
        torch.set_num_threads(before)
    if cpu._get_threads() > 1:
        assert used[0] == 1  # this large call ran on one thread, then numba's setting came back
    assert cpu._get_threads() == cpu.threads()
