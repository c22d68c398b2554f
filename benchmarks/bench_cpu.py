"""CPU benchmark: dropkit vs torch vs a plain copy, in one run.

What it measures (all on CPU, p = 0.5):

1. Element-wise dropout of 1-D ``torch.randn`` tensors, float32 and bfloat16, 2^20 .. 2^26 elements.
   Contenders: ``x.clone()`` (the memory-bandwidth floor), ``torch.nn.functional.dropout`` and
   ``dropkit.functional.dropout``. Timed twice: forward alone, and forward + backward
   (``y = op(x); y.backward(g)`` with ``x.requires_grad`` and a preallocated ``g`` of ones; the copy
   contender's backward is autograd's identity copy). ``x.grad`` is cleared after every call.
1b. Channel dropout (``dropout2d``: one draw per (n, c) broadcast over H x W, the kernel dropout1d/3d and
   feature_alpha_dropout share) of float32 ``(N, 32, 28, 28)`` feature maps, N = 64 and 1920 (the MC-dropout
   CNN's batch and its 30 stacked samples), forward and forward + backward, against ``F.dropout2d`` and a copy.
2. Bytes each op keeps for backward, per element (``saved_tensors_hooks``, unique storages counted once),
   at 2^20 elements with a ``requires_grad`` input. torch keeps a mask (1 byte per element or more);
   dropkit keeps only a seed, so 0.
3. One SGD training step (forward, cross-entropy, backward, ``SGD(lr=0.01).step()``,
   ``zero_grad(set_to_none=True)``) of a 784-1024-1024-10 ReLU MLP at batch 256, fp32, with no dropout
   (``nn.Identity``), ``torch.nn.Dropout(0.5)`` or ``dropkit.nn.Dropout(0.5)`` after each hidden ReLU;
   all three start from the same weights.

How it times (shared, sometimes throttled machines): every contender is warmed up first (numba compiles
on its first call), then the contenders of a case run interleaved in rounds, each round running every
contender once in the same order. A sample loops enough calls to last at least ``--min-sample-ms``
(20 ms by default) and is divided by the number of calls. Reported: the median time per contender and
the MEDIAN OF PER-ROUND RATIOS (dropkit/torch, dropkit/copy, torch/copy, and torch/dropkit as the
speedup), plus each ratio's spread (max - min over rounds, relative to its median) to flag noisy cases.

Run::

    .venv/bin/python benchmarks/bench_cpu.py                    # full run, 7 rounds (a few minutes)
    .venv/bin/python benchmarks/bench_cpu.py --quick            # smoke run: 2^16 and 2^18, 3 rounds
    .venv/bin/python benchmarks/bench_cpu.py --rounds 9 --out section.md --json raw.json
    .venv/bin/python benchmarks/bench_cpu.py --only channel      # one case (repeatable: --only mlp ...)

``--out`` writes the same tables as a Markdown section (to paste into ``benchmarks/RESULTS.md``);
``--json`` dumps the raw per-round numbers. A contender that raises is reported as an error, not fatal.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import dropkit
import dropkit.functional as DF
import dropkit.nn as dnn
from dropkit import kernels

P = 0.5
CONTENDERS = ("copy", "torch", "dropkit")
#: (numerator, denominator) pairs whose per-round ratios are recorded for the element-wise cases.
RATIOS = (("dropkit", "torch"), ("torch", "dropkit"), ("dropkit", "copy"), ("torch", "copy"))
CASES = ("elementwise", "channel", "saved", "mlp")
MLP_VARIANTS = ("none", "torch", "dropkit")
MLP_SIZES = (784, 1024, 1024, 10)
MLP_BATCH = 256
NOISY = 0.20  #: a ratio whose spread over rounds exceeds this fraction of its median is flagged.


@dataclass
class Config:
    """What to run."""

    sizes_log2: tuple[int, ...] = (20, 22, 24, 26)
    channel_shapes: tuple[tuple[int, ...], ...] = ((64, 32, 28, 28), (1920, 32, 28, 28))
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)
    rounds: int = 7
    warmup: int = 3
    min_sample_s: float = 0.020
    saved_log2: int = 20
    mlp_steps: int = 10

    @classmethod
    def quick(cls) -> Config:
        """Smoke-test settings: a few seconds."""
        return cls(sizes_log2=(16, 18), channel_shapes=((4, 8, 7, 7),), rounds=3, warmup=2, min_sample_s=0.005,
                   saved_log2=16, mlp_steps=3)  # fmt: skip


@dataclass
class Timing:
    """Per-round seconds per call of each contender of one case, and the contenders that failed."""

    times: dict[str, list[float]]
    iters: dict[str, int]
    errors: dict[str, str] = field(default_factory=dict)
    faults: dict[str, list[float]] = field(default_factory=dict)  #: per-round minor page faults per call, if counted

    def median(self, name: str) -> float | None:
        """Return the median seconds per call of ``name`` (``None`` if it failed)."""
        return statistics.median(self.times[name]) if name in self.times else None

    def ratios(self, num: str, den: str) -> list[float] | None:
        """Return the per-round ratios ``num / den`` (``None`` if either failed)."""
        if num not in self.times or den not in self.times:
            return None
        return [a / b for a, b in zip(self.times[num], self.times[den], strict=True)]

    def ratio(self, num: str, den: str) -> dict[str, float] | None:
        """Return the median, min, max and relative spread of the per-round ratios ``num / den``."""
        values = self.ratios(num, den)
        if not values:
            return None
        med = statistics.median(values)
        return {"median": med, "min": min(values), "max": max(values), "spread": (max(values) - min(values)) / med}


# ---------------------------------------------------------------------------------------------- timing


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _sample(fn: Callable[[], object], iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def _iterations(fn: Callable[[], object], min_sample_s: float) -> int:
    """Return how many calls of ``fn`` make a sample of at least ``min_sample_s`` (from the faster of 2 calls)."""
    once = min(_sample(fn, 1) for _ in range(2))
    return max(1, min(100_000, math.ceil(min_sample_s / max(once, 1e-9))))


def interleaved(fns: dict[str, Callable[[], object]], cfg: Config) -> Timing:
    """Warm up every contender, then time them in ``cfg.rounds`` rounds, each running all of them in order."""
    errors: dict[str, str] = {}
    live: dict[str, Callable[[], object]] = {}
    for name, fn in fns.items():
        try:
            for _ in range(max(2, cfg.warmup)):
                fn()
        except Exception as exc:  # a broken contender is reported, the others still run
            errors[name] = _first_line(exc)
        else:
            live[name] = fn
    iters = {name: _iterations(fn, cfg.min_sample_s) for name, fn in live.items()}
    times: dict[str, list[float]] = {name: [] for name in live}
    gc_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(cfg.rounds):
            for name, fn in live.items():
                times[name].append(_sample(fn, iters[name]))
    finally:
        if gc_enabled:
            gc.enable()
    return Timing(times, iters, errors)


def _free() -> None:
    gc.collect()


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- cases


def _ops() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    return {
        "copy": lambda t: t.clone(),
        "torch": lambda t: F.dropout(t, P, training=True),
        "dropkit": lambda t: DF.dropout(t, P, training=True),
    }


def _channel_ops() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    return {
        "copy": lambda t: t.clone(),
        "torch": lambda t: F.dropout2d(t, P, training=True),
        "dropkit": lambda t: DF.dropout2d(t, P, training=True),
    }


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _call(
    op: Callable[[torch.Tensor], torch.Tensor], kind: str, x: torch.Tensor, xg: torch.Tensor, g: torch.Tensor
) -> Callable[[], None]:
    """Return one timed call: ``op(x)`` (``fwd``) or ``op(xg).backward(g)`` then clearing ``xg.grad`` (``fwd+bwd``)."""
    if kind == "fwd":

        def forward() -> None:
            op(x)

        return forward

    def forward_backward() -> None:
        op(xg).backward(g)
        xg.grad = None

    return forward_backward


def _passes(
    ops: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, what: str, cfg: Config
) -> list[tuple[str, Timing]]:
    """Time every contender of ``ops`` on ``x``, forward then forward + backward, interleaved; log under ``what``."""
    xg = x.detach().clone().requires_grad_(True)
    g = torch.ones_like(x)
    timings = []
    for kind in ("fwd", "fwd+bwd"):
        start = time.perf_counter()
        calls = {name: _call(ops[name], kind, x, xg, g) for name in CONTENDERS}
        timings.append((kind, interleaved(calls, cfg)))
        del calls
        _log(f"  {what} {kind:7s} {time.perf_counter() - start:6.1f} s")
        _free()
    del xg, g
    return timings


def bench_elementwise(cfg: Config) -> list[dict[str, Any]]:
    """Case 1: forward and forward+backward of each op for every dtype and size."""
    results = []
    ops = _ops()
    gen = torch.Generator().manual_seed(0)
    for dtype in cfg.dtypes:
        for k in cfg.sizes_log2:
            n = 1 << k
            x = torch.randn(n, generator=gen, dtype=dtype)
            for kind, timing in _passes(ops, x, f"elementwise {_dtype_name(dtype):8s} 2^{k}", cfg):
                results.append({"dtype": _dtype_name(dtype), "log2": k, "numel": n, "kind": kind, "timing": timing})
            del x
            _free()
    return results


def bench_channel(cfg: Config) -> list[dict[str, Any]]:
    """Case 1b: forward and forward+backward of channel dropout (dropout2d) on float32 feature maps."""
    results = []
    ops = _channel_ops()
    gen = torch.Generator().manual_seed(0)
    for shape in cfg.channel_shapes:
        x = torch.randn(shape, generator=gen)
        label = "x".join(map(str, shape))
        for kind, timing in _passes(ops, x, f"dropout2d {label:14s}", cfg):
            results.append({"shape": label, "kind": kind, "timing": timing})
        del x
        _free()
    return results


def saved_bytes(op: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[int, int]:
    """Return (bytes, tensors) that autograd saves for backward in one forward of ``op(x)``, storages deduped."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        seen[ptr] = max(seen.get(ptr, 0), t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = op(x)
    del y
    return sum(seen.values()), len(seen)


