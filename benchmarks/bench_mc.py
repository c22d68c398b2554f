"""MC-dropout inference benchmark: ``dropkit.mc.predict`` vs the loops users write, in one run (CPU).

What it measures (all fp32, under ``torch.no_grad``; every contender ends with the softmax of its samples):

A. The reference case: a 784-1024-1024-10 ReLU MLP (``nn.Sequential``) with ``torch.nn.Dropout(0.5)`` after each
   hidden ReLU, a batch of 256 random inputs, T = 50 samples. Contenders:

   - ``loop``: what users write: ``model.train()``, ``torch.stack([model(x).softmax(-1) for _ in range(T)])``,
     then ``model.eval()`` (torch's dropout, T forwards of N rows);
   - ``stacked-torch``: one forward of ``x`` repeated T times in the batch dimension (T*N rows), torch's dropout
     in train mode, no prefix reuse;
   - ``floor``: the same stacked forward with the dropout layers removed and the deterministic prefix (first
     Linear + ReLU) computed once on ``x`` before repeating: the compute floor of any MC sampler;
   - ``dropkit``: ``dropkit.mc.predict(model, x, samples=T)`` on the model in eval mode (it also computes the
     summary statistics of its ``MCResult``: mean, entropies, mutual information, votes);
   - ``copy``: the plain copy, ``dst.copy_(src)`` of every dropout module's input, T times its size, in buffers
     allocated once: the memory traffic of reading and writing each dropout site's activations once per sample.

   Reported: median ms per call, loop/dropkit (target >= 3x), dropkit/floor (target <= 1.25x),
   stacked-torch/dropkit and dropkit/copy, each with its per-round min, max and spread.

B. "Never slower than the loop": models where ``predict`` cannot use the ``Sequential`` prefix, or must fall back
   to a Python loop, T = 30 each:

   - ``cnn``: a non-``Sequential`` CNN with a custom forward (conv-relu-Dropout2d-conv-relu-flatten-linear) on
     64x1x28x28 inputs (one sample's feature maps fill most of the stacking budget: ``predict`` loops over samples);
   - ``backbone``: torchvision's classifier layout (a ``features`` Sequential of convolutions, pooling, flatten, and
     a dropout head) with a custom forward, on 64x3x32x32 inputs: ``predict`` computes the features once;
   - ``bn-train``: a ``Sequential`` MLP with ``BatchNorm1d`` in TRAINING mode and ``Dropout(0.5)``, batch 256
     (BatchNorm mixes the batch, so ``predict`` runs a Python loop, on dropkit's dropout kernels);
   - ``transformer``: one ``TransformerEncoderLayer`` (d_model 64, 4 heads, dropout 0.1, ``batch_first``), mean
     pooled, and a Linear head, on (32, 16, 64) inputs; its loop baseline runs under ``model.train()``;
   - ``lstm``: a 2-layer ``nn.LSTM`` (32 -> 64, dropout 0.25 between layers, ``batch_first``), ``Dropout(0.25)``
     on the last step and a Linear head, on (32, 16, 32) inputs;
   - ``lstm-seq-first``: the same with ``batch_first=False`` on (16, 32, 32) inputs: dimension 0 is time (stacking
     there would join the samples' sequences), so ``predict`` stacks the samples in dimension 1, beside the rows.

   Contenders: ``loop``, ``dropkit`` and ``copy`` (plus ``stacked-torch`` where stacking is valid, for reference).
   Reported: loop/dropkit per model (target >= 1, within noise) and dropkit/copy.

How it times (shared, sometimes throttled machines): the house style of ``bench_cpu.py``. Every contender is
warmed up first, then the contenders of a case run interleaved in rounds, each round running every contender once,
in reverse order every other round. A sample loops enough calls to last at least ``--min-sample-ms`` (20 ms by
default; the MC calls here take far longer, so one call per sample). Reported: the median time per contender
and the MEDIAN OF PER-ROUND RATIOS, with each ratio's spread (max - min over rounds, relative to its median), and
each contender's minor page faults per call.

Page faults matter here. glibc returns freed blocks of a few MB to the kernel (trimming the heap top, unmapping
mmapped blocks), so the next forward's activations are faulted in afresh, one 4 KB page at a time: on the 2-CPU
machine that made up about two thirds of the conv net's time, and how much of it a contender pays depends on the
heap layout its allocation order leaves, not on its own work. ``--steady-heap`` re-runs the script with
``GLIBC_TUNABLES`` that keep freed memory (:data:`STEADY_HEAP`, what jemalloc or tcmalloc do by default), which
takes that noise out of the comparison for every contender alike.

Run::

    .venv/bin/python benchmarks/bench_mc.py                     # full run, 7 rounds (a few minutes)
    .venv/bin/python benchmarks/bench_mc.py --quick             # smoke run: T=5, 2 rounds, small batches
    .venv/bin/python benchmarks/bench_mc.py --rounds 9 --out section.md --json raw.json
    .venv/bin/python benchmarks/bench_mc.py --steady-heap       # glibc keeps freed memory: no page-fault churn

``--out`` writes the tables as a Markdown section (to paste into ``benchmarks/RESULTS.md``); ``--json`` dumps the
raw per-round numbers. A contender that raises is reported as an error, not fatal.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from dropkit import kernels
from dropkit import mc as dmc


def _bench_cpu() -> ModuleType:
    """Load the sibling ``bench_cpu.py`` (shared timing, tables and machine info) whether or not it is on the path."""
    path = Path(__file__).resolve().with_name("bench_cpu.py")
    loaded = sys.modules.get("bench_cpu")
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
        return loaded
    spec = importlib.util.spec_from_file_location("bench_cpu", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_cpu"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_cpu = _bench_cpu()
Timing = _cpu.Timing
Table = _cpu.Table
machine_info = _cpu.machine_info
_ms, _x, _spread, _first_line, _log, NOISY = _cpu._ms, _cpu._x, _cpu._spread, _cpu._first_line, _cpu._log, _cpu.NOISY

P = 0.5
MLP_SIZES = (784, 1024, 1024, 10)
A_CONTENDERS = ("loop", "stacked-torch", "floor", "dropkit", "copy")
B_CONTENDERS = ("loop", "stacked-torch", "dropkit", "copy")
#: (numerator, denominator, target) of case A; target is (">=" | "<=", value) or None.
A_RATIOS: tuple[tuple[str, str, tuple[str, float] | None], ...] = (
    ("loop", "dropkit", (">=", 3.0)),
    ("dropkit", "floor", ("<=", 1.25)),
    ("stacked-torch", "dropkit", None),
    ("loop", "floor", None),
    ("dropkit", "copy", None),
    ("floor", "copy", None),
)
#: ``--steady-heap``: glibc keeps freed memory (every block below 32 MB from the heap, no trimming below 512 MB)
#: instead of unmapping it and faulting it in again on the next forward (what jemalloc or tcmalloc also give).
STEADY_HEAP = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=536870912"
B_TARGET = 1.0  #: loop/dropkit of every case-B model should not fall below this (within noise).
B_TOLERANCE = 0.05  #: a median loop/dropkit in [1 - this, 1) whose per-round range reaches 1 counts as noise.


@dataclass
class Config:
    """What to run."""

    rounds: int = 7
    warmup: int = 1
    min_sample_s: float = 0.020
    samples_a: int = 50
    batch_a: int = 256
    samples_b: int = 30
    batch_cnn: int = 64
    batch_bn: int = 256
    batch_tf: int = 32
    seq_tf: int = 16
    d_model: int = 64

    @classmethod
    def quick(cls) -> Config:
        """Smoke-test settings: a few seconds."""
        return cls(rounds=2, warmup=1, min_sample_s=0.005, samples_a=5, batch_a=32, samples_b=5, batch_cnn=8,
                   batch_bn=32, batch_tf=4, seq_tf=8)  # fmt: skip


# ---------------------------------------------------------------------------------------------- timing


def _minor_faults() -> int:
    """Minor page faults of this process so far (first touches of freshly mapped memory); 0 where unknown."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Unix
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _sample(fn: Callable[[], object], iters: int) -> tuple[float, float]:
    """Seconds and minor page faults per call over ``iters`` calls."""
    faults, start = _minor_faults(), time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters, (_minor_faults() - faults) / iters


