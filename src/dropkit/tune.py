"""Dropout-rate search with Optuna and a Hyperband pruner (the seed texts tune the rate with Keras' Hyperband).

:func:`tune` searches the drop probability per layer type (input, hidden: 0 to 0.8 in steps of 0.1, as in the
seeds) and the hidden width, training each trial with the demo's loop and reporting the validation loss after
every epoch so Hyperband stops poor trials early. Studies live in an Optuna storage: SQLite in the output
folder by default (a re-run resumes the study), or any storage URL — a database server lets several
machines search one study together. Works on the built-in MLP or on your own ``build_model(params)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .demo import data as demo_data
from .demo import lab

__all__ = ["tune", "default_space", "split_validation"]

RATES = [round(0.1 * i, 1) for i in range(9)]  #: 0.0 .. 0.8 in steps of 0.1
WIDTHS = [128, 256, 512, 1024]


def default_space(trial: Any) -> dict[str, Any]:
    """Suggest ``p_input``, ``p_hidden`` and ``width`` for a trial.

    Example:
        >>> import optuna
        >>> default_space(optuna.trial.FixedTrial({"p_input": 0.2, "p_hidden": 0.5, "width": 256}))
        {'p_input': 0.2, 'p_hidden': 0.5, 'width': 256}
    """
    return {
        "p_input": trial.suggest_categorical("p_input", RATES),
        "p_hidden": trial.suggest_categorical("p_hidden", RATES),
        "width": trial.suggest_categorical("width", WIDTHS),
    }


def _default_builder(features: int, classes: int) -> Callable[[dict[str, Any]], nn.Module]:
    def build(params: dict[str, Any]) -> nn.Module:
        spec = lab.RunSpec("trial", "trial", params["p_input"], params["p_hidden"])
        return lab.build_mlp(features, classes, spec, hidden=params["width"])

    return build


def split_validation(dataset: demo_data.Dataset, fraction: float = 0.2, seed: int = 0) -> demo_data.Dataset:
    """Hold out ``fraction`` of the training set as the validation split (stored as ``x_test`` / ``y_test``).

    Example:
        >>> x, y = torch.rand(10, 4), torch.arange(10) % 2
        >>> ds = demo_data.Dataset("toy", x, y, x[:3], y[:3], (2, 2), classes=2)
        >>> val = split_validation(ds, fraction=0.2, seed=0)
        >>> len(val.x_train), len(val.x_test)  # the original test split is not used
        (8, 2)
    """
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset.x_train), generator=g)
    cut = max(1, int(len(order) * fraction))
    val, train = order[:cut], order[cut:]
    return demo_data.Dataset(
        dataset.name, dataset.x_train[train], dataset.y_train[train], dataset.x_train[val], dataset.y_train[val],
        dataset.image_shape, dataset.classes,
    )  # fmt: skip


def tune(
    dataset: demo_data.Dataset,
    *,
    build_model: Callable[[dict[str, Any]], nn.Module] | None = None,
    space: Callable[[Any], dict[str, Any]] = default_space,
    trials: int = 20,
    epochs: int = 30,
    out: str | Path = "dropkit-tune",
    storage: str | None = None,
    study_name: str = "dropkit",
    seed: int = 0,
    plots: bool = True,
    callbacks: list[Callable] | None = None,
) -> Any:
    """Search dropout rates (and width) on ``dataset``'s training set; return the Optuna study.

    Args:
        dataset: Training data; 20 % of its training split is held out for validation (its test split is not
            used).
        build_model: ``params -> nn.Module`` for your own model; ``params`` holds what ``space`` suggested.
            Default: the demo's MLP with dropkit dropout (``p_input``, ``p_hidden``, ``width``).
        space: ``trial -> params``. Default: :func:`default_space`.
        trials: Number of trials to run now (a resumed study keeps its earlier ones).
        epochs: Maximum epochs per trial (Hyperband's maximum resource).
        out: Folder for the SQLite study (``study.db``) and the plots.
        storage: Optuna storage URL; default ``sqlite:///<out>/study.db``.
        study_name: Study name inside the storage.
        seed: Seed of the sampler and of every trial's training.
        plots: Save ``optimization_history.png`` and ``param_importances.png`` in ``out``.
        callbacks: Extra Optuna callbacks (e.g. progress reporting).

    Raises:
        ValueError: If ``trials`` or ``epochs`` is not a positive int.
    """
    import optuna

    for name, value in (("trials", trials), ("epochs", epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"tune: {name} must be an int >= 1, but got {value!r}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    split = split_validation(dataset, seed=seed)
    build = build_model or _default_builder(dataset.features, dataset.classes)

    def objective(trial: Any) -> float:
        params = space(trial)
        torch.manual_seed(seed)
        model = build(params)
        config = lab.Config(epochs=epochs, seed=seed)

        def report(epoch: int, history: lab.History) -> None:
            trial.report(history.test_loss[-1], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        history = lab.train(model, split, config, report)
        return history.test_loss[-1]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        load_if_exists=True,
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3),
    )
    study.optimize(objective, n_trials=trials, callbacks=callbacks or [])
    if plots:
        _plots(study, out)
    return study


def _plots(study: Any, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    written = []
    figures = {"optimization_history": optuna.visualization.matplotlib.plot_optimization_history}
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(completed) >= 2:
        figures["param_importances"] = optuna.visualization.matplotlib.plot_param_importances
    for name, plot in figures.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot(study)
        except (ValueError, RuntimeError):  # e.g. importances need parameters that vary across trials
            continue
        axes.figure.set_size_inches(7, 4)
        axes.figure.tight_layout()
        path = out / f"{name}.png"
        axes.figure.savefig(path, dpi=110)
        plt.close(axes.figure)
        written.append(path)
    return written