def bench_saved(cfg: Config) -> list[dict[str, Any]]:
    """Case 2: bytes kept for backward per element."""
    results = []
    n = 1 << cfg.saved_log2
    for dtype in cfg.dtypes:
        x = torch.randn(n, dtype=dtype).requires_grad_(True)
        for name, op in _ops().items():
            row: dict[str, Any] = {"op": name, "dtype": _dtype_name(dtype), "numel": n}
            try:
                total, count = saved_bytes(op, x)
            except Exception as exc:
                row["error"] = _first_line(exc)
            else:
                row.update(bytes=total, tensors=count, bytes_per_element=total / n)
            results.append(row)
        del x
        _free()
    return results


def _mlp(dropout: Callable[[], nn.Module]) -> nn.Sequential:
    d_in, h1, h2, d_out = MLP_SIZES
    return nn.Sequential(
        nn.Linear(d_in, h1), nn.ReLU(), dropout(), nn.Linear(h1, h2), nn.ReLU(), dropout(), nn.Linear(h2, d_out)
    )


def bench_mlp(cfg: Config) -> dict[str, Any]:
    """Case 3: ``cfg.mlp_steps`` SGD steps per sample of the MLP with no / torch / dropkit dropout."""
    torch.manual_seed(0)
    base = _mlp(nn.Identity)
    data = torch.randn(MLP_BATCH, MLP_SIZES[0])
    labels = torch.randint(0, MLP_SIZES[-1], (MLP_BATCH,))
    factories: dict[str, Callable[[], nn.Module]] = {
        "none": nn.Identity,
        "torch": lambda: nn.Dropout(P),
        "dropkit": lambda: dnn.Dropout(P),
    }

    def trainer(factory: Callable[[], nn.Module]) -> Callable[[], None]:
        model = copy.deepcopy(base)
        model[2], model[5] = factory(), factory()
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def steps() -> None:
            for _ in range(cfg.mlp_steps):
                loss = F.cross_entropy(model(data), labels)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

        return steps

    start = time.perf_counter()
    timing = interleaved({name: trainer(factories[name]) for name in MLP_VARIANTS}, cfg)
    _log(f"  mlp step x{cfg.mlp_steps}               {time.perf_counter() - start:6.1f} s")
    _free()
    return {"steps_per_sample": cfg.mlp_steps, "batch": MLP_BATCH, "sizes": MLP_SIZES, "timing": timing}


