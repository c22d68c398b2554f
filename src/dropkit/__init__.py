"""dropkit: seeded, mask-free, fast dropout for PyTorch.

- :mod:`dropkit.functional` — the ops (``dropout``, ``dropout1d/2d/3d``, ``alpha_dropout``, ...).
- :mod:`dropkit.nn` — the Modules, drop-in for ``torch.nn.Dropout*``.
- :mod:`dropkit.rng` — the counter-based Philox4x32-10 core every mask comes from.
"""

from . import functional, nn, rng

__version__ = "0.1.0"
__all__ = ["functional", "nn", "rng", "__version__"]
