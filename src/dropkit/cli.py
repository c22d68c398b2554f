"""The ``dropkit`` command: ``dropkit explain`` walks through dropout on a handful of values.

Uses the public API only. ``main(argv)`` returns the exit code, so tests call it in-process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from . import functional as F
from . import rng
from .demo.data import DataError


def _fmt(value: float) -> str:
    return f"{value:g}"


def explain(values: Sequence[float], p: float, seed: int, console: Console) -> None:
    """Print the seeds' worked example: coin flips, zeroing, 1/(1-p) scaling, eval, and classic mode."""
    x = torch.tensor(list(values), dtype=torch.float64)
    inverted = F.dropout(x, p, seed=seed)  # validates p and seed
    classic_train = F.dropout(x, p, seed=seed, mode="classic")
    classic_eval = F.dropout(x, p, training=False, mode="classic")
    coins = rng.uniform(len(x), seed).tolist()
    kept = [u >= p for u in coins]
    scale = 0.0 if p == 1 else 1.0 / (1.0 - p)

    console.rule(f"[bold]Dropout, step by step[/]  p = {_fmt(p)}, seed = {seed}")
    console.print(
        f"Each unit is dropped with probability p = {_fmt(p)} and kept with 1 - p = {_fmt(1 - p)}. "
        f"A coin u ~ U[0, 1) is drawn per unit (Philox4x32-10 at counter i for seed {seed}); "
        "the unit is kept when u ≥ p."
    )
    table = Table(title="Training pass")
    scaled = f"× 1/(1-p) = × {_fmt(scale)}" if p < 1 else "× 0 (1/(1-p) undefined)"
    for name in ("unit", "x", "coin u", "kept?", "zeroed", scaled):
        table.add_column(name, justify="right")
    for i, (xi, u, k, yi) in enumerate(zip(x.tolist(), coins, kept, inverted.tolist(), strict=False)):
        table.add_row(
            str(i + 1),
            _fmt(xi),
            f"{u:.4f}",
            "[green]kept[/]" if k else "[red]dropped[/]",
            _fmt(xi if k else 0.0),
            _fmt(yi),
        )
    console.print(table)

    n_kept = sum(kept)
    if p < 1:
        console.print(
            f"{n_kept} of {len(kept)} units kept (expected {len(kept) * (1 - p):g}). Inverted dropout scales the "
            f"kept units by 1/(1-p) = {_fmt(scale)} during training, so the expected output equals the input: "
            f"E\\[y] = (1-p) · x / (1-p) = x."
        )
    else:
        console.print(
            "p = 1 drops every unit: the training output is all zeros. 1/(1-p) is undefined there, and no "
            "scaling can bring the expected output back to x: E\\[y] = 0."
        )

    modes = Table(title="Training vs evaluation")
    modes.add_column("mode")
    modes.add_column("training output", justify="left")
    modes.add_column("evaluation output", justify="left")
    modes.add_row("inverted (standard)", " ".join(map(_fmt, inverted.tolist())), " ".join(map(_fmt, x.tolist())))
    modes.add_row(
        "classic (scale at test time)",
        " ".join(map(_fmt, classic_train.tolist())),
        " ".join(map(_fmt, classic_eval.tolist())),
    )
    console.print(modes)
    match = (
        "Both make evaluation match the training-time average."
        if p < 1
        else "At p = 1 only classic dropout matches the training-time average (0); inverted dropout's x does not."
    )
    console.print(
        f"In evaluation dropout is off. Inverted dropout then passes x through unchanged; classic dropout "
        f"(no scaling in training) multiplies by 1 - p = {_fmt(1 - p)} instead — the original paper's "
        f"'scale the weights at test time'. {match}"
    )
    average = "it equals the mean of x" if p < 1 else "it is 0"
    console.print(
        f"Mean of x: {_fmt(x.mean().item())}; mean of this training output: {_fmt(inverted.mean().item())} "
        f"(one draw; averaged over many draws {average}). "
        f"Reproduce with dropkit.functional.dropout(x, p={_fmt(p)}, seed={seed})."
    )