# ------------------------------------------------------------------------------------------ machine info


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _threading_layer() -> str:
    import numba

    try:
        return str(numba.threading_layer())  # known once a parallel kernel has run
    except ValueError:
        return os.environ.get("NUMBA_THREADING_LAYER", "default")


def machine_info() -> dict[str, Any]:
    """Return the facts that make the numbers comparable."""
    import numba

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "processor": platform.processor(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": _threading_layer(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numba": numba.__version__,
        "dropkit": dropkit.__version__,
        "dropkit_cpu_backend": kernels.backend(),
    }


# --------------------------------------------------------------------------------------------- reports


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "error"
    v = seconds * 1e3
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def _x(stat: dict[str, float] | None) -> str:
    return "n/a" if stat is None else f"{stat['median']:.2f}x"


def _spread(stat: dict[str, float] | None) -> str:
    if stat is None:
        return "n/a"
    return f"{stat['spread'] * 100:.0f}%" + (" !" if stat["spread"] > NOISY else "")


@dataclass
class Table:
    """A titled table of strings; rendered as aligned plain text or Markdown."""

    title: str
    header: Sequence[str]
    rows: list[Sequence[str]]
    note: str = ""

    def text(self) -> str:
        widths = [max(len(str(c)) for c in col) for col in zip(self.header, *self.rows, strict=True)]
        fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
        lines = [self.title, "-" * len(self.title), fmt.format(*self.header), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*row) for row in self.rows]
        return "\n".join(lines + ([self.note] if self.note else []))

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |"]
        lines.append("|" + "|".join([":---"] + ["---:"] * (len(self.header) - 1)) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines + (["", self.note] if self.note else []))


