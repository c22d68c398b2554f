"""CPU benchmark: dropkit's recurrent dropout against ``torch.nn.LSTM`` / ``torch.nn.GRU`` (no dropout).

What it measures (CPU, fp32, training mode, seq 100, batch 64, input 256, hidden 256, one layer by default):

- ``torch``: ``torch.nn.LSTM`` without dropout, torch's fused kernel: the baseline every ratio divides by.
- ``dk-io``: ``dropkit.nn.LSTM(dropout=0.25, output_dropout=0.25)``: variational input/output masks around
  torch's fused kernel.
- ``dk-rec``: ``dropkit.nn.LSTM(recurrent_dropout=0.25)``: the step loop (input projection of all steps in
  one matmul, one ``addmm`` and the gate arithmetic per step).
- ``dk-all``: all three rates 0.25.
- ``wdrop``: ``dropkit.nn.WeightDrop(torch.nn.LSTM, ["weight_hh_l0"], p=0.25)``: DropConnect on the
  recurrent matrix, torch's fused kernel through ``torch.func.functional_call``.
- the same for GRU: ``torch`` vs ``dk-rec``.

Each is timed forward alone (under ``torch.no_grad()``, training mode: masks drawn) and forward + backward
(``out.sum().backward()`` with the input requiring grad, grads cleared after each call). All contenders share
one set of weights.

How it times: every contender is warmed up, then the contenders of a case run interleaved in rounds (each
round runs every contender once, same order); a sample loops enough calls to last ``--min-sample-ms``.
Reported: median time per contender and the MEDIAN OF PER-ROUND RATIOS contender/torch, with the spread
(max - min over rounds, relative to the median). The issue's target: ``dk-rec`` ≤ 3× ``torch``.

Run::

    .venv/bin/python benchmarks/bench_rnn.py               # full run, 7 rounds (about a minute)
    .venv/bin/python benchmarks/bench_rnn.py --quick       # smoke run: tiny sizes, 2 rounds
    .venv/bin/python benchmarks/bench_rnn.py --threads 1 --layers 2 --json raw.json
    .venv/bin/python benchmarks/bench_rnn.py --threads 1 --clock cpu   # a loaded machine: CPU time
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

import dropkit.nn as dnn

P = 0.25


@dataclass
class Config:
    """What to run."""

    seq: int = 100
    batch: int = 64
    input_size: int = 256
    hidden: int = 256
    layers: int = 1
    rounds: int = 7
    warmup: int = 2
    min_sample_s: float = 0.2

    @classmethod
    def quick(cls) -> Config:
        """Smoke-test settings: a second or two."""
        return cls(seq=8, batch=4, input_size=16, hidden=16, rounds=2, warmup=1, min_sample_s=0.002)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def _sample(fn: Callable[[], object], iters: int) -> float:
    start = _clock()
    for _ in range(iters):
        fn()
    return (_clock() - start) / iters


def interleaved(fns: dict[str, Callable[[], object]], cfg: Config) -> dict[str, list[float]]:
    """Warm up every contender, then time them in ``cfg.rounds`` rounds, each running all of them in order."""
    for fn in fns.values():
        for _ in range(cfg.warmup):
            fn()
    iters = {
        name: max(1, math.ceil(cfg.min_sample_s / max(min(_sample(fn, 1) for _ in range(2)), 1e-9)))
        for name, fn in fns.items()
    }
    times: dict[str, list[float]] = {name: [] for name in fns}
    gc.collect()
    gc_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(cfg.rounds):
            for name, fn in fns.items():
                times[name].append(_sample(fn, iters[name]))
    finally:
        if gc_enabled:
            gc.enable()
    return times


def _contenders(kind: str, cfg: Config) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    base_cls = getattr(torch.nn, kind)
    base = base_cls(cfg.input_size, cfg.hidden, num_layers=cfg.layers)
    mods: dict[str, torch.nn.Module] = {"torch": base}
    dk = getattr(dnn, kind)
    variants = {"dk-rec": {"recurrent_dropout": P}}
    if kind == "LSTM":
        variants = {
            "dk-io": {"dropout": P, "output_dropout": P},
            "dk-rec": {"recurrent_dropout": P},
            "dk-all": {"dropout": P, "recurrent_dropout": P, "output_dropout": P},
        }
    for name, kwargs in variants.items():
        m = dk(cfg.input_size, cfg.hidden, num_layers=cfg.layers, **kwargs)
        m.load_state_dict(base.state_dict())
        mods[name] = m
    if kind == "LSTM":
        inner = base_cls(cfg.input_size, cfg.hidden, num_layers=cfg.layers)
        inner.load_state_dict(base.state_dict())
        mods["wdrop"] = dnn.WeightDrop(inner, [f"weight_hh_l{i}" for i in range(cfg.layers)], p=P)
    for m in mods.values():
        m.train()
    return mods


def _calls(mods: dict[str, torch.nn.Module], cfg: Config, mode: str) -> dict[str, Callable[[], object]]:
    x = torch.randn(cfg.seq, cfg.batch, cfg.input_size)
    xg = x.clone().requires_grad_(True)
    calls: dict[str, Callable[[], object]] = {}
    for name, m in mods.items():
        if mode == "fwd":

            def forward(m=m) -> None:
                with torch.no_grad():
                    m(x)

            calls[name] = forward
        else:

            def forward_backward(m=m) -> None:
                m(xg)[0].sum().backward()
                xg.grad = None
                for p in m.parameters():
                    p.grad = None

            calls[name] = forward_backward
    return calls


def run(cfg: Config) -> list[dict]:
    """Time every case; return one row per (cell, pass, contender)."""
    rows = []
    for kind in ("LSTM", "GRU"):
        mods = _contenders(kind, cfg)
        for mode in ("fwd", "fwd+bwd"):
            times = interleaved(_calls(mods, cfg, mode), cfg)
            for name, ts in times.items():
                ratios = [a / b for a, b in zip(ts, times["torch"], strict=True)]
                med = statistics.median(ratios)
                rows.append(
                    {
                        "cell": kind,
                        "pass": mode,
                        "contender": name,
                        "ms": 1e3 * statistics.median(ts),
                        "ratio": med,
                        "spread": (max(ratios) - min(ratios)) / med,
                    }
                )
            print(f"# {kind} {mode} done", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict], cfg: Config) -> str:
    """Format the rows as a Markdown table."""
    lines = [
        f"seq {cfg.seq}, batch {cfg.batch}, input {cfg.input_size}, hidden {cfg.hidden}, layers {cfg.layers}, "
        f"p = {P}, fp32 CPU, {torch.get_num_threads()} thread(s), {cfg.rounds} rounds, "
        f"{'CPU' if _clock is time.process_time else 'wall'} time",
        "",
        "| cell | pass | contender | median ms | × torch (median of per-round ratios) | spread |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {r['pass']} | {r['contender']} | {r['ms']:.2f} | {r['ratio']:.2f} | "
            f"{100 * r['spread']:.0f}% |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Run the benchmark from the command line; return the rows."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 rounds (smoke test)")
    parser.add_argument("--rounds", type=int, help="rounds of interleaved timing")
    parser.add_argument("--layers", type=int, help="num_layers of every RNN")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time (default) or this process's CPU time: steadier on a loaded machine with --threads 1",
    )
    args = parser.parse_args(argv)
    global _clock
    _clock = CLOCKS[args.clock]
    cfg = Config.quick() if args.quick else Config()
    if args.rounds:
        cfg.rounds = args.rounds
    if args.layers:
        cfg.layers = args.layers
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(cfg)
    print(table(rows, cfg))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": cfg.__dict__, "threads": torch.get_num_threads(), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