def _probability(text: str) -> float:
    value = float(text)
    if not (0.0 <= value < 1.0):
        raise argparse.ArgumentTypeError(f"must be in [0, 1), but got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, but got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dropkit", description="Seeded, mask-free, fast dropout for PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train with and without dropout on real data; plots and a report")
    demo.add_argument("--dataset", choices=["digits", "mnist", "fashion-mnist"], default="digits")
    demo.add_argument("--data-dir", help="folder with the MNIST / Fashion-MNIST IDX files")
    demo.add_argument("--epochs", type=_positive, default=None, help="training epochs per run")
    demo.add_argument("--p-input", type=_probability, default=0.2, help="dropout on the inputs (default 0.2)")
    demo.add_argument("--p-hidden", type=_probability, default=0.5, help="dropout on hidden layers (default 0.5)")
    demo.add_argument("--samples", type=_positive, default=50, help="MC-dropout samples (default 50)")
    demo.add_argument("--hidden", type=_positive, default=None, help="hidden units per layer")
    demo.add_argument("--train-size", type=_positive, default=None, help="training examples to keep")
    demo.add_argument("--out", default="dropkit-demo", help="report folder (default ./dropkit-demo)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quick", action="store_true", help="a few-second run (for tests)")
    tune = commands.add_parser("tune", help="search dropout rates and width with Optuna (Hyperband pruning)")
    tune.add_argument("--dataset", choices=["digits", "mnist", "fashion-mnist"], default="digits")
    tune.add_argument("--data-dir", help="folder with the MNIST / Fashion-MNIST IDX files")
    tune.add_argument("--trials", type=_positive, default=20, help="trials to run (default 20)")
    tune.add_argument("--epochs", type=_positive, default=30, help="maximum epochs per trial (default 30)")
    tune.add_argument("--train-size", type=_positive, default=None, help="training examples to keep")
    tune.add_argument("--out", default="dropkit-tune", help="folder for study.db and plots (default ./dropkit-tune)")
    tune.add_argument("--storage", help="Optuna storage URL (default: SQLite in --out; resumable)")
    tune.add_argument("--study", default="dropkit", help="study name (default dropkit)")
    tune.add_argument("--seed", type=int, default=0)
    ex = commands.add_parser("explain", help="walk through dropout on a few values (coin flips, scaling, eval)")
    ex.add_argument("--values", type=float, nargs="+", default=[2.0, 4.0, 6.0, 8.0], help="unit outputs")
    ex.add_argument("--p", type=float, default=0.5, help="drop probability in [0, 1] (default 0.5)")
    ex.add_argument("--seed", type=int, default=0, help="seed of the coin flips (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``dropkit`` command line; return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 120)
    try:
        if args.command == "explain":
            explain(args.values, args.p, args.seed, console)
        elif args.command == "demo":
            _demo(args, console)
        elif args.command == "tune":
            _tune(args, console)
    except (ValueError, TypeError, OSError, DataError) as error:
        parser.exit(2, f"dropkit {args.command}: error: {error}\n")
    return 0


def _tune(args: argparse.Namespace, console: Console) -> None:
    from rich.progress import Progress

    from .demo import data
    from .tune import tune

    train_size = args.train_size or (None if args.dataset == "digits" else 2000)
    dataset = data.load(args.dataset, data_dir=args.data_dir, train_size=train_size, seed=args.seed)
    with Progress(console=console) as progress:
        task = progress.add_task("trials", total=args.trials)
        study = tune(dataset, trials=args.trials, epochs=args.epochs, out=args.out, storage=args.storage,
                     study_name=args.study, seed=args.seed,
                     callbacks=[lambda study, trial: progress.advance(task)])  # fmt: skip
    best = study.best_trial
    table = Table(title=f"best of {len(study.trials)} trials (validation loss {best.value:.4f})")
    table.add_column("parameter")
    table.add_column("value", justify="right")
    for name, value in best.params.items():
        table.add_row(name, str(value))
    console.print(table)
    console.print(f"study: {args.storage or Path(args.out) / 'study.db'}; plots in {args.out}")


def _demo(args: argparse.Namespace, console: Console) -> None:
    from .demo import lab, run

    config = lab.Config(p_input=args.p_input, p_hidden=args.p_hidden, samples=args.samples, seed=args.seed)
    train_size, test_size = args.train_size, None
    if args.dataset != "digits" and train_size is None:
        train_size, test_size = 2000, 5000  # a small split of MNIST overfits within the demo's budget
    if args.quick:
        config.epochs, config.hidden, config.samples = 3, 64, min(args.samples, 8)
        train_size, test_size = train_size or 100, 300
    config.epochs = args.epochs or config.epochs
    config.hidden = args.hidden or config.hidden
    run(config, dataset=args.dataset, data_dir=args.data_dir, out=args.out, train_size=train_size,
        test_size=test_size, console=console)  # fmt: skip


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
