"""Every dropout-family op, module and reference tested together (the STYLE.md minimum set, per op)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from scipy import stats

import dropkit.nn as dnn
from dropkit import functional as F


@dataclass(frozen=True)
class Op:
    name: str
    functional: object
    module: type
    shape: tuple[int, ...]
    mask_dims: int  # leading dims the mask covers; -1 = element-wise
    kind: str  # "dropout" (zeros), "alpha" (SELU fill), "gaussian" (multiplicative noise)


OPS = [
    pytest.param(Op("dropout", F.dropout, dnn.Dropout, (6, 7, 5), -1, "dropout"), id="dropout"),
    pytest.param(Op("dropout1d", F.dropout1d, dnn.Dropout1d, (6, 7, 5), 2, "dropout"), id="dropout1d"),
    pytest.param(Op("dropout2d", F.dropout2d, dnn.Dropout2d, (4, 7, 3, 5), 2, "dropout"), id="dropout2d"),
    pytest.param(Op("dropout3d", F.dropout3d, dnn.Dropout3d, (3, 7, 2, 3, 5), 2, "dropout"), id="dropout3d"),
    pytest.param(Op("alpha_dropout", F.alpha_dropout, dnn.AlphaDropout, (6, 7, 5), -1, "alpha"), id="alpha_dropout"),
    pytest.param(
        Op("feature_alpha_dropout", F.feature_alpha_dropout, dnn.FeatureAlphaDropout, (4, 7, 3, 5), 2, "alpha"),
        id="feature_alpha_dropout",
    ),
    pytest.param(
        Op("gaussian_dropout", F.gaussian_dropout, dnn.GaussianDropout, (6, 7, 5), -1, "gaussian"),
        id="gaussian_dropout",
    ),
]
MASK_OPS = [o for o in OPS if o.values[0].kind != "gaussian"]  # ops with a Bernoulli mask
INVERTED_OPS = [o for o in OPS if o.values[0].kind != "alpha"]  # ops whose output mean equals the input's
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _call(op: Op, x, p=0.5, **kwargs):
    kwargs.setdefault("training", True)
    return op.functional(x, p, **kwargs)


def _dropped(op: Op, x: torch.Tensor, y: torch.Tensor, p: float) -> torch.Tensor:
    """Boolean tensor of dropped elements, identified from the output of an all-positive input."""
    if op.kind == "dropout":
        return y == 0
    a = 1.0 / math.sqrt((F.SELU_ALPHA_PRIME**2 * p + 1.0) * (1.0 - p))
    fill = F.SELU_ALPHA_PRIME * a * (p - 1.0)
    return torch.isclose(y, torch.full_like(y, fill))


@pytest.mark.parametrize("op", OPS)
class TestMinimumSet:
    def test_eval_is_identity(self, op, device):
        x = torch.randn(op.shape, device=device)
        assert _call(op, x, training=False) is x
        assert op.module(0.5)(x) is not x  # a fresh module is in training mode
        assert op.module(0.5).eval()(x) is x

    def test_p0_is_identity(self, op, device):
        x = torch.randn(op.shape, device=device)
        assert _call(op, x, p=0.0) is x

    def test_p1_gives_exact_zeros(self, op, device):
        x = torch.randn(op.shape, device=device)
        x.view(-1)[:4] = torch.tensor([math.nan, math.inf, -math.inf, 1e30])
        if op.kind == "gaussian":
            with pytest.raises(ValueError, match=r"p must be in \[0, 1\), but got 1"):
                _call(op, x, p=1.0)
            return
        y = _call(op, x, p=1.0)
        assert torch.equal(y, torch.zeros_like(x))

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_shape_dtype_device_preserved(self, op, device, dtype):
        x = torch.randn(op.shape, device=device).to(dtype)
        y = _call(op, x, seed=3)
        assert (y.shape, y.dtype, y.device) == (x.shape, x.dtype, x.device)
        assert bool(torch.isfinite(y).all())

    def test_empty_tensor(self, op, device):
        x = torch.empty((0,) + op.shape[1:], device=device)
        y = _call(op, x)
        assert y.shape == x.shape

    def test_non_contiguous_and_channels_last_match_contiguous(self, op, device, backend):
        base = torch.randn((op.shape[0], op.shape[1] * 2) + op.shape[2:], device=device)
        x = base[:, ::2]  # non-contiguous view of the op's shape
        assert not x.is_contiguous()
        expected = _call(op, x.contiguous(), seed=11)
        torch.testing.assert_close(_call(op, x, seed=11), expected, rtol=0, atol=0)
        if x.dim() == 4:
            x_cl = x.contiguous(memory_format=torch.channels_last)
            y_cl = _call(op, x_cl, seed=11)
            assert y_cl.is_contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(y_cl, expected, rtol=0, atol=0)

    def test_inplace_equals_out_of_place(self, op, device, backend):
        x = torch.randn(op.shape, device=device)
        expected = _call(op, x, seed=5)
        x2 = x.clone()
        out = _call(op, x2, seed=5, inplace=True)
        assert out is x2
        torch.testing.assert_close(x2, expected, rtol=0, atol=0)

    def test_same_seed_same_mask_successive_calls_differ(self, op, device):
        x = torch.rand(op.shape, device=device) + 1
        a, b = _call(op, x, seed=9), _call(op, x, seed=9)
        assert torch.equal(a, b)
        assert not torch.equal(_call(op, x, seed=10), a)
        torch.manual_seed(0)
        c, d = _call(op, x), _call(op, x)
        assert not torch.equal(c, d)  # the global generator advances
        torch.manual_seed(0)
        assert torch.equal(_call(op, x), c)
        g = torch.Generator().manual_seed(4)
        e = _call(op, x, generator=g)
        assert torch.equal(_call(op, x, generator=torch.Generator().manual_seed(4)), e)
        assert not torch.equal(_call(op, x, generator=g), e)

    def test_module_seed_gives_reproducible_advancing_sequence(self, op, device):
        x = torch.rand(op.shape, device=device) + 1
        m1, m2 = op.module(0.5, seed=21), op.module(0.5, seed=21)
        first = m1(x)
        assert torch.equal(m2(x), first)
        assert not torch.equal(m1(x), first)


@pytest.mark.parametrize("op", MASK_OPS)
def test_mask_structure(op, device):
    x = torch.rand(op.shape, device=device) + 1
    y = _call(op, x, seed=13)
    dropped = _dropped(op, x, y, 0.5)
    if op.mask_dims > 0:  # whole channels dropped together, and rows of the mask differ
        per_channel = dropped.flatten(op.mask_dims).float().mean(-1)
        assert bool(((per_channel == 0) | (per_channel == 1)).all())
        assert len({tuple(r.tolist()) for r in per_channel}) > 1
    else:
        assert 0 < dropped.float().mean().item() < 1


@pytest.mark.statistical
@pytest.mark.parametrize("op", INVERTED_OPS)
@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_rescaling_preserves_mean(op, p):
    # inverted scaling: E[y] = E[x]; 6 standard errors of the sample mean as tolerance
    x = torch.rand((64, 64) + op.shape[2:]) + 0.5
    y = _call(op, x, p=p, seed=17)
    units = 64 * 64 if op.mask_dims == 2 else x.numel()
    se = x.mean().item() * math.sqrt(p / (1 - p) / units)
    assert abs(y.double().mean().item() - x.double().mean().item()) < 6 * se


@pytest.mark.statistical
@pytest.mark.parametrize("op", MASK_OPS)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_zero_fraction_matches_p(op, p):
    """Binomial test (two-sided) of the number of dropped units, three fixed seeds, p-value > 0.01."""
    x = torch.rand((40, 50) + op.shape[2:]) + 1
    for seed in (0, 1, 2):
        y = _call(op, x, p=p, seed=seed)
        dropped = _dropped(op, x, y, p)
        units = dropped.flatten(2).all(-1) if op.mask_dims == 2 and x.dim() > 2 else dropped
        n, k = units.numel(), int(units.sum())
        assert stats.binomtest(k, n, p).pvalue > 0.01, (seed, k, n)


# ---- semantics of individual ops -------------------------------------------------------------------------------


def test_dropout_values_are_zero_or_scaled_input():
    x = torch.rand(1000) + 1
    for p in (0.2, 0.5, 0.75):
        y = F.dropout(x, p, seed=1)
        kept = y != 0
        torch.testing.assert_close(y[kept], x[kept] * (1 / (1 - p)), rtol=0, atol=0)


def test_dropout_classic_mode_scales_at_test_time():
    x = torch.rand(1000) + 1
    train = F.dropout(x, 0.3, seed=4, mode="classic")
    kept = train != 0
    assert torch.equal(train[kept], x[kept])  # no scaling in training
    assert torch.equal(F.dropout(x, 0.3, seed=4)[kept], x[kept] * (1 / (1 - 0.3)))  # same mask as inverted
    torch.testing.assert_close(F.dropout(x, 0.3, training=False, mode="classic"), x * 0.7)
    m = dnn.Dropout(0.3, mode="classic").eval()
    torch.testing.assert_close(m(x), x * 0.7)
    x2 = x.clone()
    assert F.dropout(x2, 0.3, training=False, inplace=True, mode="classic") is x2
    torch.testing.assert_close(x2, x * 0.7)


@pytest.mark.statistical
def test_dropout_classic_mode_train_mean_matches_eval():
    x = torch.rand(200_000) + 1
    train = F.dropout(x, 0.4, seed=8, mode="classic")
    eval_ = F.dropout(x, 0.4, training=False, mode="classic")
    se = math.sqrt(0.4 * 0.6 / x.numel()) * 1.6  # E[x^2]^(1/2) <= 2
    assert abs(train.double().mean().item() - eval_.double().mean().item()) < 6 * se


def test_keep_spelling_equals_p():
    x = torch.randn(500)
    assert torch.equal(F.dropout(x, keep=0.8, seed=2), F.dropout(x, 0.2, seed=2))
    assert dnn.Dropout(keep=0.9).p == pytest.approx(0.1)
    ones = torch.ones(2, 3, 4, 4)
    assert torch.equal(F.dropout2d(ones, keep=0.5, seed=1), F.dropout2d(ones, seed=1))


def test_dropped_nan_and_inf_are_exact_zeros_kept_ones_propagate(backend):
    x = torch.tensor([math.nan, math.inf, -math.inf, 1.0] * 250)
    y = F.dropout(x, 0.5, seed=3)
    dropped = F.dropout(torch.ones_like(x), 0.5, seed=3) == 0
    assert bool((y[dropped] == 0).all()) and int(dropped.sum()) > 0
    assert torch.equal(torch.isnan(y), torch.isnan(x) & ~dropped)
    assert torch.equal(torch.isinf(y), torch.isinf(x) & ~dropped)


@pytest.mark.statistical
@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("feature", [False, True])
def test_alpha_dropout_keeps_mean_and_std(p, feature):
    # torch's own test: on a standard normal input the output mean and std stay within 0.1
    x = torch.randn(1000, 50, 4, 4) if feature else torch.randn(200_000)
    fn = F.feature_alpha_dropout if feature else F.alpha_dropout
    y = fn(x, p, training=True, seed=6)
    assert abs(y.mean().item() - x.mean().item()) < 0.1
    assert abs(y.std().item() - x.std().item()) < 0.1


def test_alpha_dropout_dropped_value_is_constant():
    p = 0.3
    x = torch.tensor([math.nan, math.inf, 5.0, -5.0] * 100)
    y = F.alpha_dropout(x, p, training=True, seed=0)
    dropped = F.alpha_dropout(torch.zeros_like(x), p, training=True, seed=0)
    a = 1.0 / math.sqrt((F.SELU_ALPHA_PRIME**2 * p + 1.0) * (1.0 - p))
    fill = F.SELU_ALPHA_PRIME * a * (p - 1.0)
    is_dropped = torch.isclose(dropped, torch.tensor(fill))
    assert bool(torch.isclose(y[is_dropped], torch.tensor(fill)).all())
    kept = ~is_dropped
    finite = kept & torch.isfinite(x)
    torch.testing.assert_close(y[finite], (x * a + F.SELU_ALPHA_PRIME * a * p)[finite])


def test_alpha_dropout_defaults_to_eval_like_torch():
    x = torch.randn(10)
    assert F.alpha_dropout(x, 0.5) is x
    assert F.feature_alpha_dropout(torch.randn(2, 3), 0.5).shape == (2, 3)


@pytest.mark.statistical
def test_gaussian_dropout_noise_moments():
    # multiplier 1 + sigma z: mean 1, variance p / (1 - p)
    p = 0.3
    x = torch.ones(400_000)
    y = F.gaussian_dropout(x, p, seed=12).double()
    var = p / (1 - p)
    se = math.sqrt(var / x.numel())
    assert abs(y.mean().item() - 1) < 6 * se
    assert abs(y.var().item() - var) < 6 * var * math.sqrt(2 / x.numel())


@pytest.mark.statistical
def test_gaussian_noise_moments_and_eval():
    x = torch.zeros(400_000)
    y = F.gaussian_noise(x, 0.5, seed=1).double()
    assert abs(y.mean().item()) < 6 * 0.5 / math.sqrt(x.numel())
    assert abs(y.std().item() - 0.5) < 0.01
    assert F.gaussian_noise(x, 0.5, training=False) is x
    assert dnn.GaussianNoise(0.5).eval()(x) is x
    assert F.gaussian_noise(x, 0.0) is x
    x2 = torch.zeros(10)
    assert F.gaussian_noise(x2, 1.0, inplace=True, seed=3) is x2
    assert torch.equal(x2, F.gaussian_noise(torch.zeros(10), 1.0, seed=3))


def test_gaussian_noise_gradient_is_identity():
    x = torch.randn(50, requires_grad=True)
    F.gaussian_noise(x, 0.3, seed=2).sum().backward()
    assert torch.equal(x.grad, torch.ones(50))


def test_bfloat16_values_match_float32_computation(backend):
    x = torch.randn(4097).to(torch.bfloat16)
    y = F.dropout(x, 0.3, seed=8)
    expected = F.dropout(x.float(), 0.3, seed=8).to(torch.bfloat16)  # one rounding of the fp32 result
    assert torch.equal(y, expected)
