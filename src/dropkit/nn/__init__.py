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
from .recurrent import GRU, LSTM, WeightDrop, ZoneoutLSTMCell, weight_drop

__all__ = [
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "FeatureAlphaDropout",
    "GaussianDropout",
    "GaussianNoise",
    "LSTM",
    "GRU",
    "ZoneoutLSTMCell",
    "WeightDrop",
    "weight_drop",
]