def interleaved(fns: dict[str, Callable[[], object]], cfg: Config) -> Timing:
    """Warm every contender up, then time them in ``cfg.rounds`` rounds, each running all of them once.

    Even rounds run them in the given order, odd rounds in reverse, so that no contender always runs right after
    the same other one (whose caches and heap layout it would inherit).

    Like ``bench_cpu.interleaved``, but the calls here take up to seconds: the last warm-up call (not two extra
    calls) sizes the samples. Also counts each call's minor page faults (``Timing.faults``).
    """
    errors: dict[str, str] = {}
    live: dict[str, Callable[[], object]] = {}
    iters: dict[str, int] = {}
    for name, fn in fns.items():
        try:
            for _ in range(max(0, cfg.warmup - 1)):
                fn()
            once, _ = _sample(fn, 1)
        except Exception as exc:  # a broken contender is reported, the others still run
            errors[name] = _first_line(exc)
        else:
            live[name] = fn
            iters[name] = max(1, min(100_000, math.ceil(cfg.min_sample_s / max(once, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in live}
    faults: dict[str, list[float]] = {name: [] for name in live}
    gc.collect()
    gc_enabled = gc.isenabled()
    gc.disable()
    order = list(live.items())
    try:
        for r in range(cfg.rounds):
            for name, fn in order if r % 2 == 0 else order[::-1]:  # alternate the order: no contender always follows
                seconds, fault_count = _sample(fn, iters[name])  # the same one (caches, heap layout)
                times[name].append(seconds)
                faults[name].append(fault_count)
    finally:
        if gc_enabled:
            gc.enable()
    return Timing(times, iters, errors, faults)


def _faults(t: Timing, name: str) -> str:
    """Median minor page faults per call of ``name``, in thousands."""
    return f"{statistics.median(t.faults[name]) / 1e3:.1f}k" if t.faults.get(name) else "n/a"


# ---------------------------------------------------------------------------------------------- models


def _repeat(x: torch.Tensor, times: int) -> torch.Tensor:
    """``x`` repeated ``times`` times in the batch dimension, sample-major: rows ``t*N .. t*N+N-1`` are sample t."""
    return x.unsqueeze(0).expand(times, *x.shape).reshape(times * x.shape[0], *x.shape[1:])


def mlp() -> nn.Sequential:
    """The reference 784-1024-1024-10 ReLU MLP with ``torch.nn.Dropout(0.5)`` after each hidden ReLU."""
    d_in, h1, h2, d_out = MLP_SIZES
    return nn.Sequential(
        nn.Linear(d_in, h1), nn.ReLU(), nn.Dropout(P), nn.Linear(h1, h2), nn.ReLU(), nn.Dropout(P), nn.Linear(h2, d_out)
    )


class SmallCNN(nn.Module):
    """conv-relu-Dropout2d-conv-relu-flatten-linear with a custom forward (no ``Sequential`` prefix to reuse)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.drop = nn.Dropout2d(0.25)
        self.conv2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.fc = nn.Linear(64 * 14 * 14, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.conv1(x)))
        h = torch.relu(self.conv2(h))
        return self.fc(h.flatten(1))


class BackboneHead(nn.Module):
    """torchvision's classifier layout (AlexNet, VGG): a ``features`` Sequential, pooling, flatten, dropout head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )  # fmt: skip
        self.avgpool = nn.AdaptiveAvgPool2d(4)
        self.classifier = nn.Sequential(nn.Dropout(P), nn.Linear(64 * 16, 256), nn.ReLU(inplace=True), nn.Dropout(P),
                                        nn.Linear(256, classes))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def bn_mlp() -> nn.Sequential:
    """784-512-10 MLP with ``BatchNorm1d`` (left in training mode by the benchmark) and ``Dropout(0.5)``."""
    return nn.Sequential(nn.Linear(784, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Dropout(P), nn.Linear(512, 10))


class SmallTransformer(nn.Module):
    """One ``TransformerEncoderLayer`` (dropout 0.1, ``batch_first``), mean pooled over tokens, and a Linear head."""

    def __init__(self, d_model: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=4 * d_model, dropout=0.1,
                                                  batch_first=True)  # fmt: skip
        self.head = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


class SmallLSTM(nn.Module):
    """A 2-layer LSTM (dropout between layers), ``Dropout`` on the last step's output, and a Linear head."""

    def __init__(self, batch_first: bool = True, features: int = 32, hidden: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.rnn = nn.LSTM(features, hidden, num_layers=2, dropout=0.25, batch_first=batch_first)
        self.drop, self.head = nn.Dropout(0.25), nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rnn(x)[0]
        return self.head(self.drop(y[:, -1] if self.batch_first else y[-1]))


def _mixes_batch(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


def predict_path(model: nn.Module, x: torch.Tensor, samples: int) -> str:
    """How ``predict(vectorize="auto")`` draws the samples of ``model`` at ``x`` (its rule, ``dropkit.mc``)."""
    if _mixes_batch(model):
        return "Python loop (BatchNorm training)"
    dims = dmc._stack_dims(model, x, "auto", samples)
    if dims is None and dmc._one_per_forward(model, x, samples, 1 << 13):
        return "loop of samples, whole model"  # the row check skipped: a loop either way
    if dims is None:
        return "Python loop (rows not independent)"
    dim, n = dims[0], x.shape[dims[0]]
    prefix, rest = dmc._split_sequential(model) if dim == 0 else (None, model)
    where = "prefix once" if prefix is not None else "whole model"
    with torch.no_grad(), dmc.mc_dropout(model), dmc._SampleStreams(0, n, samples) as streams:
        h = prefix(x) if prefix is not None else x
        per = dmc._per_chunk(rest, h.narrow(dim, 0, 1).clone(), dim, n, samples, 1 << 13, streams, check=True)
    where += "" if dim == 0 else ", in dim 1"
    return f"loop of samples, {where}" if per == 1 else f"stacked {per} per forward, {where}"


# ------------------------------------------------------------------------------------------ contenders


def loop_call(model: nn.Module, x: torch.Tensor, samples: int) -> Callable[[], torch.Tensor]:
    """The hand-rolled baseline: ``model.train()``, a Python loop of ``samples`` forwards, then the mode it had."""

    def run() -> torch.Tensor:
        was_training = model.training
        model.train()
        try:
            with torch.no_grad():
                return torch.stack([model(x).softmax(-1) for _ in range(samples)])
        finally:
            model.train(was_training)

    return run


def stacked_call(model: nn.Module, x: torch.Tensor, samples: int) -> Callable[[], torch.Tensor]:
    """One forward of ``x`` repeated ``samples`` times in the batch dimension, in train mode (torch's dropout)."""
    n = x.shape[0]

    def run() -> torch.Tensor:
        was_training = model.training
        model.train()
        try:
            with torch.no_grad():
                out = model(_repeat(x, samples))
                return out.reshape(samples, n, *out.shape[1:]).softmax(-1)
        finally:
            model.train(was_training)

    return run


def floor_call(model: nn.Sequential, x: torch.Tensor, samples: int) -> Callable[[], torch.Tensor]:
    """The reference MLP's compute floor: prefix (Linear + ReLU) once, then the rest, stacked, without dropout."""
    prefix = model[:2]
    rest = nn.Sequential(*(m for m in model[2:] if not isinstance(m, nn.Dropout))).eval()
    n = x.shape[0]

    def run() -> torch.Tensor:
        with torch.no_grad():
            out = rest(_repeat(prefix(x), samples))
            return out.reshape(samples, n, *out.shape[1:]).softmax(-1)

    return run


def dropout_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Size]:
    """Input shapes of ``model``'s dropout modules in one training-mode forward at ``x`` (modes restored after).

    Training mode, because that is where every dropout layer runs (an eval ``TransformerEncoderLayer`` takes a fused
    path past its dropout modules). Dropout inside a torch op (``nn.LSTM``'s between layers, attention dropout in
    ``scaled_dot_product_attention``) is not a module and not counted.
    """
    shapes: list[torch.Size] = []
    sites = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    hooks = [m.register_forward_hook(lambda _m, args, _out: shapes.append(args[0].shape)) for m in sites]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
        for m, mode in modes:
            m.training = mode
    return shapes


def copy_call(model: nn.Module, x: torch.Tensor, samples: int) -> Callable[[], list[torch.Tensor]]:
    """The plain copy: ``dst.copy_(src)`` of every dropout module's input, ``samples`` times its size.

    The memory traffic of reading and writing each dropout site's activations once per sample, the least any MC
    sampler moves through its dropout layers, in buffers allocated once (no page faults): the bandwidth yardstick
    that ``bench_cpu.py``'s copy is for one dropout call.
    """
    pairs = [(torch.randn(samples * s.numel()), torch.empty(samples * s.numel())) for s in dropout_inputs(model, x)]

    def run() -> list[torch.Tensor]:
        return [dst.copy_(src) for src, dst in pairs]

    return run


def dropkit_call(model: nn.Module, x: torch.Tensor, samples: int) -> Callable[[], dmc.MCResult]:
    """``dropkit.mc.predict`` with its defaults (classification summary, ``vectorize="auto"``)."""

    def run() -> dmc.MCResult:
        return dmc.predict(model, x, samples=samples)

    return run


# ----------------------------------------------------------------------------------------------- cases


def bench_reference(cfg: Config) -> dict[str, Any]:
    """Case A: the reference MLP, all four contenders."""
    torch.manual_seed(0)
    model = mlp().eval()
    x = torch.randn(cfg.batch_a, MLP_SIZES[0])
    t = cfg.samples_a
    calls = {
        "loop": loop_call(model, x, t),
        "stacked-torch": stacked_call(model, x, t),
        "floor": floor_call(model, x, t),
        "dropkit": dropkit_call(model, x, t),
        "copy": copy_call(model, x, t),
    }
    start = time.perf_counter()
    timing = interleaved(calls, cfg)
    _log(f"  reference mlp T={t} N={cfg.batch_a}  {time.perf_counter() - start:6.1f} s")
    return {
        "model": "-".join(map(str, MLP_SIZES)) + " ReLU MLP, 2x nn.Dropout(0.5)",
        "input": list(x.shape),
        "samples": t,
        "path": predict_path(model, x, t),
        "timing": timing,
    }


def _b_models(cfg: Config) -> list[tuple[str, str, nn.Module, torch.Tensor, bool]]:
    """(name, description, model, input, whether stacking is valid) of case B; weights and inputs seeded."""
    torch.manual_seed(1)
    cnn = SmallCNN().eval()
    x_cnn = torch.randn(cfg.batch_cnn, 1, 28, 28)
    backbone = BackboneHead().eval()
    x_backbone = torch.randn(cfg.batch_cnn, 3, 32, 32)
    bn = bn_mlp().train()
    x_bn = torch.randn(cfg.batch_bn, 784)
    tf = SmallTransformer(cfg.d_model).eval()
    x_tf = torch.randn(cfg.batch_tf, cfg.seq_tf, cfg.d_model)
    lstm, lstm_seq = SmallLSTM().eval(), SmallLSTM(batch_first=False).eval()
    x_lstm = torch.randn(cfg.batch_tf, cfg.seq_tf, 32)
    return [
        ("cnn", "conv-relu-Dropout2d-conv-relu-flatten-linear, custom forward", cnn, x_cnn, True),
        ("backbone", "conv features + pooling + 2x Dropout(0.5) head, custom forward (torchvision layout)", backbone,
         x_backbone, True),
        ("bn-train", "784-512-10 MLP, BatchNorm1d (training) + Dropout(0.5)", bn, x_bn, False),
        ("transformer", f"TransformerEncoderLayer d{cfg.d_model} h4 dropout 0.1 + mean + Linear", tf, x_tf, True),
        ("lstm", "2-layer LSTM 32-64 (dropout 0.25), batch_first, Dropout(0.25) + Linear on the last step", lstm,
         x_lstm, True),
        ("lstm-seq-first", "the same LSTM net with batch_first=False (input: time, batch, features)", lstm_seq,
         x_lstm.transpose(0, 1).contiguous(), False),
    ]


def bench_fallbacks(cfg: Config) -> list[dict[str, Any]]:
    """Case B: loop vs dropkit (and stacked torch where stacking is valid) on models without the prefix trick."""
    results = []
    t = cfg.samples_b
    for name, desc, model, x, stackable in _b_models(cfg):
        calls: dict[str, Callable[[], object]] = {"loop": loop_call(model, x, t)}
        if stackable:
            calls["stacked-torch"] = stacked_call(model, x, t)
        calls["dropkit"] = dropkit_call(model, x, t)
        calls["copy"] = copy_call(model, x, t)
        path = predict_path(model, x, t)
        start = time.perf_counter()
        timing = interleaved(calls, cfg)
        _log(f"  {name:12s} T={t} {str(list(x.shape)):16s} {time.perf_counter() - start:6.1f} s")
        results.append({"name": name, "model": desc, "input": list(x.shape), "samples": t, "path": path,
                        "timing": timing})  # fmt: skip
        del model, x, calls
    return results


# --------------------------------------------------------------------------------------------- reports


def _met(stat: dict[str, float] | None, target: tuple[str, float] | None) -> str:
    if target is None:
        return ""
    if stat is None:
        return "n/a"
    op, value = target
    ok = stat["median"] >= value if op == ">=" else stat["median"] <= value
    return "yes" if ok else "NO"


def _b_met(stat: dict[str, float] | None) -> str:
    if stat is None:
        return "n/a"
    if stat["median"] >= B_TARGET:
        return "yes"
    if stat["median"] >= B_TARGET - B_TOLERANCE and stat["max"] >= B_TARGET:
        return "within noise"
    return "NO"


def _range(stat: dict[str, float] | None) -> str:
    return "n/a" if stat is None else f"{stat['min']:.2f}-{stat['max']:.2f}"


def reference_tables(ref: dict[str, Any]) -> list[Table]:
    t: Timing = ref["timing"]
    rows = []
    for name in A_CONTENDERS:
        vs = t.ratio(name, "dropkit")
        rows.append([name, _ms(t.median(name)), _x(vs), _range(vs), _spread(vs), _faults(t, name)])
    shape = "x".join(map(str, ref["input"]))
    title = f"A. MC-dropout inference: {ref['model']}, input {shape}, T={ref['samples']}, fp32"
    header = ["contender", "ms per call", "vs dropkit", "per-round range", "spread", "page faults per call"]
    timing_table = Table(title, header, rows)

    rows = []
    for num, den, target in A_RATIOS:
        stat = t.ratio(num, den)
        goal = "" if target is None else f"{target[0]} {target[1]:.2f}x"
        rows.append([f"{num}/{den}", _x(stat), _range(stat), _spread(stat), goal, _met(stat, target)])
    ratio_table = Table("A. Key ratios (median of per-round ratios)",
                        ["ratio", "median", "per-round range", "spread", "target", "met"], rows)  # fmt: skip
    return [timing_table, ratio_table]


def fallback_table(results: list[dict[str, Any]]) -> Table:
    rows = []
    for r in results:
        t: Timing = r["timing"]
        stat = t.ratio("loop", "dropkit")
        stacked = _ms(t.median("stacked-torch")) if "stacked-torch" in t.times or "stacked-torch" in t.errors else "n/a"
        rows.append(
            [r["name"], "x".join(map(str, r["input"])), str(r["samples"]), r["path"], _ms(t.median("loop")), stacked,
             _ms(t.median("dropkit")), _x(stat), _range(stat), _spread(stat), _b_met(stat), _ms(t.median("copy")),
             _x(t.ratio("dropkit", "copy")), f"{_faults(t, 'loop')} / {_faults(t, 'dropkit')}"]
        )  # fmt: skip
    header = ["model", "input", "T", "predict path", "loop ms", "stacked-torch ms", "dropkit ms", "loop/dropkit",
              "per-round range", "spread", "dropkit never slower", "copy ms", "dropkit/copy",
              "page faults loop / dropkit"]  # fmt: skip
    note = "; ".join(f"{r['name']}: {r['model']}" for r in results) + "."
    return Table("B. Models without the Sequential prefix trick: loop vs dropkit", header, rows, note)


def tables(results: dict[str, Any]) -> list[Table]:
    return [*reference_tables(results["reference"]), fallback_table(results["fallbacks"])]


def _errors(results: dict[str, Any]) -> list[str]:
    seen: dict[str, list[str]] = {}
    cases = [("reference", results["reference"]["timing"])]
    cases += [(r["name"], r["timing"]) for r in results["fallbacks"]]
    for label, timing in cases:
        for name, err in timing.errors.items():
            seen.setdefault(f"{name}: {err}", []).append(label)
    return [f"{err}  [{', '.join(labels)}]" for err, labels in seen.items()]


_LEGEND = (
    "Times: median over rounds of milliseconds per call (every contender returns softmax probabilities of all T "
    "samples; dropkit also returns MCResult's summary statistics). Ratios: median of per-round ratios (a/b > 1: a "
    "is slower); loop/dropkit is dropkit's speedup, dropkit/floor its overhead over the no-dropout stacked forward "
    "with the prefix computed once, dropkit/copy its time in copies of its dropout sites' activations (T times "
    "each dropout module's input, read and written once). spread: (max - min) / median of that per-round ratio; "
    f"'!' above {NOISY:.0%}."
)


def _load_average() -> float | None:
    """The 1-minute load average (other processes competing for the CPUs), ``None`` where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _machine_lines(m: dict[str, Any], cfg: Config) -> list[str]:
    load = f"load average (1 min): {m.get('load_average_start')} at start, {m.get('load_average_end')} at end"
    return [
        f"date: {m['date_utc']}",
        f"cpu: {m['cpu']} ({m['cpu_count']} CPUs, {m['cpus_usable']} usable); {m['platform']}",
        f"threads: torch {m['torch_threads']}, numba {m['numba_threads']} ({m['numba_threading_layer']} layer); {load}",
        f"versions: python {m['python']}, torch {m['torch']}, numba {m['numba']}, dropkit {m['dropkit']} "
        f"(cpu backend: {m['dropkit_cpu_backend']})",
        f"allocator: {m.get('allocator', 'glibc defaults')}",
        f"settings: {cfg.rounds} rounds, warmup {cfg.warmup} call(s), samples >= {cfg.min_sample_s * 1e3:.0f} ms; "
        f"A: T={cfg.samples_a}, batch {cfg.batch_a}; B: T={cfg.samples_b}, batches {cfg.batch_cnn} (cnn), "
        f"{cfg.batch_bn} (bn-train), {cfg.batch_tf}x{cfg.seq_tf} (transformer, lstm)",
    ]


def render_text(results: dict[str, Any], cfg: Config) -> str:
    parts = ["\n".join(["dropkit MC-dropout benchmark: predict vs loops", *_machine_lines(results["machine"], cfg)])]
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
        names = list(obj.times)
        ratios = {f"{a}/{b}": obj.ratios(a, b) for a in names for b in names if a != b}
        return {"seconds_per_call": obj.times, "iters_per_sample": obj.iters, "errors": obj.errors,
                "minor_faults_per_call": obj.faults,
                "per_round_ratios": ratios,
                "median_ratios": {k: statistics.median(v) for k, v in ratios.items() if v}}  # fmt: skip
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: T=5, 2 rounds, small batches")
    parser.add_argument("--rounds", type=int, help="rounds per case (default 7; 2 with --quick)")
    parser.add_argument("--min-sample-ms", type=float, help="minimum duration of one timing sample (default 20)")
    parser.add_argument("--out", metavar="FILE", help="write the results as a Markdown section to FILE")
    parser.add_argument("--json", metavar="FILE", help="dump the raw numbers as JSON to FILE")
    parser.add_argument("--heading", default="MC-dropout sampling speed", help="heading of the Markdown section")
    parser.add_argument("--steady-heap", action="store_true",
                        help=f"re-run this script with GLIBC_TUNABLES={STEADY_HEAP} (no page-fault churn)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run both cases, print the tables, write ``--out`` / ``--json``; return the raw results."""
    args = parse_args(argv)
    if args.steady_heap and os.environ.get("GLIBC_TUNABLES") != STEADY_HEAP:  # glibc reads it at process start
        argv = sys.argv[1:] if argv is None else list(argv)
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv],
                  {**os.environ, "GLIBC_TUNABLES": STEADY_HEAP})  # fmt: skip
    cfg = Config.quick() if args.quick else Config()
    if args.rounds is not None:
        cfg.rounds = args.rounds
    if args.min_sample_ms is not None:
        cfg.min_sample_s = args.min_sample_ms / 1e3

    kernels.backend()  # load the CPU kernels (numba) before timing anything
    load_start = _load_average()
    start = time.perf_counter()
    _log("bench_mc: A. reference MLP ...")
    reference = bench_reference(cfg)
    _log("bench_mc: B. models without the prefix trick ...")
    fallbacks = bench_fallbacks(cfg)
    allocator = f"GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}" if os.environ.get("GLIBC_TUNABLES") else None
    machine = {**machine_info(), "load_average_start": load_start, "load_average_end": _load_average(),
               "allocator": allocator or "glibc defaults (dynamic mmap and trim thresholds)"}  # fmt: skip
    results = {"machine": machine, "reference": reference, "fallbacks": fallbacks}
    _log(f"bench_mc: done in {time.perf_counter() - start:.0f} s")

    print(render_text(results, cfg), end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(render_markdown(results, cfg, args.heading))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": _jsonable(vars(cfg)), **_jsonable(results)}, f, indent=1)
    return results


if __name__ == "__main__":
    main()
