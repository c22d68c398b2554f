"""The demo's report: PNG plots, ``results.json`` and ``report.md`` embedding them.

Plots: learning curves with the train–test gap shaded (one panel per run), reliability diagrams
(deterministic vs MC dropout), uncertainty histograms on clean vs shifted inputs, and the test images the
MC ensemble is most and least certain about.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .. import metrics
from .data import Dataset
from .lab import Config, summary_rows

__all__ = ["write_report"]

COLUMNS = {
    "run": "run",
    "train_acc": "train acc",
    "test_acc": "test acc",
    "gap": "gap (train - test)",
    "test_nll": "test NLL",
    "test_ece": "test ECE",
    "mc_acc": "MC acc (mean)",
    "vote_acc": "MC acc (vote)",
    "mc_nll": "MC NLL",
    "mc_ece": "MC ECE",
    "auroc_rotated_mi": "AUROC rotated (MI)",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def _learning_curves(results: dict, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 3.2), sharey=True, squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items(), strict=True):
        h = r["history"]
        epochs = range(1, len(h["train_acc"]) + 1)
        ax.plot(epochs, h["train_acc"], label="train")
        ax.plot(epochs, h["test_acc"], label="test")
        ax.fill_between(epochs, h["test_acc"], h["train_acc"], alpha=0.25, color="tab:red", label="gap")
        ax.set_title(f"{name}\nfinal gap {r['gap']:.3f}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (eval mode)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _reliability(results: dict, data: Dataset, path: Path) -> None:
    plt = _pyplot()
    panels = [("none", "deterministic", results["none"]["probs"])] if "none" in results else []
    if "inverted" in results:
        panels += [("inverted", "deterministic", results["inverted"]["probs"])]
        if "mc_result" in results["inverted"]:
            panels += [("inverted", "MC dropout", results["inverted"]["mc_result"].mean)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.2), squeeze=False)
    for ax, (run, kind, probs) in zip(axes[0], panels, strict=True):
        value, rel = metrics.ece(probs, data.y_test, bins=10)
        centres = ((rel.edges[:-1] + rel.edges[1:]) / 2).numpy()
        ax.bar(centres, torch.nan_to_num(rel.accuracy).numpy(), width=0.09, alpha=0.7, label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set_title(f"{run}, {kind}\nECE {value:.3f}", fontsize=9)
        ax.set_xlabel("confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _uncertainty(run: dict, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, score in zip(axes, ("entropy", "mutual_information"), strict=True):
        for shift, values in run["uncertainty"].items():
            ax.hist(values[score].numpy(), bins=30, alpha=0.5, density=True, label=shift)
        aurocs = ", ".join(f"{s} {a[score]:.2f}" for s, a in run["auroc"].items())
        ax.set_title(f"{score.replace('_', ' ')} (AUROC vs clean: {aurocs})", fontsize=9)
        ax.set_xlabel("nats")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _certain_images(run: dict, data: Dataset, path: Path, count: int = 8) -> None:
    plt = _pyplot()
    draw = run["mc_result"]
    order = torch.argsort(draw.entropy)
    rows = [("most certain", order[:count]), ("least certain", order.flip(0)[:count])]
    fig, axes = plt.subplots(2, count, figsize=(1.3 * count, 3.2))
    for r, (title, idx) in enumerate(rows):
        for c, i in enumerate(idx.tolist()):
            ax = axes[r][c]
            ax.imshow(data.x_test[i].reshape(data.image_shape).numpy(), cmap="gray_r")
            ok = int(draw.majority[i]) == int(data.y_test[i])
            ax.set_title(f"{int(draw.majority[i])} ({'ok' if ok else 'wrong'})\nH={float(draw.entropy[i]):.2f}",
                          fontsize=7)  # fmt: skip
            ax.axis("off")
        axes[r][0].text(-0.5, 0.5, title, transform=axes[r][0].transAxes, rotation=90, va="center", ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _jsonable(results: dict) -> dict:
    keep = ("spec", "history", "gap", "loss_gap", "parameters", "deterministic", "mc", "auroc", "shifted_accuracy",
            "fold_classic")  # fmt: skip
    return {name: {k: r[k] for k in keep if k in r} for name, r in results.items()}


def fmt(value: float | str) -> str:
    """A table cell: three decimals, an en dash for NaN (a run without that measurement)."""
    if isinstance(value, str):
        return value
    return "–" if math.isnan(value) else f"{value:.3f}"


def markdown_table(rows: list[dict]) -> str:
    """The summary rows as a Markdown table."""
    lines = ["| " + " | ".join(COLUMNS.values()) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(row[k]) for k in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def write_report(results: dict, data: Dataset, config: Config, out: Path, seconds: float) -> list[Path]:
    """Write plots, ``results.json`` and ``report.md`` into ``out``; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "learning_curves": out / "learning_curves.png",
        "reliability": out / "reliability.png",
        "uncertainty": out / "uncertainty.png",
        "certain_images": out / "certain_images.png",
    }
    _learning_curves(results, files["learning_curves"])
    _reliability(results, data, files["reliability"])
    focus = results.get("inverted")
    if focus is not None and "uncertainty" in focus:
        _uncertainty(focus, files["uncertainty"])
        _certain_images(focus, data, files["certain_images"])
    else:
        files.pop("uncertainty")
        files.pop("certain_images")
    rows = summary_rows(results)
    payload = {
        "dataset": {"name": data.name, "train": len(data.x_train), "test": len(data.x_test)},
        "config": vars(config),
        "seconds": seconds,
        "summary": rows,
        "runs": _jsonable(results),
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=float))
    gaps = {r["run"]: r["gap"] for r in rows}
    verdict = ""
    if "none" in gaps and "inverted" in gaps:
        better = gaps["inverted"] < gaps["none"]
        verdict = (
            f"Generalisation gap (train - test accuracy): {gaps['none']:.3f} without dropout, "
            f"{gaps['inverted']:.3f} with inverted dropout — dropout {'reduced' if better else 'did NOT reduce'} "
            "the gap in this run.\n\n"
        )
    fold = results.get("classic", {}).get("fold_classic")
    fold_line = (
        f"Classic dropout folded into the next layers' weights ({', '.join(fold['layers'])}): the eval outputs "
        f"match the test-time-scaled model to {fold['max_abs_difference']:.1e}.\n\n"
        if fold
        else ""
    )
    images = "\n\n".join(f"![{name}]({path.name})" for name, path in files.items())
    (out / "report.md").write_text(
        f"# dropkit demo: dropout on {data.name}\n\n"
        f"{len(data.x_train)} training and {len(data.x_test)} test images; MLP {config.depth}×{config.hidden} "
        f"ReLU, Adam lr {config.lr}, {config.epochs} epochs, batch {config.batch_size}, seed {config.seed}; "
        f"MC dropout with {config.samples} samples; {seconds:.0f} s.\n\n"
        f"{verdict}{fold_line}{markdown_table(rows)}\n\n{images}\n"
    )
    return [*files.values(), out / "results.json", out / "report.md"]
