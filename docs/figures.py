"""The user guide's figures, drawn with dropkit itself on every docs build (a few seconds on a CPU).

``docs/hooks.py`` calls :func:`render_all` and adds the PNGs to the site under ``figures/``; nothing is
committed. Run it by hand to look at them: ``PYTHONPATH=src python docs/figures.py /tmp/figures``.

Every figure is seeded, so two builds draw the same pictures.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import dropkit.functional as F  # noqa: E402
import dropkit.nn as dnn  # noqa: E402
from dropkit import mc, schedule  # noqa: E402

FIGURES: dict[str, Callable[[], plt.Figure]] = {}


def figure(name: str) -> Callable:
    """Register a function returning a matplotlib figure under ``name`` (a PNG file name)."""

    def register(fn: Callable[[], plt.Figure]) -> Callable[[], plt.Figure]:
        FIGURES[name] = fn
        return fn

    return register


def _digits(seed: int = 0, train_fraction: float = 0.3):
    """Standardised 8x8 digits, a small training split (so an MLP overfits quickly) and the rest for testing."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    cut = int(train_fraction * len(x))
    mean, std = x[:cut].mean(0), x[:cut].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _mlp(p: float, width: int = 128) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, width), nn.ReLU(), dnn.Dropout(p),
        nn.Linear(width, width), nn.ReLU(), dnn.Dropout(p),
        nn.Linear(width, 10),
    )  # fmt: skip


def _train(p: float, steps: int = 150, every: int = 5, seed: int = 0):
    """Full-batch Adam on the small split; return the model and the (step, train loss, test loss) history."""
    xtr, ytr, xte, yte = _digits()
    torch.manual_seed(seed)
    model = _mlp(p)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for step in range(steps + 1):
        if step % every == 0:
            model.eval()
            with torch.no_grad():
                history.append(
                    (step, float(nn.functional.cross_entropy(model(xtr), ytr)),
                     float(nn.functional.cross_entropy(model(xte), yte)))
                )  # fmt: skip
            model.train()
        if step < steps:
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr), ytr).backward()
            opt.step()
    return model.eval(), history


_TRAINED: dict[float, tuple[nn.Module, list]] = {}


def _trained(p: float):
    if p not in _TRAINED:
        _TRAINED[p] = _train(p)
    return _TRAINED[p]


@figure("overfitting.png")
def overfitting() -> plt.Figure:
    """Train and test loss of the same MLP with and without dropout: the gap is the overfitting."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, p in zip(axes, (0.0, 0.5), strict=True):
        _, history = _trained(p)
        steps, train, test = zip(*history, strict=True)
        ax.plot(steps, train, label="train loss")
        ax.plot(steps, test, label="test loss")
        ax.fill_between(steps, train, test, alpha=0.15, color="C3", label="generalisation gap")
        ax.set_title("no dropout" if p == 0 else f"dropout p = {p}")
        ax.set_xlabel("full-batch Adam steps")
        ax.set_yscale("log")
    axes[0].set_ylabel("cross-entropy (eval mode)")
    axes[1].legend(loc="upper right", fontsize=8)
    fig.suptitle("64-128-128-10 MLP on 539 training digits (30 %), tested on the other 1,258")
    fig.tight_layout()
    return fig


@figure("masks.png")
def masks() -> plt.Figure:
    """What each variant multiplies a (channels, height, width) feature map by, in training."""
    x = torch.ones(1, 6, 8, 8)
    panels = [
        ("dropout (element-wise), p = 0.5", F.dropout(x, 0.5, seed=8)),
        ("dropout2d (whole channels), p = 0.5", F.dropout2d(x, 0.5, seed=8)),
        ("gaussian_dropout, p = 0.5", F.gaussian_dropout(x, 0.5, seed=8)),
    ]
    fig, axes = plt.subplots(len(panels), 6, figsize=(9, 4.8))
    for row, (title, y) in enumerate(panels):
        for c in range(6):
            ax = axes[row, c]
            ax.imshow(y[0, c].numpy(), cmap="viridis", vmin=0, vmax=2.5)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_title(title, fontsize=9, loc="left")
    fig.suptitle("the multiplier of each element of 6 channels of 8x8 (seed=8): 0, 2 = 1/(1-p), or 1 + σz")
    fig.tight_layout()
    return fig


@figure("schedules.png")
def schedules() -> plt.Figure:
    """The rate each built-in DropoutScheduler schedule sets over 100 steps, for a target rate of 0.5."""
    configs = {
        "constant": {},
        "linear (total_steps=60)": {"total_steps": 60},
        "early (cutoff=30)": {"cutoff": 30},
        "early, early_mode='linear' (cutoff=30)": {"cutoff": 30, "early_mode": "linear"},
        "late (cutoff=50)": {"cutoff": 50},
        "curriculum (total_steps=100)": {"total_steps": 100},
    }
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for label, kwargs in configs.items():
        name = label.split(" ")[0].rstrip(",")
        model = nn.Sequential(nn.Linear(2, 2), dnn.Dropout(0.5))
        sched = schedule.DropoutScheduler(model, name, **kwargs)
        rates = [model[1].p] + [sched.step()["1"] for _ in range(100)]
        ax.plot(range(101), rates, label=label, drawstyle="steps-post")
    ax.set_xlabel("step (sched.step() calls)")
    ax.set_ylabel("p of the layer")
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    return fig


@figure("mc_uncertainty.png")
def mc_uncertainty() -> plt.Figure:
    """MC-dropout entropy and mutual information on test digits and on inputs unlike any digit."""
    model, _ = _trained(0.5)
    _, _, xte, yte = _digits()
    noise = torch.randn(len(xte), 64, generator=torch.Generator().manual_seed(1)) * 2.0
    known = mc.predict(model, xte, samples=50, seed=0)
    unknown = mc.predict(model, noise, samples=50, seed=0)
    correct = known.majority == yte
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, field, title in ((axes[0], "entropy", "predictive entropy H (nats)"),
                             (axes[1], "mutual_information", "mutual information (BALD, nats)")):  # fmt: skip
        value_known = getattr(known, field)
        bins = torch.linspace(0, max(float(getattr(unknown, field).max()), float(value_known.max())), 30).numpy()
        ax.hist(value_known[correct].numpy(), bins=bins, alpha=0.6, label="test digits, right", density=True)
        ax.hist(value_known[~correct].numpy(), bins=bins, alpha=0.6, label="test digits, wrong", density=True)
        ax.hist(getattr(unknown, field).numpy(), bins=bins, alpha=0.5, label="Gaussian noise inputs", density=True)
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("density")
    axes[1].legend(fontsize=8)
    fig.suptitle("mc.predict(model, x, samples=50): the p = 0.5 MLP of the overfitting figure")
    fig.tight_layout()
    return fig


def render_all() -> dict[str, bytes]:
    """Return ``{file name: PNG bytes}`` for every registered figure."""
    torch.set_num_threads(1)  # small matmuls: one thread is fastest, and never oversubscribes a shared machine
    out = {}
    for name, draw in FIGURES.items():
        fig = draw()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110)
        plt.close(fig)
        out[name] = buffer.getvalue()
    return out


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "figures")
    target.mkdir(parents=True, exist_ok=True)
    for name, png in render_all().items():
        (target / name).write_bytes(png)
        print(target / name)
