"""``dropkit demo``: train the same network with and without dropout on real data and report what changes.

- :mod:`dropkit.demo.data` — bundled digits, MNIST / Fashion-MNIST IDX loading, input shifts.
- :mod:`dropkit.demo.lab` — the runs, training loop, MC-dropout analysis.
- :mod:`dropkit.demo.report` — plots, ``results.json``, ``report.md``.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import data, lab, report

__all__ = ["run", "data", "lab", "report"]


def run(
    config: lab.Config,
    *,
    dataset: str = "digits",
    data_dir: str | Path | None = None,
    out: str | Path = "dropkit-demo",
    train_size: int | None = None,
    test_size: int | None = None,
    console: Console | None = None,
) -> dict:
    """Load the data, train every run with progress bars, print the summary table, write the report.

    Returns ``{"results": ..., "files": [...], "seconds": ...}``.
    """
    console = console or Console()
    start = time.perf_counter()
    dset = data.load(dataset, data_dir=data_dir, train_size=train_size, test_size=test_size, seed=config.seed)
    console.print(
        f"[bold]dropkit demo[/]: {dset.name}, {len(dset.x_train)} training / {len(dset.x_test)} test images, "
        f"MLP {config.depth}×{config.hidden}, {config.epochs} epochs, MC samples {config.samples}"
    )
    runs = lab.default_runs(config.p_input, config.p_hidden)
    columns = (
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        tasks = {s.name: progress.add_task(s.name, total=config.epochs, info="") for s in runs}

        def on_epoch(spec: lab.RunSpec, epoch: int, history: lab.History) -> None:
            info = f"train {history.train_acc[-1]:.3f}  test {history.test_acc[-1]:.3f}"
            progress.update(tasks[spec.name], completed=epoch + 1, info=info)

        results = lab.run_all(dset, config, runs, on_epoch)
    seconds = time.perf_counter() - start
    rows = lab.summary_rows(results)
    table = Table(title=f"dropout on {dset.name}: same network, budget and seed ({seconds:.0f} s)")
    for title in report.COLUMNS.values():
        table.add_column(title, justify="right")
    for row in rows:
        table.add_row(*(report.fmt(row[k]) for k in report.COLUMNS))
    console.print(table)
    files = report.write_report(results, dset, config, Path(out), seconds)
    console.print(f"report: {Path(out) / 'report.md'} ({len(files)} files)")
    return {"results": results, "files": files, "seconds": seconds}
