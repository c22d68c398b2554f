"""Sweep the Triton kernels' launch settings (``dropkit.kernels.triton.TUNING``) on a GPU.

Prints, per setting, the kernel time as a percentage of a plain copy's bandwidth measured in the same
rounds (CUDA-graph timed, medians of per-round ratios, as in ``bench_gpu.py``). The defaults in
``TUNING`` were picked from this sweep on an H100; run it on another GPU to check them::

    python benchmarks/tune_gpu.py
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_gpu import Case  # noqa: E402

from dropkit import rng  # noqa: E402
from dropkit.kernels import triton as tk  # noqa: E402


def _pct(case: Case, name: str, tensors: int) -> float:
    """Bandwidth of ``name`` (moving ``tensors`` tensors) as % of the copy's (moving 2)."""
    return 100 * case.ratio("copy", name) * tensors / 2


def sweep_elementwise() -> None:
    thr = rng.keep_threshold(0.5)
    for dtype, numel in itertools.product((torch.float32, torch.bfloat16), (1 << 20, 1 << 24, 1 << 26)):
        x = torch.randn(numel, device="cuda", dtype=dtype)
        y = torch.empty_like(x)
        fns = {"copy": lambda x=x, y=y: y.copy_(x)}
        for groups, warps in itertools.product((1, 2, 4, 8), (4, 8)):

            def fn(groups=groups, warps=warps, x=x):
                tk.TUNING.update(max_groups=groups, elementwise_warps=warps, min_programs_per_sm=0)
                return tk.masked_affine(x, 1, 0, thr, 2.0)

            fns[f"g{groups}w{warps}"] = fn
        iters = max(3, min(200, int(2e9 // (numel * x.element_size() * 2))))
        case = Case(fns, iters, graphs=True).run(5)
        best = sorted(((_pct(case, n, 2), n) for n in fns if n != "copy"), reverse=True)
        print(f"elementwise {dtype} 2^{numel.bit_length() - 1}: " + ", ".join(f"{n} {v:.0f}%" for v, n in best[:8]))


def sweep_norm() -> None:
    for dtype, (rows, cols) in itertools.product((torch.bfloat16, torch.float32), ((16384, 4096), (16384, 1024))):
        _sweep_norm_case(dtype, rows, cols)


def _sweep_norm_case(dtype: torch.dtype, rows: int, cols: int) -> None:
    thr = rng.keep_threshold(0.1)
    x = torch.randn(rows, cols, device="cuda", dtype=dtype)
    r, dy, dh = torch.randn_like(x), torch.randn_like(x), torch.randn_like(x)
    w, b = torch.ones(cols, device="cuda", dtype=dtype), torch.zeros(cols, device="cuda", dtype=dtype)
    out = torch.empty_like(x)
    _, h, mean, rstd = tk.dropout_add_norm_fwd(x, r, w, b, None, None, 1, 0, thr, 1 / 0.9, 1e-5, False, True,
                                               dtype, dtype)
    fns = {"copy": lambda: out.copy_(x)}
    for warps in (4, 8, 16):

        def fwd(warps=warps):
            tk.TUNING["norm_fwd_bytes_per_warp"] = cols * x.element_size() // warps
            return tk.dropout_add_norm_fwd(x, r, w, b, None, None, 1, 0, thr, 1 / 0.9, 1e-5, False, True, dtype,
                                           dtype)

        fns[f"fwd w{warps}"] = fwd
    for warps, rows_in_flight, per_sm in itertools.product((4, 8), (1, 2, 4), (2, 8)):

        def bwd(warps=warps, rows_in_flight=rows_in_flight, per_sm=per_sm):
            tk.TUNING.update(norm_bwd_warps=warps, norm_bwd_rows=rows_in_flight)
            tk.TUNING["norm_bwd_programs_per_sm"] = dict.fromkeys((1, 2, 4, 8, 16), per_sm)
            return tk.dropout_add_norm_bwd(dy, h, w, True, None, mean, rstd, dh, None, 1, 0, thr, 1 / 0.9, False,
                                           True, dtype, dtype)

        fns[f"bwd w{warps} rows{rows_in_flight} s{per_sm}"] = bwd
    case = Case(fns, 20, graphs=True).run(3)
    fwd_best = sorted(((_pct(case, n, 4), n) for n in fns if n.startswith("fwd")), reverse=True)
    bwd_best = sorted(((_pct(case, n, 5), n) for n in fns if n.startswith("bwd")), reverse=True)
    print(f"norm {dtype} {rows}x{cols} fwd: " + ", ".join(f"{n} {v:.0f}%" for v, n in fwd_best))
    print(f"norm {dtype} {rows}x{cols} bwd: " + ", ".join(f"{n} {v:.0f}%" for v, n in bwd_best[:8]))


if __name__ == "__main__":
    if "--norm" not in sys.argv:
        sweep_elementwise()
    sweep_norm()