def elementwise_table(results: list[dict[str, Any]], kind: str) -> Table:
    header = ["dtype", "elements", "copy ms", "torch ms", "dropkit ms", "torch/dropkit", "dropkit/copy",
              "torch/copy", "spread t/d"]  # fmt: skip
    rows = []
    for r in results:
        if r["kind"] != kind:
            continue
        t: Timing = r["timing"]
        speedup = t.ratio("torch", "dropkit")
        rows.append(
            [r["dtype"], f"2^{r['log2']}", *(_ms(t.median(c)) for c in CONTENDERS), _x(speedup),
             _x(t.ratio("dropkit", "copy")), _x(t.ratio("torch", "copy")), _spread(speedup)]
        )  # fmt: skip
    what = "forward" if kind == "fwd" else "forward + backward"
    return Table(f"Element-wise dropout p={P}: {what}", header, rows)


def channel_table(results: list[dict[str, Any]]) -> Table:
    header = ["input (fp32)", "pass", "copy ms", "torch ms", "dropkit ms", "torch/dropkit", "dropkit/copy",
              "torch/copy", "spread t/d"]  # fmt: skip
    rows = []
    for r in results:
        t: Timing = r["timing"]
        speedup = t.ratio("torch", "dropkit")
        rows.append(
            [r["shape"], r["kind"], *(_ms(t.median(c)) for c in CONTENDERS), _x(speedup),
             _x(t.ratio("dropkit", "copy")), _x(t.ratio("torch", "copy")), _spread(speedup)]
        )  # fmt: skip
    return Table(f"Channel dropout (dropout2d) p={P}", header, rows)


