"""DropPath on a residual MLP branch: the kept-subset helper against multiply-by-zero, time and memory.

What it measures: one transformer block's MLP residual ``y = x + DropPath(MLP(x))`` with tokens ``x`` of shape
``(B, N, C)`` (default ``(64, 197, 384)``, a ViT-S/16 block at batch 64) and ``MLP = Linear(C, 4C) → GELU →
Linear(4C, C)``, forward + backward (``y.backward(g)``, parameter and input gradients), at p = 0.1, 0.2, 0.4.
Contenders:

- ``multiply``: ``x + dropkit.functional.drop_path(mlp(x), p, True)`` — the branch runs on every sample and the
  dropped ones are multiplied by zero (dropkit's mask is regenerated in backward, so no mask is stored);
- ``subset``: ``dropkit.functional.drop_path_residual(x, mlp, p)`` — the branch runs on the kept samples only
  and is index-added back scaled by 1/(1-p) (same mask as ``multiply`` for the same seed: same values and
  gradients);
- ``timm``: ``x + mlp(x) * mask`` with a ``bernoulli_`` mask of shape (B, 1, 1) divided by 1 - p, timm's
  ``drop_path`` written out (the mask is a tensor that autograd keeps).

Both dropkit contenders get the same seed within a round (so the same kept set); seeds change across rounds.

Memory: on CUDA, the peak of ``torch.cuda.max_memory_allocated`` during forward + backward above the memory held
before the call. On CPU there is no allocator peak counter, so the script reports a PROXY: the bytes of the
tensors autograd saves for backward in the forward (``torch.autograd.graph.saved_tensors_hooks``, storages
counted once, parameters excluded) — the activation memory a training step holds between forward and backward,
which is what the subset trick shrinks.

How it times: every contender is warmed up, then the contenders run interleaved in rounds (each round runs
each contender once per p, in the same order); reported are the median time per contender and the MEDIAN OF
PER-ROUND RATIOS (subset/multiply, multiply/subset as the speedup, timm/multiply) and each ratio's spread.

Run::

    .venv/bin/python benchmarks/bench_drop_path.py                  # (64, 197, 384), 5 rounds (~2 min on 2 cores)
    .venv/bin/python benchmarks/bench_drop_path.py --quick          # (8, 197, 384), 3 rounds: a smoke run
    .venv/bin/python benchmarks/bench_drop_path.py --device cuda --rounds 9 --json raw.json
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import dropkit.functional as DF

RATES = (0.1, 0.2, 0.4)
CONTENDERS = ("multiply", "subset", "timm")
RATIOS = (("subset", "multiply"), ("multiply", "subset"), ("timm", "multiply"))


def mlp(c: int, hidden: int, device: str, dtype: torch.dtype) -> nn.Module:
    """The transformer MLP branch: Linear(C, hidden) → GELU → Linear(hidden, C)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, c)).to(device=device, dtype=dtype)


def contenders(branch: nn.Module, p: float) -> dict[str, Callable[[torch.Tensor, int], torch.Tensor]]:
    """Forward of each contender: ``(x, seed) -> y``."""

    def multiply(x: torch.Tensor, seed: int) -> torch.Tensor:
        return x + DF.drop_path(branch(x), p, True, seed=seed)

    def subset(x: torch.Tensor, seed: int) -> torch.Tensor:
        return DF.drop_path_residual(x, branch, p, seed=seed)

    def timm(x: torch.Tensor, seed: int) -> torch.Tensor:
        keep_prob = 1 - p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob).div_(keep_prob)
        return x + branch(x) * mask

    return {"multiply": multiply, "subset": subset, "timm": timm}


def step(fn: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, g: torch.Tensor, seed: int) -> None:
    """One forward + backward; gradients are cleared afterwards."""
    fn(x, seed).backward(g)
    x.grad = None


