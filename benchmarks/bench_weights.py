"""DropConnect on CPU: what per-batch and per-sample masks cost against the plain layer and a per-row loop.

Cases (fp32, forward + backward of ``y.sum()``, p = 0.5; gradients cleared after each call):

1. Linear 512 → 512 at batch 64: ``nn.Linear`` (floor), ``DropConnectLinear`` per batch, per sample
   (batched matmuls over chunks of masked weight copies, regenerated in backward), the generic
   ``DropConnect`` wrapper's ``torch.func.vmap`` path, and a Python loop drawing one mask per row (the
   naive per-sample form).
2. Conv2d 16 → 32, 3×3, 16×16 maps at batch 16: ``nn.Conv2d``, per batch, per sample (one grouped
   convolution with 16·groups groups) and the per-row loop.

3. Bytes autograd keeps for backward in one forward of each Linear contender (``saved_tensors_hooks``,
   storages counted once): the per-sample layer keeps the input and the weight, the loop and the vmap wrapper
   keep :math:`N` masked weight copies.

Contenders of a case run interleaved in rounds (each round runs every contender once, in order); a sample
loops enough calls to last ``--min-sample-ms``. Reported: the median time per call of each contender and the
MEDIAN OF PER-ROUND RATIOS against the per-row loop and against the plain layer.

Run::

    .venv/bin/python benchmarks/bench_weights.py            # 7 rounds (about a minute)
    .venv/bin/python benchmarks/bench_weights.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import dropkit.functional as DF
import dropkit.nn as dnn

P = 0.5


def _sample(fn: Callable[[], None], min_s: float) -> float:
    iters, start = 0, time.perf_counter()
    while True:
        fn()
        iters += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return elapsed / iters


def interleaved(fns: dict[str, Callable[[], None]], rounds: int, min_s: float) -> dict[str, list[float]]:
    """Warm every contender up, then time them all once per round, in the same order."""
    for fn in fns.values():
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(_sample(fn, min_s))
    return times


def _generic_wrapper(width: int) -> nn.Module:
    """The generic wrapper's vmap path (a Linear inside a Sequential is not dispatched to the dedicated op)."""
    return dnn.DropConnect(nn.Sequential(nn.Linear(width, width)), P, weights="0.weight", per_sample=True)


def _fwd_bwd(layer: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    params = list(layer.parameters())

    def step() -> None:
        layer(x).sum().backward()
        for param in params:
            param.grad = None

    return step


def _loop_linear(layer: nn.Linear, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        rows = [nn.functional.linear(x[n], DF.drop_connect(layer.weight, P), layer.bias) for n in range(len(x))]
        torch.stack(rows).sum().backward()
        layer.weight.grad = layer.bias.grad = None

    return step


def _loop_conv(layer: nn.Conv2d, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        rows = [
            nn.functional.conv2d(x[n : n + 1], DF.drop_connect(layer.weight, P), layer.bias, padding=1)
            for n in range(len(x))
        ]
        torch.cat(rows).sum().backward()
        layer.weight.grad = layer.bias.grad = None

    return step


def cases(quick: bool = False) -> dict[str, dict[str, Callable[[], None]]]:
    """The contenders of each case (``quick``: small shapes, for a smoke run)."""
    torch.manual_seed(0)
    width, batch, conv_batch = (64, 8, 4) if quick else (512, 64, 16)
    lin = nn.Linear(width, width)
    x = torch.randn(batch, width)

    def twin(**kwargs) -> dnn.DropConnectLinear:
        layer = dnn.DropConnectLinear(width, width, p=P, **kwargs)
        layer.load_state_dict(lin.state_dict())
        return layer

    conv = nn.Conv2d(16, 32, 3, padding=1)
    xc = torch.randn(conv_batch, 16, 16, 16)

    def conv_twin(**kwargs) -> dnn.DropConnectConv2d:
        layer = dnn.DropConnectConv2d(16, 32, 3, padding=1, p=P, **kwargs)
        layer.load_state_dict(conv.state_dict())
        return layer

    return {
        f"linear {width}x{width}, batch {batch}": {
            "plain": _fwd_bwd(lin, x),
            "per-batch": _fwd_bwd(twin(), x),
            "per-sample": _fwd_bwd(twin(per_sample=True), x),
            "wrapper per-sample (vmap)": _fwd_bwd(_generic_wrapper(width), x),
            "per-row loop": _loop_linear(lin, x),
        },
        f"conv2d 16->32 3x3 16x16, batch {conv_batch}": {
            "plain": _fwd_bwd(conv, xc),
            "per-batch": _fwd_bwd(conv_twin(), xc),
            "per-sample": _fwd_bwd(conv_twin(per_sample=True), xc),
            "per-row loop": _loop_conv(conv, xc),
        },
    }


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes autograd saves for backward in one call of ``fn``, storages deduplicated."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def saved_linear(quick: bool) -> dict[str, int]:
    """Case 3: bytes kept for backward by each Linear contender."""
    torch.manual_seed(0)
    width, batch = (64, 8) if quick else (512, 64)
    lin = nn.Linear(width, width)
    layer = dnn.DropConnectLinear(width, width, p=P, per_sample=True)
    wrapper = _generic_wrapper(width)
    x = torch.randn(batch, width, requires_grad=True)
    return {
        "plain": saved_bytes(lambda: lin(x)),
        "per-sample": saved_bytes(lambda: layer(x)),
        "wrapper per-sample (vmap)": saved_bytes(lambda: wrapper(x)),
        "per-row loop": saved_bytes(
            lambda: torch.stack(
                [nn.functional.linear(x[n], DF.drop_connect(lin.weight, P), lin.bias) for n in range(batch)]
            )
        ),
    }


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Run every case; print and return ``{case: {contender: {ms, vs_loop, vs_plain}}}`` (and ``saved``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, 2 rounds of 2 ms samples (smoke run)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-sample-ms", type=float, default=50.0)
    args = parser.parse_args(argv)
    rounds, min_s = (2, 0.002) if args.quick else (args.rounds, args.min_sample_ms / 1e3)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {rounds} rounds, p={P}, fwd+bwd fp32")
    results: dict[str, dict[str, dict[str, float]]] = {}
    for case, fns in cases(args.quick).items():
        times = interleaved(fns, rounds, min_s)
        print(f"\n{case}\n  {'contender':28s} {'ms/call':>9s} {'÷ loop':>8s} {'÷ plain':>8s}")
        results[case] = {}
        for name, values in times.items():
            vs_loop = statistics.median(a / b for a, b in zip(values, times["per-row loop"], strict=True))
            vs_plain = statistics.median(a / b for a, b in zip(values, times["plain"], strict=True))
            ms = statistics.median(values) * 1e3
            results[case][name] = {"ms": ms, "vs_loop": vs_loop, "vs_plain": vs_plain}
            print(f"  {name:28s} {ms:9.3f} {vs_loop:8.3f} {vs_plain:8.2f}")
    print("\nbytes kept for backward, one Linear forward")
    saved = saved_linear(args.quick)
    for name, nbytes in saved.items():
        print(f"  {name:28s} {nbytes / 2**20:9.2f} MiB")
    results["saved"] = {name: {"bytes": float(nbytes)} for name, nbytes in saved.items()}
    return results


if __name__ == "__main__":
    main()