def saved_table(results: list[dict[str, Any]]) -> Table:
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["op"], r["dtype"], f"2^{int(math.log2(r['numel']))}", "error", "error", "error"])
        else:
            rows.append([r["op"], r["dtype"], f"2^{int(math.log2(r['numel']))}", str(r["tensors"]),
                         f"{r['bytes']:,}", f"{r['bytes_per_element']:.2f}"])  # fmt: skip
    header = ["op", "dtype", "elements", "saved tensors", "bytes", "bytes/element"]
    return Table("Bytes kept for backward (saved_tensors_hooks, unique storages)", header, rows)


def mlp_table(mlp: dict[str, Any]) -> Table:
    t: Timing = mlp["timing"]
    steps = mlp["steps_per_sample"]
    rows = []
    for name in MLP_VARIANTS:
        med = t.median(name)
        over = t.ratio(name, "none")
        rows.append(
            [name, _ms(None if med is None else med / steps),
             "n/a" if over is None else f"{(over['median'] - 1) * 100:+.1f}%", _spread(over)]
        )  # fmt: skip
    speedup = t.ratio("torch", "dropkit")
    sizes = "-".join(map(str, mlp["sizes"]))
    note = f"torch/dropkit step time: {_x(speedup)} (spread {_spread(speedup)})."
    header = ["dropout", "step ms", "overhead vs none", "spread"]
    title = f"Training step: {sizes} ReLU MLP, batch {mlp['batch']}, fp32, SGD ({steps} steps per sample)"
    return Table(title, header, rows, note)


def tables(results: dict[str, Any]) -> list[Table]:
    out = []
    if results["elementwise"]:
        out += [elementwise_table(results["elementwise"], "fwd"), elementwise_table(results["elementwise"], "fwd+bwd")]
    if results["channel"]:
        out.append(channel_table(results["channel"]))
    if results["saved"]:
        out.append(saved_table(results["saved"]))
    if results["mlp"] is not None:
        out.append(mlp_table(results["mlp"]))
    return out


def _errors(results: dict[str, Any]) -> list[str]:
    seen: dict[str, list[str]] = {}
    cases = [(f"{r['dtype']} 2^{r['log2']} {r['kind']}", r["timing"]) for r in results["elementwise"]]
    cases += [(f"dropout2d {r['shape']} {r['kind']}", r["timing"]) for r in results["channel"]]
    if results["mlp"] is not None:
        cases.append(("mlp", results["mlp"]["timing"]))
    for label, timing in cases:
        for name, err in timing.errors.items():
            seen.setdefault(f"{name}: {err}", []).append(label)
    for r in results["saved"]:
        if "error" in r:
            seen.setdefault(f"{r['op']}: {r['error']}", []).append(f"{r['dtype']} saved-bytes")
    return [f"{err}  [{', '.join(labels)}]" for err, labels in seen.items()]


_LEGEND = (
    "Times: median over rounds of seconds per call. Ratios: median of per-round ratios (a/b > 1: a is slower); "
    f"torch/dropkit is dropkit's speedup. spread: (max - min) / median of that per-round ratio; '!' above "
    f"{NOISY:.0%}."
)


def _machine_lines(m: dict[str, Any], cfg: Config) -> list[str]:
    return [
        f"date: {m['date_utc']}",
        f"cpu: {m['cpu']} ({m['cpu_count']} CPUs, {m['cpus_usable']} usable); {m['platform']}",
        f"threads: torch {m['torch_threads']}, numba {m['numba_threads']} ({m['numba_threading_layer']} layer)",
        f"versions: python {m['python']}, torch {m['torch']}, numba {m['numba']}, dropkit {m['dropkit']} "
        f"(cpu backend: {m['dropkit_cpu_backend']})",
        f"settings: {cfg.rounds} rounds, warmup {cfg.warmup} calls, samples >= {cfg.min_sample_s * 1e3:.0f} ms",
    ]


