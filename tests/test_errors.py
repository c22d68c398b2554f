"""Every error message, word for word: bad values raise ValueError, bad types TypeError, from _validate."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch

import dropkit.nn as dnn
from dropkit import functional as F
from dropkit import rng

X = torch.ones(2, 3, 4, 4)


def _dropout3d_of_a_scalar():
    with warnings.catch_warnings():  # the rank warning that precedes the error has its own test
        warnings.simplefilter("ignore")
        return F.dropout3d(torch.tensor(1.0))


CASES = [
    # (callable, exception, exact message)
    (lambda: F.dropout(X, 1.5), ValueError, "dropout: p must be in [0, 1], but got 1.5."),
    (lambda: F.dropout(X, -0.1), ValueError, "dropout: p must be in [0, 1], but got -0.1."),
    (lambda: F.dropout(X, math.nan), ValueError, "dropout: p must be in [0, 1], but got nan."),
    (lambda: F.dropout(X, "0.5"), TypeError, "dropout: p must be a real number, but got '0.5'."),
    (lambda: rng.uniform(4, seed=-1), ValueError, "uniform: seed must be in [0, 2**64), but got -1."),
    (lambda: rng.uniform(4, seed=2**70), ValueError,
     "uniform: seed must be in [0, 2**64), but got 1180591620717411303424."),
    (lambda: rng.normal(4, seed=1.5), TypeError, "normal: seed must be an int, but got 1.5."),
    (lambda: rng.uniform(4, seed=None), TypeError, "uniform: seed must be an int in [0, 2**64), but got None."),
    (lambda: rng.uniform(4, seed=0, offset=-2), ValueError, "uniform: offset must be an int >= 0, but got -2."),
    # training must be a bool, as torch's ops demand (None would silently mean eval)
    (lambda: F.dropout(X, 0.5, None), TypeError, "dropout: training must be a bool, but got None."),
    (lambda: F.dropout2d(X, 0.5, 1), TypeError, "dropout2d: training must be a bool, but got 1."),
    (lambda: F.alpha_dropout(X, 0.5, "yes"), TypeError, "alpha_dropout: training must be a bool, but got 'yes'."),
    (lambda: F.drop_path(X, 0.5, None), TypeError, "drop_path: training must be a bool, but got None."),
    (lambda: F.gaussian_dropout(X, 0.5, training=None), TypeError,
     "gaussian_dropout: training must be a bool, but got None."),
    (lambda: dnn.Dropout(0.5, noise_shape=(20, 0, 10)), ValueError,
     "Dropout: noise_shape[1] must be None or an int >= 1 (1 or the input's size along that dimension), but got 0 "
     "(noise_shape (20, 0, 10))."),
    (lambda: F.bias_dropout_add(X, torch.ones(4, dtype=torch.float64), X, 0.5), TypeError,
     "bias_dropout_add: bias must have the dtype of x (torch.float32), but got torch.float64."),
    (lambda: F.dropout(X, True), TypeError, "dropout: p must be a real number, but got True."),
    (lambda: F.dropout(X, keep=2), ValueError, "dropout: keep must be in [0, 1], but got 2."),
    (
        lambda: F.dropout(X, 0.3, keep=0.7),
        ValueError,
        "dropout: pass either p or keep, not both, but got p=0.3 and keep=0.7.",
    ),
    (
        lambda: F.dropout(X, mode="scaled"),
        ValueError,
        "dropout: mode must be one of 'inverted', 'classic', but got 'scaled'.",
    ),
    (lambda: F.dropout(X, seed=1.5), TypeError, "dropout: seed must be an int, but got 1.5."),
    (lambda: F.dropout(X, seed=-1), ValueError, "dropout: seed must be in [0, 2**64), but got -1."),
    (lambda: F.dropout(X, seed=2**64), ValueError, f"dropout: seed must be in [0, 2**64), but got {2**64}."),
    (
        lambda: F.dropout(X, generator=3),
        TypeError,
        "dropout: generator must be a torch.Generator or a dropkit.rng.DeviceGenerator, but got 'int'.",
    ),
    (
        lambda: F.gaussian_dropout(X, 0.1, generator=rng.DeviceGenerator(device="cpu")),
        TypeError,
        "gaussian_dropout: generator must be a torch.Generator, but got 'DeviceGenerator'.",
    ),
    (
        lambda: F.dropout(X, seed=1, generator=torch.Generator()),
        ValueError,
        "dropout: pass either seed or generator, not both.",
    ),
    (lambda: F.dropout([1.0, 2.0]), TypeError, "dropout: input must be a torch.Tensor, but got 'list'."),
    (
        lambda: F.dropout(torch.ones(3, dtype=torch.int64)),
        TypeError,
        "dropout: input must be a floating-point tensor in training, but got torch.int64.",
    ),
    (
        lambda: F.dropout(torch.ones(3, dtype=torch.bool), training=False, mode="classic"),
        TypeError,
        "dropout: input must be a floating-point tensor in training, but got torch.bool.",
    ),
    (
        lambda: F.dropout1d(torch.ones(1, 2, 2, 2)),
        ValueError,
        "dropout1d: Expected 2D or 3D input, but received a 4D input. dropout1d zeroes whole channels of (N, C, L) "
        "or (C, L) inputs; use dropout() for per-element dropout.",
    ),
    (
        _dropout3d_of_a_scalar,
        ValueError,
        "dropout3d: input must have at least 1 dimension (C, *), but got a 0-D input. Use dropout() for per-element "
        "dropout.",
    ),
    (
        lambda: F.feature_alpha_dropout(torch.ones(5), 0.5, True),
        ValueError,
        "feature_alpha_dropout: input must have at least 2 dimensions (N, C, *), but got a 1-D input. Feature "
        "dropout requires at least 2 dimensions in the input. Use dropout() for per-element dropout.",
    ),
    (lambda: F.alpha_dropout(X, 2.0, True), ValueError, "alpha_dropout: p must be in [0, 1], but got 2.0."),
    (lambda: F.gaussian_dropout(X, 1.0), ValueError, "gaussian_dropout: p must be in [0, 1), but got 1.0."),
    (lambda: F.gaussian_dropout(X, keep=0.0), ValueError, "gaussian_dropout: keep must be in (0, 1], but got 0.0."),
    (
        lambda: F.gaussian_noise(X, -1.0),
        ValueError,
        "gaussian_noise: stddev must be a finite number >= 0, but got -1.0.",
    ),
    (
        lambda: F.gaussian_noise(X, math.inf),
        ValueError,
        "gaussian_noise: stddev must be a finite number >= 0, but got inf.",
    ),
    (lambda: F.gaussian_noise(X, None), TypeError, "gaussian_noise: stddev must be a real number, but got None."),
    (lambda: dnn.Dropout(1.5), ValueError, "Dropout: p must be in [0, 1], but got 1.5."),
    (lambda: dnn.Dropout2d(math.nan), ValueError, "Dropout2d: p must be in [0, 1], but got nan."),
    (
        lambda: dnn.Dropout(mode="classical"),
        ValueError,
        "Dropout: mode must be one of 'inverted', 'classic', but got 'classical'.",
    ),
    (
        lambda: dnn.AlphaDropout(mode="classic"),
        ValueError,
        "AlphaDropout: mode must be one of 'inverted', but got 'classic'.",
    ),
    (lambda: dnn.Dropout(seed="a"), TypeError, "Dropout: seed must be an int, but got 'a'."),
    (lambda: dnn.GaussianDropout(1.0), ValueError, "GaussianDropout: p must be in [0, 1), but got 1.0."),
    (
        lambda: dnn.GaussianNoise(-0.5),
        ValueError,
        "GaussianNoise: stddev must be a finite number >= 0, but got -0.5.",
    ),
]


@pytest.mark.parametrize(("call", "exc", "message"), CASES, ids=[c[2][:60] for c in CASES])
def test_error_message(call, exc, message):
    with pytest.raises(exc, match=f"^{re.escape(message)}$"):
        call()


def test_shape_errors_are_also_runtime_errors_like_torch():
    with pytest.raises(RuntimeError):
        F.dropout1d(torch.ones(2))


def test_module_p_is_checked_again_at_call_time():
    m = dnn.Dropout(0.5)
    m.p = 1.5
    with pytest.raises(ValueError, match=r"^dropout: p must be in \[0, 1\], but got 1.5.$"):
        m(torch.ones(3))


def test_dropout2d_warns_on_unexpected_rank():
    with pytest.warns(UserWarning, match=r"^dropout2d: Received a 5-D input to dropout2d"):
        F.dropout2d(torch.ones(1, 2, 2, 2, 2))
