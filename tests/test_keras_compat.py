"""Keras-style behaviour: ``noise_shape``, the per-call ``training=`` argument, and what Keras' own tests assert.

The assertions mirror keras/src/layers/regularization/*_test.py (rescaling, noise-shape broadcasting, Gaussian
noise statistics), written against dropkit's torch API.
"""

import math

import pytest
import torch

import dropkit.functional as F
import dropkit.nn as dnn


def test_dropout_rescaling_as_keras():
    # Keras: Dropout(0.5, seed=1337) on ones((20, 500)): mean 1.0 (atol 0.02), max 2.0
    out = dnn.Dropout(0.5, seed=1337)(torch.ones(20, 500))
    assert abs(float(out.mean()) - 1.0) < 0.02
    assert float(out.max()) == 2.0


@pytest.mark.parametrize("noise_shape", [(None, 1, None), (20, 1, 10)])
def test_noise_shape_shares_the_mask_along_unit_dims(noise_shape):
    out = dnn.Dropout(0.5, noise_shape=noise_shape)(torch.ones(20, 5, 10))
    for t in range(1, 5):
        assert torch.equal(out[:, 0, :], out[:, t, :])
    assert 0 < int((out[:, 0, :] == 0).sum()) < 200  # the shared mask is itself random


def test_noise_shape_mask_is_the_mask_of_a_tensor_of_that_shape():
    x = torch.randn(4, 6, 3, 5)
    for noise in [(4, 1, 1, 5), (1, 6, 3, 1), (1, 1, 1, 1), (4, 6, 1, 1), (None, None, None, None)]:
        full = tuple(n or s for n, s in zip(noise, x.shape, strict=True))
        mask = F.dropout(torch.ones(full), 0.3, seed=11)  # 0 or 1/(1-p), the same draws in the same order
        assert torch.allclose(F.dropout(x, 0.3, noise_shape=noise, seed=11), x * mask)
    # a channel noise shape is exactly dropout2d, and the full shape exactly dropout
    assert torch.equal(F.dropout(x, 0.3, noise_shape=(4, 6, 1, 1), seed=2), F.dropout2d(x, 0.3, seed=2))
    assert torch.equal(F.dropout(x, 0.3, noise_shape=x.shape, seed=2), F.dropout(x, 0.3, seed=2))


def test_noise_shape_drop_rate_is_binomial():
    # 8 x 1 x 500 draws at p = 0.3: the dropped count is Binomial(4000, 0.3), sd 29; allow 4 sd
    out = F.dropout(torch.ones(8, 7, 500), 0.3, noise_shape=(None, 1, None), seed=5)
    dropped = int((out[:, 0, :] == 0).sum())
    assert abs(dropped - 1200) < 4 * math.sqrt(4000 * 0.3 * 0.7)


def test_noise_shape_gradient_inplace_eval_and_classic():
    x = torch.randn(4, 6, 3, requires_grad=True)
    y = F.dropout(x, 0.4, noise_shape=(4, 1, 3), seed=8)
    y.backward(torch.ones_like(y))
    mask = F.dropout(torch.ones(4, 1, 3), 0.4, seed=8)
    assert torch.allclose(x.grad, mask.expand(4, 6, 3))
    z = x.detach().clone()
    assert F.dropout(z, 0.4, True, True, noise_shape=(4, 1, 3), seed=8) is z
    assert torch.allclose(z, x.detach() * mask)
    assert F.dropout(z, 0.4, False, noise_shape=(4, 1, 3)) is z  # eval: the input itself
    classic = F.dropout(x.detach(), 0.4, mode="classic", noise_shape=(4, 1, 3), seed=8)
    assert torch.allclose(classic, x.detach() * (mask > 0))


def test_module_training_call_argument_forces_or_disables_dropout():
    x = torch.ones(50, 40)
    for module in (dnn.Dropout(0.5), dnn.AlphaDropout(0.5), dnn.GaussianDropout(0.5), dnn.GaussianNoise(0.5)):
        module.eval()
        assert module(x) is x
        assert not torch.equal(module(x, training=True), x)  # Keras layer(x, training=True)
        module.train()
        assert module(x, training=False) is x
    channel = dnn.Dropout2d(0.5).eval()
    out = channel(torch.ones(8, 16, 3, 3), training=True)
    assert torch.equal(out[:, :, 0, 0], out[:, :, 1, 1])  # Keras SpatialDropout2D, channels_first


