"""The demo's experiments: the same MLP trained with and without dropout, then evaluated and MC-sampled.

Runs (same data, budget and seed): no dropout; inverted dropout with the seed texts' presets (input 0.2,
hidden 0.5); classic dropout (no scaling in training, ×(1-p) at test time); inverted dropout with hidden
layers widened to n/(1-p) (Srivastava et al. 2014's rule); Gaussian dropout with the same rates.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .. import mc, metrics, surgery
from .. import nn as dnn
from .data import Dataset, add_noise, rotate

__all__ = ["RunSpec", "Config", "default_runs", "build_mlp", "train", "evaluate", "run_all"]


@dataclass(frozen=True)
class RunSpec:
    """One training run of the demo."""

    name: str
    label: str
    p_input: float = 0.0
    p_hidden: float = 0.0
    kind: str = "dropout"  # "none", "dropout" or "gaussian"
    mode: str = "inverted"
    widen: bool = False


@dataclass
class Config:
    """Budget and settings shared by every run."""

    epochs: int = 60
    hidden: int = 512
    depth: int = 2
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"  # "adam" or "sgd" (momentum 0.9)
    samples: int = 50
    p_input: float = 0.2
    p_hidden: float = 0.5
    seed: int = 0
    rotation: float = 40.0
    noise: float = 0.4


def default_runs(p_input: float, p_hidden: float) -> list[RunSpec]:
    """The five runs the demo compares."""
    rates = f"input {p_input:g}, hidden {p_hidden:g}"
    return [
        RunSpec("none", "no dropout", kind="none"),
        RunSpec("inverted", f"inverted dropout ({rates})", p_input, p_hidden),
        RunSpec("classic", f"classic dropout, x(1-p) at test time ({rates})", p_input, p_hidden, mode="classic"),
        RunSpec("widened", f"inverted dropout, hidden width n/(1-p) ({rates})", p_input, p_hidden, widen=True),
        RunSpec("gaussian", f"Gaussian dropout, variance p/(1-p) ({rates})", p_input, p_hidden, kind="gaussian"),
    ]


def _noise(spec: RunSpec, p: float) -> nn.Module:
    if spec.kind == "none" or p == 0:
        return nn.Identity()
    if spec.kind == "gaussian":
        return dnn.GaussianDropout(p)
    return dnn.Dropout(p, mode=spec.mode)


def build_mlp(features: int, classes: int, spec: RunSpec, hidden: int = 1024, depth: int = 2) -> nn.Sequential:
    """``[dropout] → (Linear → ReLU → [dropout]) × depth → Linear``; widened runs use ``hidden / (1 - p)`` units."""
    width = round(hidden / (1.0 - spec.p_hidden)) if spec.widen else hidden
    layers: list[nn.Module] = [_noise(spec, spec.p_input)]
    size = features
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.ReLU(), _noise(spec, spec.p_hidden)]
        size = width
    layers.append(nn.Linear(size, classes))
    return nn.Sequential(*layers)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, torch.Tensor]:
    """Deterministic (eval-mode) loss, accuracy and probabilities."""
    was_training = model.training
    model.eval()
    logits = model(x)
    model.train(was_training)
    probs = torch.softmax(logits, 1)
    loss = float(nn.functional.cross_entropy(logits, y))
    return loss, float((probs.argmax(1) == y).float().mean()), probs


@dataclass
class History:
    """Per-epoch train and test loss and accuracy (eval-mode)."""

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)


def train(
    model: nn.Module,
    data: Dataset,
    config: Config,
    on_epoch: Callable[[int, History], None] | None = None,
) -> History:
    """Train with cross-entropy and record eval-mode loss and accuracy on train and test after every epoch.

    Adam or SGD (momentum 0.9), with cosine learning-rate decay over the whole budget.
    """
    g = torch.Generator().manual_seed(config.seed)
    if config.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    history = History()
    n = len(data.x_train)
    steps = config.epochs * math.ceil(n / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)  # settle at the end of the budget
    for epoch in range(config.epochs):
        model.train()
        for batch in torch.randperm(n, generator=g).split(config.batch_size):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(data.x_train[batch]), data.y_train[batch]).backward()
            optimizer.step()
            schedule.step()
        for split, (x, y) in (("train", (data.x_train, data.y_train)), ("test", (data.x_test, data.y_test))):
            loss, acc, _ = evaluate(model, x, y)
            getattr(history, f"{split}_loss").append(loss)
            getattr(history, f"{split}_acc").append(acc)
        if on_epoch is not None:
            on_epoch(epoch, history)
    return history


def _scores(probs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    return {
        "accuracy": float((probs.argmax(1) == y).float().mean()),
        "nll": metrics.nll(probs, y),
        "ece": metrics.ece(probs, y)[0],
    }


def analyse(model: nn.Module, spec: RunSpec, data: Dataset, config: Config) -> dict:
    """Deterministic vs MC evaluation, voting, and uncertainty on shifted inputs of a trained model."""
    model.eval()
    _, _, probs = evaluate(model, data.x_test, data.y_test)
    result: dict = {"deterministic": _scores(probs, data.y_test), "probs": probs}
    if spec.kind == "none":
        return result
    draw = mc.predict(model, data.x_test, config.samples, seed=config.seed)
    result["mc"] = _scores(draw.mean, data.y_test)
    result["mc"]["vote_accuracy"] = float((draw.majority == data.y_test).float().mean())
    result["mc_result"] = draw
    shifted = {
        "rotated": rotate(data.x_test, data.image_shape, config.rotation),
        "noisy": add_noise(data.x_test, config.noise, seed=config.seed),
    }
    result["uncertainty"] = {"clean": {"entropy": draw.entropy, "mutual_information": draw.mutual_information}}
    result["auroc"] = {}
    for shift, x in shifted.items():
        other = mc.predict(model, x, config.samples, seed=config.seed + 1)
        result["uncertainty"][shift] = {"entropy": other.entropy, "mutual_information": other.mutual_information}
        labels = torch.cat([torch.zeros(len(x)), torch.ones(len(x))])
        result["auroc"][shift] = {
            score: metrics.auroc(torch.cat([getattr(draw, score), getattr(other, score)]), labels)
            for score in ("entropy", "mutual_information")
        }
        result.setdefault("shifted_accuracy", {})[shift] = float((other.majority == data.y_test).float().mean())
    if spec.mode == "classic":  # the seeds' test-time weight scaling, folded into the weights once
        twin = copy.deepcopy(model)
        folded = surgery.fold_classic(twin)
        with torch.no_grad():
            gap = float((model(data.x_test) - twin(data.x_test)).abs().max())
        result["fold_classic"] = {"layers": folded, "max_abs_difference": gap}
    return result


def run_all(
    data: Dataset,
    config: Config,
    runs: list[RunSpec],
    on_epoch: Callable[[RunSpec, int, History], None] | None = None,
) -> dict[str, dict]:
    """Train and analyse every run with the same seed and budget; return ``{name: results}``."""
    results = {}
    for spec in runs:
        torch.manual_seed(config.seed)
        model = build_mlp(data.features, data.classes, spec, config.hidden, config.depth)
        history = train(model, data, config, None if on_epoch is None else (lambda e, h, s=spec: on_epoch(s, e, h)))
        analysis = analyse(model, spec, data, config)
        gap = history.train_acc[-1] - history.test_acc[-1]
        results[spec.name] = {
            "spec": asdict(spec),
            "history": asdict(history),
            "gap": gap,
            "loss_gap": history.test_loss[-1] - history.train_loss[-1],
            "parameters": sum(p.numel() for p in model.parameters()),
            **analysis,
        }
    return results


def summary_rows(results: dict[str, dict]) -> list[dict[str, float | str]]:
    """One flat row of headline numbers per run (for the table, results.json and report.md)."""
    rows = []
    for name, r in results.items():
        h = r["history"]
        mc_scores = r.get("mc", {})
        auroc = r.get("auroc", {}).get("rotated", {}).get("mutual_information", math.nan)
        rows.append(
            {
                "run": name,
                "train_acc": h["train_acc"][-1],
                "test_acc": h["test_acc"][-1],
                "gap": r["gap"],
                "test_nll": r["deterministic"]["nll"],
                "test_ece": r["deterministic"]["ece"],
                "mc_acc": mc_scores.get("accuracy", math.nan),
                "vote_acc": mc_scores.get("vote_accuracy", math.nan),
                "mc_nll": mc_scores.get("nll", math.nan),
                "mc_ece": mc_scores.get("ece", math.nan),
                "auroc_rotated_mi": auroc,
            }
        )
    return rows
