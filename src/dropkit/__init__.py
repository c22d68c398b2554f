"""dropkit: seeded, mask-free, fast dropout for PyTorch.

- :mod:`dropkit.functional` — the ops (``dropout``, ``dropout1d/2d/3d``, ``alpha_dropout``, ...).
- :mod:`dropkit.nn` — the Modules, drop-in for ``torch.nn.Dropout*``.
- :mod:`dropkit.rng` — the counter-based Philox4x32-10 core every mask comes from.
- :mod:`dropkit.mc` — Monte-Carlo dropout: ``mc_dropout(model)``, ``predict(model, x, samples=T)``.
- :mod:`dropkit.metrics` — NLL, Brier, ECE (reliability data), AUROC.
- :mod:`dropkit.surgery` — find, swap, re-rate and fold the dropout layers of any model.
- :mod:`dropkit.schedule` — ``DropoutScheduler`` (constant, linear, early/late, curriculum), presets, ``widen``.
- :mod:`dropkit.consistent` — ``frozen_masks``: replay the same masks across calls and batches, from seeds.
- :mod:`dropkit.losses` — ``rdrop_loss``: R-Drop's consistency term between two dropout passes.
"""

from . import consistent, functional, losses, mc, metrics, nn, rng, schedule, surgery

__version__ = "0.1.0"
__all__ = [
    "functional", "nn", "rng", "mc", "metrics", "surgery", "schedule", "consistent", "losses", "__version__",
]  # fmt: skip