def saved_bytes(fn: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, seed: int, params: set[int]) -> int:
    """Bytes autograd saves for backward in one forward (unique storages, parameters excluded): the CPU proxy."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x, seed)
    del y
    return sum(seen.values())


def peak_bytes(fn: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, g: torch.Tensor, seed: int) -> int:
    """CUDA only: peak allocated bytes during forward + backward, above what was held before."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step(fn, x, g, seed)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def run(args: argparse.Namespace) -> dict[str, Any]:
    device, dtype = args.device, getattr(torch, args.dtype)
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    b, n, c = args.shape
    branch = mlp(c, args.hidden, device, dtype)
    params = {t.untyped_storage().data_ptr() for t in branch.parameters()}
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(b, n, c, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    g = torch.randn(b, n, c, generator=gen).to(device=device, dtype=dtype)
    torch.manual_seed(2)

    fns = {p: contenders(branch, p) for p in args.rates}
    for p in args.rates:  # warm-up (numba compiles on its first call)
        for fn in fns[p].values():
            for _ in range(args.warmup):
                step(fn, x, g, 0)
                branch.zero_grad(set_to_none=True)

    times = {p: {name: [] for name in CONTENDERS} for p in args.rates}
    memory = {p: {name: [] for name in CONTENDERS} for p in args.rates}
    gc_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(args.rounds):
            for p in args.rates:
                seed = 1000 * r + int(p * 100)
                for name, fn in fns[p].items():
                    sync()
                    start = time.perf_counter()
                    for _ in range(args.iters):
                        step(fn, x, g, seed)
                    sync()
                    times[p][name].append((time.perf_counter() - start) / args.iters)
                    branch.zero_grad(set_to_none=True)
                    if cuda:
                        memory[p][name].append(peak_bytes(fn, x, g, seed))
                    else:
                        memory[p][name].append(saved_bytes(fn, x, seed, params))
                    branch.zero_grad(set_to_none=True)
            print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        if gc_enabled:
            gc.enable()
    return {"times": times, "memory": memory}


def _ratio(a: list[float], b: list[float]) -> tuple[float, float]:
    values = [x / y for x, y in zip(a, b, strict=True)]
    med = statistics.median(values)
    return med, (max(values) - min(values)) / med


def report(args: argparse.Namespace, raw: dict[str, Any]) -> str:
    b, n, c = args.shape
    kind = "peak CUDA MiB (fwd+bwd)" if args.device.startswith("cuda") else "saved-for-backward MiB (CPU proxy)"
    lines = [
        f"## DropPath residual on an MLP branch: x ({b}, {n}, {c}), MLP {c}→{args.hidden}→{c} GELU, "
        f"{args.dtype}, {args.device}, {args.rounds} rounds × {args.iters} call(s), torch {torch.__version__}",
        "",
        f"| p | multiply ms | subset ms | timm ms | subset/multiply time (spread) | speedup | timm/multiply | "
        f"multiply {kind} | subset | subset/multiply memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in args.rates:
        t, m = raw["times"][p], raw["memory"][p]
        ms = {name: 1e3 * statistics.median(t[name]) for name in CONTENDERS}
        sub, spread = _ratio(t["subset"], t["multiply"])
        speed, _ = _ratio(t["multiply"], t["subset"])
        timm, _ = _ratio(t["timm"], t["multiply"])
        mem, _ = _ratio(m["subset"], m["multiply"])
        mib = {name: statistics.median(m[name]) / 2**20 for name in CONTENDERS}
        lines.append(
            f"| {p} | {ms['multiply']:.1f} | {ms['subset']:.1f} | {ms['timm']:.1f} | {sub:.3f} ({spread:.0%}) | "
            f"{speed:.2f}× | {timm:.3f} | {mib['multiply']:.1f} | {mib['subset']:.1f} | {mem:.3f} |"
        )
    lines += [
        "",
        "Ratios are medians of per-round ratios (spread = (max - min) / median over rounds); the ideal subset/multiply "
        "ratio for the branch alone is about 1 - p (the kept fraction).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 197, 384), metavar=("B", "N", "C"))
    parser.add_argument("--hidden", type=int, default=1536)
    parser.add_argument("--rates", type=float, nargs="+", default=RATES)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=1, help="calls per timed sample")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--quick", action="store_true", help="(8, 197, 384), 3 rounds: a smoke run")
    parser.add_argument("--json", help="write the raw per-round numbers here")
    parser.add_argument("--out", help="write the Markdown table here")
    args = parser.parse_args(argv)
    if args.quick:
        args.shape, args.rounds = (8, 197, 384), 3
    raw = run(args)
    text = report(args, raw)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), **{k: {str(p): v for p, v in raw[k].items()} for k in raw}}, fh, indent=1)
    return {"args": vars(args), **raw, "text": text}


if __name__ == "__main__":
    main()
