"""The ``dropkit`` command: ``dropkit explain`` walks through dropout on a handful of values.

Uses the public API only. ``main(argv)`` returns the exit code, so tests call it in-process.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch
from rich.console import Console
from rich.table import Table

from . import functional as F
from . import rng


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
    for name in ("unit", "x", "coin u", "kept?", "zeroed", f"× 1/(1-p) = × {_fmt(scale)}"):
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
    console.print(
        f"{n_kept} of {len(kept)} units kept (expected {len(kept) * (1 - p):g}). Inverted dropout scales the kept "
        f"units by 1/(1-p) = {_fmt(scale)} during training, so the expected output equals the input: "
        f"E\\[y] = (1-p) · x / (1-p) = x."
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
    console.print(
        f"In evaluation dropout is off. Inverted dropout then passes x through unchanged; classic dropout "
        f"(no scaling in training) multiplies by 1 - p = {_fmt(1 - p)} instead — the original paper's "
        "'scale the weights at test time'. Both make evaluation match the training-time average."
    )
    console.print(
        f"Mean of x: {_fmt(x.mean().item())}; mean of this training output: {_fmt(inverted.mean().item())} "
        "(one draw; averaged over many draws it equals the mean of x). "
        f"Reproduce with dropkit.functional.dropout(x, p={_fmt(p)}, seed={seed})."
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dropkit", description="Seeded, mask-free, fast dropout for PyTorch.")
    commands = parser.add_subparsers(dest="command", required=True)
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
        explain(args.values, args.p, args.seed, console)
    except (ValueError, TypeError) as error:
        parser.exit(2, f"dropkit {args.command}: error: {error}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