def render_text(results: dict[str, Any], cfg: Config) -> str:
    parts = ["\n".join(["dropkit CPU benchmark: dropkit vs torch vs copy", *_machine_lines(results["machine"], cfg)])]
    parts += [t.text() for t in tables(results)]
    errors = _errors(results)
    if errors:
        parts.append("\n".join(["Errors (contender skipped):", *(f"  {e}" for e in errors)]))
    parts.append(_LEGEND)
    return "\n\n".join(parts) + "\n"


def render_markdown(results: dict[str, Any], cfg: Config, heading: str) -> str:
    parts = [f"## {heading}", "\n".join(f"- {line}" for line in _machine_lines(results["machine"], cfg))]
    parts += [t.markdown() for t in tables(results)]
    errors = _errors(results)
    if errors:
        parts.append("\n".join(["Errors (contender skipped):", "", *(f"- `{e}`" for e in errors)]))
    parts.append(_LEGEND)
    return "\n\n".join(parts) + "\n"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Timing):
        ratios = {f"{a}/{b}": obj.ratios(a, b) for a, b in RATIOS + (("torch", "none"), ("dropkit", "none"))}
        ratios = {k: v for k, v in ratios.items() if v is not None}
        return {"seconds_per_call": obj.times, "iters_per_sample": obj.iters, "errors": obj.errors,
                "per_round_ratios": ratios,
                "median_ratios": {k: statistics.median(v) for k, v in ratios.items()}}  # fmt: skip
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.dtype):
        return _dtype_name(obj)
    return obj


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: sizes 2^16 and 2^18, 3 rounds, 3 MLP steps")
    parser.add_argument("--rounds", type=int, help="rounds per case (default 7; 3 with --quick)")
    parser.add_argument("--sizes", type=int, nargs="+", metavar="LOG2",
                        help="element-wise sizes as powers of two (default 20 22 24 26; e.g. 10 15 for per-call cost)")
    parser.add_argument("--min-sample-ms", type=float, help="minimum duration of one timing sample (default 20)")
    parser.add_argument("--out", metavar="FILE", help="write the results as a Markdown section to FILE")
    parser.add_argument("--json", metavar="FILE", help="dump the raw numbers as JSON to FILE")
    parser.add_argument("--only", choices=CASES, action="append", help="run only this case (repeatable; default: all)")
    parser.add_argument("--heading", default="CPU: dropkit vs torch vs copy", help="heading of the Markdown section")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.sizes is not None and not all(0 <= k <= 30 for k in args.sizes):
        parser.error(f"--sizes must be powers of two between 0 and 30, but got {args.sizes}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every case, print the tables, write ``--out`` / ``--json``; return the raw results."""
    args = parse_args(argv)
    cfg = Config.quick() if args.quick else Config()
    if args.rounds is not None:
        cfg.rounds = args.rounds
    if args.min_sample_ms is not None:
        cfg.min_sample_s = args.min_sample_ms / 1e3
    if args.sizes is not None:
        cfg.sizes_log2 = tuple(args.sizes)

    kernels.backend()  # load the CPU kernels (numba) before timing anything
    start = time.perf_counter()
    only = set(args.only or CASES)
    results: dict[str, Any] = {"machine": machine_info(), "elementwise": [], "channel": [], "saved": [], "mlp": None}
    if "elementwise" in only:
        _log("bench_cpu: element-wise dropout ...")
        results["elementwise"] = bench_elementwise(cfg)
    if "channel" in only:
        _log("bench_cpu: channel dropout ...")
        results["channel"] = bench_channel(cfg)
    if "saved" in only:
        _log("bench_cpu: bytes kept for backward ...")
        results["saved"] = bench_saved(cfg)
    if "mlp" in only:
        _log("bench_cpu: MLP training step ...")
        results["mlp"] = bench_mlp(cfg)
    _log(f"bench_cpu: done in {time.perf_counter() - start:.0f} s")

    print(render_text(results, cfg), end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(render_markdown(results, cfg, args.heading))
    if args.json:
        config = {k: _jsonable(v) for k, v in vars(cfg).items()}
        with open(args.json, "w") as f:
            json.dump({"config": config, **_jsonable(results)}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