def test_spatial_dropout_channels_last_via_noise_shape():
    # Keras SpatialDropout2D(data_format="channels_last"): one draw per (sample, channel) of (N, H, W, C)
    out = F.dropout(torch.ones(3, 4, 4, 8), 0.5, noise_shape=(None, 1, 1, None), seed=1)
    assert torch.equal(out[:, 0, 0, :], out[:, 1, 1, :]) and torch.equal(out[:, 0, 0, :], out[:, 3, 2, :])


def test_gaussian_noise_statistics_as_keras():
    # Keras: GaussianDropout(0.3) std sqrt(0.3 / 0.7) and GaussianNoise(0.3) std 0.3 on ones((20, 500)), atol 0.02
    gd = dnn.GaussianDropout(0.3, seed=1337)(torch.ones(20, 500))
    assert abs(float(gd.std()) - math.sqrt(0.3 / 0.7)) < 0.02
    gn = dnn.GaussianNoise(0.3, seed=1337)(torch.ones(20, 500))
    assert abs(float(gn.std()) - 0.3) < 0.02
    ad = dnn.AlphaDropout(0.3, seed=1337)(torch.ones(20, 500))  # Keras AlphaDropout: std 1.0 within 0.1
    assert abs(float(ad.std()) - 1.0) < 0.1


@pytest.mark.parametrize(
    ("noise_shape", "exc", "message"),
    [
        ((20, 1), ValueError, r"dropout: noise_shape must have one entry per input dimension \(3\)"),
        ((20, 3, 10), ValueError, r"dropout: noise_shape\[1\] must be None, 1 or the input's size 5, but got 3"),
        ((20, 1.5, 10), ValueError, r"noise_shape\[1\] must be None or an int >= 0 \(1 or the input's size along"),
        ((20, -1, 10), ValueError, r"noise_shape\[1\] must be None or an int >= 0 .*but got -1"),
        ("abc", TypeError, r"dropout: noise_shape must be a tuple of ints \(or None entries\) or None"),
    ],
)
def test_noise_shape_errors(noise_shape, exc, message):
    with pytest.raises(exc, match=message):
        F.dropout(torch.ones(20, 5, 10), 0.5, noise_shape=noise_shape)


def test_module_noise_shape_type_error_and_repr():
    with pytest.raises(TypeError, match=r"Dropout: noise_shape must be a tuple"):
        dnn.Dropout(0.5, noise_shape=3)
    for bad in [(20, 1.5, 10), (20, -1, 10), (True, 1), (20, 0, 10)]:  # refused at construction, as Keras does
        with pytest.raises(ValueError, match=r"Dropout: noise_shape\[\d\] must be None or an int >= 1"):
            dnn.Dropout(0.5, noise_shape=bad)
    assert "noise_shape=(None, 1, None)" in repr(dnn.Dropout(0.5, noise_shape=[None, 1, None]))
    assert "noise_shape" not in repr(dnn.Dropout(0.5))


def test_noise_shape_compiles_fullgraph_with_the_eager_masks():
    x = torch.randn(2, 3, 4, 5)

    def fn(x):
        return F.dropout(x, 0.3, noise_shape=(1, None, None, 1), seed=4) * 2

    assert torch.equal(torch.compile(fn, fullgraph=True)(x), fn(x))


@pytest.mark.parametrize("noise_shape", [(None, 1, None), (20, 1, 10)], ids=["dynamic", "static"])
def test_alpha_dropout_partial_noise_shape(noise_shape):
    """Keras' alpha_dropout_test: with noise_shape (N, 1, F) every step of a sequence gets the same mask."""
    x = torch.ones(20, 5, 10)
    module = dnn.AlphaDropout(0.5, noise_shape=noise_shape)
    for out in (module(x), F.alpha_dropout(x, 0.5, True, noise_shape=noise_shape)):
        assert all(torch.equal(out[:, 0, :], out[:, t, :]) for t in range(1, 5))
        assert not torch.equal(out[:, :, 0], out[:, :, 1])  # the features still draw their own masks
