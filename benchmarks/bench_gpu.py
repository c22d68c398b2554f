"""GPU benchmark: dropkit's Triton kernels vs torch vs a plain copy, in one run on one device.

What it measures (p = 0.1 for the fused ops, 0.5 for dropout):

1. **Dropout forward and backward**, fp32 / bf16 / fp16, 2^20 .. 2^28 elements (1-D) and the transformer
   shape 65,536 x 4,096. Contenders: ``copy`` (the memory-bandwidth limit: per round the faster of
   ``y.copy_(x)``, a memcpy, and ``torch.mul(x, 1.0, out=y)``, an element-wise kernel), torch
   (``aten.native_dropout`` and ``aten.native_dropout_backward``, what ``F.dropout`` runs on CUDA) and
   dropkit (the Triton masked-affine op: forward from the seed, backward regenerating the mask).
   Bytes moved: read x + write y (2 tensors) for every contender; torch also writes (forward) and reads
   (backward) its 1-byte mask, which is not counted, so its GB/s is the useful bandwidth.
2. **Dropout + residual add + LayerNorm**, pre-norm style (returns the normalised output and the new
   residual), tokens x hidden = 16,384 x 4,096 and 65,536 x 4,096 (and 16,384 x 1,024): torch eager
   (``F.dropout`` + add + ``F.layer_norm``), the same function under ``torch.compile``, and dropkit's fused
   kernel. Forward bytes counted: read x, residual; write y, h (4 tensors). Backward (given dy and dh):
   read dy, dh, h; write dx, dresidual (5 tensors; weights and row statistics are negligible).
3. **Bytes kept for backward** per element (``saved_tensors_hooks``): torch keeps its mask, dropkit a seed.

How it times: each contender's calls are captured in a CUDA graph (``iters`` calls per graph, so launch
overhead and Python do not count; ``--no-graphs`` times plain calls), the graphs of a case replay
interleaved in rounds, and the table reports the median time per call, GB/s, % of the copy's bandwidth
measured in the same rounds, and the median of per-round ratios against torch.

Run on a GPU::

    python benchmarks/bench_gpu.py --out gpu.md          # full run (a few minutes on an H100)
    python benchmarks/bench_gpu.py --quick               # 2^20 and 2^24, fp32 and bf16 only

Without a GPU, ``TRITON_INTERPRET=1 python benchmarks/bench_gpu.py --tiny`` runs every contender once
under Triton's interpreter on CPU tensors (a smoke test of the script; its timings mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import dropkit.functional as DF
from dropkit import kernels, rng

P_DROPOUT, P_FUSED = 0.5, 0.1


def _now() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class Case:
    """A set of contenders timed interleaved; each returns seconds per call for one sample."""

    def __init__(self, fns: dict[str, Callable[[], object]], iters: int, graphs: bool) -> None:
        self.iters = iters
        self.samples: dict[str, list[float]] = {name: [] for name in fns}
        self.runners = {name: self._runner(fn, graphs) for name, fn in fns.items()}

    def _runner(self, fn: Callable[[], object], graphs: bool) -> Callable[[], float]:
        for _ in range(3):  # warm up: compile kernels, settle allocations
            fn()
        if not graphs:

            def timed() -> float:
                start = _now()
                for _ in range(self.iters):
                    fn()
                return (_now() - start) / self.iters

            return timed
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            for _ in range(self.iters):
                fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def replay() -> float:
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / self.iters

        return replay

    def run(self, rounds: int) -> Case:
        for _ in range(rounds):
            for name, runner in self.runners.items():
                self.samples[name].append(runner())
        if "copy kernel" in self.samples:  # the copy bound: the faster of torch's memcpy and an element-wise kernel
            kernel = self.samples.pop("copy kernel")
            self.samples["copy"] = [min(a, b) for a, b in zip(self.samples["copy"], kernel, strict=True)]
        return self

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def ratio(self, num: str, den: str) -> float:
        return statistics.median(a / b for a, b in zip(self.samples[num], self.samples[den], strict=True))


def _iters(numel: int, esize: int, device: str) -> int:
    if device != "cuda":
        return 1
    return max(3, min(200, int(2e9 // max(1, numel * esize * 2))))  # about 2 GB moved per graph replay


def bench_dropout(dtype: torch.dtype, shape: tuple[int, ...], cfg: argparse.Namespace) -> dict:
    dev = cfg.device
    x = torch.randn(shape, device=dev, dtype=dtype)
    y, g = torch.empty_like(x), torch.randn_like(x)
    numel, esize = x.numel(), x.element_size()
    _, mask = torch.ops.aten.native_dropout(x, P_DROPOUT, True) if dev == "cuda" else (None, torch.rand_like(x) > 0.5)
    seed, thr, scale = 1234, rng.keep_threshold(P_DROPOUT), 1.0 / (1.0 - P_DROPOUT)
    spec = kernels.MaskSpec(seed, 0, thr, scale)
    fns: dict[str, Callable[[], object]] = {
        "copy": lambda: y.copy_(x),
        "copy kernel": lambda: torch.mul(x, 1.0, out=y),
        "torch fwd": lambda: torch.ops.aten.native_dropout(x, P_DROPOUT, True),
        "dropkit fwd": lambda: kernels.apply(x, spec),
        "torch bwd": lambda: torch.ops.aten.native_dropout_backward(g, mask, scale),
        "dropkit bwd": lambda: kernels.apply(g, spec.linear()),
    }
    case = Case(fns, _iters(numel, esize, dev), cfg.graphs).run(cfg.rounds)
    copy_s = case.median("copy")
    row = {"kind": "dropout", "dtype": str(dtype).replace("torch.", ""), "shape": shape, "numel": numel}
    for name in case.samples:
        seconds = case.median(name)
        row[name] = {
            "ms": seconds * 1e3,
            "GB/s": 2 * numel * esize / seconds / 1e9,
            "% copy": 100 * case.ratio("copy", name),
        }
    row["dropkit/torch fwd"] = case.ratio("dropkit fwd", "torch fwd")
    row["dropkit/torch bwd"] = case.ratio("dropkit bwd", "torch bwd")
    row["copy GB/s"] = 2 * numel * esize / copy_s / 1e9
    kept = DF.dropout(x[:1024], P_DROPOUT, seed=seed)
    row["dropped fraction (1024)"] = float((kept == 0).float().mean())
    return row


def _torch_block(x, r, w, b, p):
    h = F.dropout(x, p, True) + r
    return F.layer_norm(h, (x.shape[-1],), w, b, 1e-5), h


def _dropkit_block(x, r, w, b, p):
    return DF.dropout_add_layer_norm(x, r, w, b, p, 1e-5, prenorm=True)


def bench_fused(dtype: torch.dtype, tokens: int, hidden: int, cfg: argparse.Namespace) -> dict:
    dev = cfg.device
    x = torch.randn(tokens, hidden, device=dev, dtype=dtype, requires_grad=True)
    r = torch.randn(tokens, hidden, device=dev, dtype=dtype, requires_grad=True)
    w = torch.ones(hidden, device=dev, dtype=dtype, requires_grad=True)
    b = torch.zeros(hidden, device=dev, dtype=dtype, requires_grad=True)
    dy, dh = torch.randn_like(x), torch.randn_like(x)
    out = torch.empty_like(x)
    blocks = {"torch eager": _torch_block, "dropkit fused": _dropkit_block}
    if cfg.compile:
        blocks["torch.compile"] = torch.compile(_torch_block)
    xd = x.detach()
    fns: dict[str, Callable[[], object]] = {
        "copy": lambda: out.copy_(xd),
        "copy kernel": lambda: torch.mul(xd, 1.0, out=out),
    }
    with torch.no_grad():
        for name, block in blocks.items():
            fns[f"{name} fwd"] = lambda block=block: block(x, r, w, b, P_FUSED)
    numel, esize = x.numel(), x.element_size()
    case = Case(fns, _iters(numel, esize, dev) // 2 or 1, cfg.graphs)
    with torch.no_grad():
        case.run(cfg.rounds)

    def train(block):
        def step():
            y, h = block(x, r, w, b, P_FUSED)
            torch.autograd.backward((y, h), (dy, dh))
            x.grad = r.grad = w.grad = b.grad = None

        return step

    train_case = Case({"copy": fns["copy"], "copy kernel": fns["copy kernel"],
                       **{f"{n} fwd+bwd": train(bl) for n, bl in blocks.items()}},
                      max(1, _iters(numel, esize, dev) // 8), graphs=False).run(cfg.rounds)
    row = {"kind": "fused", "dtype": str(dtype).replace("torch.", ""), "shape": (tokens, hidden), "numel": numel}
    copy_bw = 2 * numel * esize / case.median("copy")
    for name in case.samples:
        if name == "copy":
            continue
        seconds = case.median(name)
        bw = 4 * numel * esize / seconds
        row[name] = {"ms": seconds * 1e3, "GB/s": bw / 1e9, "% copy": 100 * bw / copy_bw}
    for name in train_case.samples:
        if name == "copy":
            continue
        seconds = train_case.median(name)
        bw = 9 * numel * esize / seconds  # forward 4 tensors + backward 5
        row[name] = {"ms": seconds * 1e3, "GB/s": bw / 1e9, "% copy": 100 * bw / copy_bw}
    row["copy GB/s"] = copy_bw / 1e9
    for name, block in blocks.items():  # host time of a step: when it nears the step time, the step is host-bound
        row[f"{name} host ms"] = _host_ms(train(block), max(1, _iters(numel, esize, dev) // 8))
    for other in ("torch eager", "torch.compile"):
        if f"{other} fwd" in fns:
            row[f"dropkit/{other} fwd"] = case.ratio("dropkit fused fwd", f"{other} fwd")
            row[f"dropkit/{other} fwd+bwd"] = train_case.ratio("dropkit fused fwd+bwd", f"{other} fwd+bwd")
    return row


def _host_ms(step: Callable[[], object], calls: int) -> float:
    """Milliseconds per call the host spends issuing ``step`` (median of 5 runs; the device is not waited on)."""
    runs = []
    for _ in range(5):
        _now()
        start = time.perf_counter()
        for _ in range(calls):
            step()
        runs.append((time.perf_counter() - start) / calls * 1e3)
    _now()
    return statistics.median(runs)


def saved_bytes(cfg: argparse.Namespace) -> dict:
    x = torch.randn(1 << 20, device=cfg.device, requires_grad=True)
    r, w = torch.randn_like(x).view(256, 4096), torch.ones(4096, device=cfg.device)
    result = {}
    cases = {
        "torch dropout": lambda: F.dropout(x, 0.5, True),
        "dropkit dropout": lambda: DF.dropout(x, 0.5),
        "torch dropout+add+LayerNorm": lambda: _torch_block(x.view(256, 4096), r, w, None, 0.1),
        "dropkit fused dropout+add+LayerNorm": lambda: _dropkit_block(x.view(256, 4096), r, w, None, 0.1),
    }
    for name, fn in cases.items():
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor, saved: dict[int, int] = saved) -> torch.Tensor:
            if t.numel() == x.numel() and t.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        result[name] = sum(saved.values()) / x.numel()
    return result


def _fmt(cell) -> str:
    return f"{cell['GB/s']:.0f} GB/s ({cell['% copy']:.0f}%)"


def render(results: dict) -> str:
    lines = [f"### GPU benchmark, {results['date']}", "", results["machine"], ""]
    lines += [
        "| dropout | elements | copy GB/s | torch fwd | dropkit fwd | torch bwd | dropkit bwd | dropkit/torch fwd | "
        "dropkit/torch bwd |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["dropout"]:
        shape = "x".join(map(str, row["shape"]))
        lines.append(
            f"| {row['dtype']} | {shape} | {row['copy GB/s']:.0f} | {_fmt(row['torch fwd'])} | "
            f"{_fmt(row['dropkit fwd'])} | {_fmt(row['torch bwd'])} | {_fmt(row['dropkit bwd'])} | "
            f"{row['dropkit/torch fwd']:.2f}x | {row['dropkit/torch bwd']:.2f}x |"
        )
    lines += ["", "Time ratios (lower is faster for dropkit); bandwidth counts x read + y written.", ""]
    names = [k for k in results["fused"][0] if isinstance(results["fused"][0][k], dict)] if results["fused"] else []
    lines += ["| dropout+add+LN | tokens x hidden | " + " | ".join(names) + " | ratios |",
              "|---|---|" + "---|" * (len(names) + 1)]
    for row in results["fused"]:
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in row.items() if k.startswith("dropkit/"))
        ratios += "; host ms per fwd+bwd step: " + ", ".join(
            f"{k[:-8]} {v:.3f}" for k, v in row.items() if k.endswith(" host ms"))
        cells = " | ".join(f"{row[n]['ms']:.3f} ms, {_fmt(row[n])}" for n in names)
        lines.append(f"| {row['dtype']} | {row['shape'][0]}x{row['shape'][1]} | {cells} | {ratios} |")
    lines += ["", "Fused bandwidth counts 4 tensors forward (x, residual read; y, h written) and 9 for",
              "forward + backward; % is of the copy bandwidth measured in the same run. Host ms: time the host",
              "spends issuing one training step without waiting for the GPU (close to the step time: host-bound).",
              ""]
    lines += ["| bytes kept for backward per element | |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in results["saved"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2^20 and 2^24 elements, fp32 and bf16, 3 rounds")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, 1 round (interpreter smoke test)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-graphs", dest="graphs", action="store_false", help="time plain calls")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    parser.add_argument("--out", help="write the Markdown tables here")
    cfg = parser.parse_args(argv)
    cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    sizes: list[tuple[int, ...]] = [(1 << k,) for k in (20, 22, 24, 26, 28)] + [(65536, 4096)]
    fused = [(16384, 1024), (16384, 4096), (65536, 4096)]
    if cfg.quick:
        dtypes, sizes, fused, cfg.rounds = dtypes[:2], [(1 << 20,), (1 << 24,)], [(16384, 4096)], 3
    if cfg.tiny or cfg.device == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            sys.exit("No GPU: run with TRITON_INTERPRET=1 and --tiny to smoke-test the script on CPU.")
        dtypes, sizes, fused, cfg.rounds = [torch.float32], [(4096,)], [(4, 1024)], 1
        cfg.graphs = cfg.compile = False
    if cfg.device == "cuda":
        import triton

        props = torch.cuda.get_device_properties(0)
        machine = (f"Device: {props.name} ({props.multi_processor_count} SMs); torch {torch.__version__}, "
                   f"triton {triton.__version__}; CUDA graphs: {cfg.graphs}; rounds: {cfg.rounds}.")
    else:
        machine = "Device: CPU under TRITON_INTERPRET=1 (smoke test only: timings mean nothing)."
    print(machine, flush=True)
    results = {"date": datetime.date.today().isoformat(), "machine": machine, "dropout": [], "fused": []}
    with kernels.use_backend("triton") if cfg.device == "cpu" else _nothing():
        for dtype in dtypes:
            for shape in sizes:
                row = bench_dropout(dtype, shape, cfg)
                results["dropout"].append(row)
                print(f"dropout {row['dtype']} {shape}: fwd {_fmt(row['dropkit fwd'])} vs torch "
                      f"{_fmt(row['torch fwd'])}; bwd {_fmt(row['dropkit bwd'])} vs {_fmt(row['torch bwd'])}",
                      flush=True)
                torch.cuda.empty_cache() if cfg.device == "cuda" else None
            for tokens, hidden in fused:
                row = bench_fused(dtype, tokens, hidden, cfg)
                results["fused"].append(row)
                print(f"fused {row['dtype']} {tokens}x{hidden}: " + ", ".join(
                    f"{k} {v['ms']:.3f} ms ({v['% copy']:.0f}%)" for k, v in row.items() if isinstance(v, dict)),
                    flush=True)
                torch.cuda.empty_cache() if cfg.device == "cuda" else None
        results["saved"] = saved_bytes(cfg)
    text = render(results)
    print(text)
    if cfg.out:
        with open(cfg.out, "w") as f:
            f.write(text)
    return results


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
