"""dropkit Modules: one file per family, each a thin shell over :mod:`dropkit.functional`."""

from .dropout import (
    AlphaDropout,
    Dropout,
    Dropout1d,
    Dropout2d,
    Dropout3d,
    FeatureAlphaDropout,
    GaussianDropout,
    GaussianNoise,
)
from .structured import DropBlock1d, DropBlock2d, DropBlock3d, DropBlockScheduler, DropPath, StochasticDepth

__all__ = [
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "FeatureAlphaDropout",
    "GaussianDropout",
    "GaussianNoise",
    "StochasticDepth",
    "DropPath",
    "DropBlock1d",
    "DropBlock2d",
    "DropBlock3d",
    "DropBlockScheduler",
]
