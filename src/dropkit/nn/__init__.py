"""dropkit Modules: one file per family, each a thin shell over :mod:`dropkit.functional`."""

from .concrete import ConcreteDropout, concrete_regularization
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
from .fused import BiasDropoutAdd, DropoutAddLayerNorm, DropoutAddRMSNorm
from .recurrent import GRU, LSTM, WeightDrop, ZoneoutLSTMCell, weight_drop
from .structured import DropBlock1d, DropBlock2d, DropBlock3d, DropBlockScheduler, DropPath, StochasticDepth
from .weights import DropConnect, DropConnectConv1d, DropConnectConv2d, DropConnectLinear

__all__ = [
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "FeatureAlphaDropout",
    "GaussianDropout",
    "GaussianNoise",
    "DropoutAddLayerNorm",
    "DropoutAddRMSNorm",
    "BiasDropoutAdd",
    "DropConnect",
    "DropConnectLinear",
    "DropConnectConv1d",
    "DropConnectConv2d",
    "ConcreteDropout",
    "concrete_regularization",
    "StochasticDepth",
    "DropPath",
    "DropBlock1d",
    "DropBlock2d",
    "DropBlock3d",
    "DropBlockScheduler",
    "LSTM",
    "GRU",
    "ZoneoutLSTMCell",
    "WeightDrop",
    "weight_drop",
]
