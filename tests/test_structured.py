"""Structured dropout: stochastic depth, DropPath, the depth rule, the kept-subset residual, DropBlock, its scheduler.

Oracles: torchvision's ``stochastic_depth`` / ``drop_block2d`` / ``drop_block3d`` and timm's ``drop_path`` written
out here with their Bernoulli noise replaced by the mask dropkit draws (``*_ref``), so a test compares the same
mask through both. Statistical tests are seeded (deterministic in CI) and state their tolerance.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as TF
from scipy import stats
from torch import nn

import dropkit.nn as dnn
from dropkit import functional as F
from dropkit import kernels, mc, rng
from dropkit.kernels import MaskSpec

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


# ------------------------------------------------------------------------------------------------------ oracles


def sample_keep_ref(seed: int, n: int, p: float) -> torch.Tensor:
    """The per-sample keep mask dropkit draws for ``seed``: element ``i`` kept iff ``u(seed, i) >= p``."""
    return rng.uniform(n, seed) >= torch.tensor(p, dtype=torch.float32)


def stochastic_depth_ref(x: torch.Tensor, p: float, mode: str, keep: torch.Tensor) -> torch.Tensor:
    """torchvision's stochastic_depth with its ``bernoulli_`` noise replaced by ``keep``."""
    survival_rate = 1.0 - p
    size = [x.shape[0]] + [1] * (x.ndim - 1) if mode == "row" else [1] * x.ndim
    noise = keep.reshape(size).to(x.dtype)
    if survival_rate > 0.0:
        noise = noise / survival_rate
    return x * noise


def drop_path_ref(x: torch.Tensor, p: float, keep: torch.Tensor, scale_by_keep: bool = True) -> torch.Tensor:
    """timm's drop_path with its ``bernoulli_`` noise replaced by ``keep``."""
    keep_prob = 1 - p
    random_tensor = keep.reshape((x.shape[0],) + (1,) * (x.ndim - 1)).to(x.dtype)
    if keep_prob > 0.0 and scale_by_keep:
        random_tensor = random_tensor / keep_prob
    return x * random_tensor


def centres_ref(seed: int, x: torch.Tensor, p: float, block_size: int, couple: bool = False) -> torch.Tensor:
    """Block seeds dropkit draws: Bernoulli(gamma) on the valid region, gamma as torchvision computes it."""
    n, c, *spatial = x.shape
    gamma = p * math.prod(spatial) / (block_size ** len(spatial) * math.prod(s - block_size + 1 for s in spatial))
    shape = (n, 1 if couple else c, *(s - block_size + 1 for s in spatial))
    return ~kernels.keep_mask(MaskSpec(seed, 0, rng.keep_threshold(gamma), 1.0), shape, x.device)


POOLS = {1: TF.max_pool1d, 2: TF.max_pool2d, 3: TF.max_pool3d}


def drop_block_ref(x: torch.Tensor, centres: torch.Tensor, block_size: int, eps: float = 1e-06) -> torch.Tensor:
    """torchvision's drop_block2d/3d (odd block sizes) with its Bernoulli noise replaced by ``centres``."""
    dims = x.dim() - 2
    noise = TF.pad(centres.to(x.dtype), [block_size // 2] * (2 * dims), value=0)
    noise = POOLS[dims](noise, stride=1, kernel_size=block_size, padding=block_size // 2)
    noise = 1 - noise
    normalize_scale = noise.numel() / (eps + noise.sum())
    return x * noise * normalize_scale


# ------------------------------------------------------------------------------- stochastic depth and DropPath


@dataclass(frozen=True)
class PerSample:
    name: str
    call: object  # (x, p, training, **kw) -> y
    module: object  # p -> Module


PER_SAMPLE = [
    pytest.param(
        PerSample("stochastic_depth", lambda x, p, t=True, **k: F.stochastic_depth(x, p, "row", t, **k), None),
        id="stochastic_depth",
    ),
    pytest.param(PerSample("drop_path", lambda x, p, t=True, **k: F.drop_path(x, p, t, **k), None), id="drop_path"),
    pytest.param(
        PerSample(
            "StochasticDepth",
            lambda x, p, t=True, **k: dnn.StochasticDepth(p, "row", **k).train(t)(x),
            lambda p: dnn.StochasticDepth(p, "row"),
        ),
        id="StochasticDepth",
    ),
    pytest.param(
        PerSample("DropPath", lambda x, p, t=True, **k: dnn.DropPath(p, **k).train(t)(x), lambda p: dnn.DropPath(p)),
        id="DropPath",
    ),
]


@pytest.mark.parametrize("op", PER_SAMPLE)
class TestPerSample:
    def test_eval_and_p0_are_identity(self, op, device):
        x = torch.randn(6, 3, 4, device=device)
        assert op.call(x, 0.5, False) is x
        assert op.call(x, 0.0, True) is x

    def test_p1_gives_exact_zeros_and_zero_gradients(self, op):
        x = torch.randn(6, 5)
        x[0, :3] = torch.tensor([math.nan, math.inf, -math.inf])
        x.requires_grad_(True)
        y = op.call(x, 1.0, True)
        assert torch.equal(y, torch.zeros_like(x))
        y.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_shape_dtype_and_mask_preserved_across_dtypes(self, op, dtype, device):
        x = torch.ones(9, 3, 2, dtype=dtype, device=device)
        y = op.call(x, 0.5, True, seed=4)
        assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
        ref = op.call(torch.ones(9, 3, 2, device=device), 0.5, True, seed=4)
        assert torch.equal(y == 0, ref == 0)
        assert torch.equal(op.call(torch.ones(0, 3, dtype=dtype), 0.5, True), torch.ones(0, 3, dtype=dtype))

    def test_whole_samples_are_dropped_and_kept_ones_scaled(self, op):
        p = 0.4
        y = op.call(torch.ones(64, 3, 5), p, True, seed=11)
        per_sample = y.flatten(1)
        dropped = (per_sample == 0).all(1)
        kept = (per_sample == 1 / (1 - p)).all(1)
        assert torch.equal(dropped | kept, torch.ones(64, dtype=torch.bool))
        assert 0 < int(dropped.sum()) < 64
        if op.module is None:  # a module's seed= seeds its own generator, not the mask directly
            assert torch.equal(~dropped, sample_keep_ref(11, 64, p))

    def test_non_contiguous_and_channels_last_match_contiguous(self, op):
        base = torch.randn(8, 6, 5, 7)
        cl = base.contiguous(memory_format=torch.channels_last)
        y_cl = op.call(cl, 0.5, True, seed=2)
        assert torch.equal(y_cl, op.call(base, 0.5, True, seed=2))
        assert y_cl.is_contiguous(memory_format=torch.channels_last)
        view = base.transpose(2, 3)
        assert torch.equal(op.call(view, 0.5, True, seed=2), op.call(view.contiguous(), 0.5, True, seed=2))

    def test_seeds_reproduce_and_successive_calls_differ(self, op):
        x = torch.ones(200, 2)
        assert torch.equal(op.call(x, 0.5, True, seed=5), op.call(x, 0.5, True, seed=5))
        assert not torch.equal(op.call(x, 0.5, True, seed=5), op.call(x, 0.5, True, seed=6))
        torch.manual_seed(0)
        a, b = op.call(x, 0.5, True), op.call(x, 0.5, True)
        torch.manual_seed(0)
        assert not torch.equal(a, b) and torch.equal(a, op.call(x, 0.5, True))

    def test_gradient_is_the_mask_scaled(self, op):
        x = torch.randn(40, 3, requires_grad=True)
        y = op.call(x, 0.3, True, seed=9)
        y.backward(torch.ones_like(y))
        expected = op.call(torch.ones(40, 3), 0.3, True, seed=9)  # the same mask on ones: keep / (1 - p)
        assert torch.equal(x.grad, expected) and (expected == 0).any()
        if op.module is None:
            keep = sample_keep_ref(9, 40, 0.3).to(x.dtype)[:, None] / 0.7
            torch.testing.assert_close(x.grad, keep.expand_as(x), rtol=1e-6, atol=0)

    @pytest.mark.statistical
    @pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
    def test_dropped_fraction_binomial(self, op, p):
        """torchvision's TestStochasticDepth.test_stochastic_depth_random: binomial test, p-value > 0.01."""
        for seed in range(3):
            torch.manual_seed(seed)
            x = torch.ones(5, 3, 4, 4)
            counts = sum(5 - int(op.call(x, p, True).sum(dim=(1, 2, 3)).nonzero().size(0)) for _ in range(250))
            assert stats.binomtest(counts, 250 * 5, p=p).pvalue > 0.01


@pytest.mark.parametrize("mode", ["row", "batch"])
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_stochastic_depth_matches_torchvision_formula(mode, p):
    x = torch.randn(10, 3, 4)
    y = F.stochastic_depth(x, p, mode, seed=21)
    n = 10 if mode == "row" else 1
    torch.testing.assert_close(y, stochastic_depth_ref(x, p, mode, sample_keep_ref(21, n, p)), rtol=1e-6, atol=0)


@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_drop_path_matches_timm_formula(scale_by_keep):
    x = torch.randn(16, 5, 3)
    y = F.drop_path(x, 0.25, True, scale_by_keep, seed=8)
    ref = drop_path_ref(x, 0.25, sample_keep_ref(8, 16, 0.25), scale_by_keep)
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=0)


def test_stochastic_depth_batch_mode_drops_all_or_nothing():
    outcomes = set()
    for seed in range(40):
        y = F.stochastic_depth(torch.ones(6, 3), 0.5, "batch", seed=seed)
        assert bool((y == 0).all()) or bool((y == 2).all())
        outcomes.add(bool((y == 0).all()))
    assert outcomes == {True, False}
    assert F.stochastic_depth(torch.tensor(3.0), 1.0, "batch").item() == 0.0  # 0-D works in batch mode


@pytest.mark.statistical
@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_stochastic_depth_batch_mode_binomial(p):
    layer = dnn.StochasticDepth(p=p, mode="batch")
    torch.manual_seed(1)
    x = torch.ones(5, 3, 4, 4)
    counts = sum(int(layer(x).sum() == 0) for _ in range(250))
    assert stats.binomtest(counts, 250, p=p).pvalue > 0.01


def test_drop_path_training_defaults_to_false_as_timm():
    x = torch.randn(4, 3)
    assert F.drop_path(x, 0.5) is x
    assert dnn.DropPath(0.1).p == 0.1 and dnn.DropPath().p == 0.0


def test_module_reprs_match_torchvision_and_timm():
    assert repr(dnn.StochasticDepth(0.2, "row")) == "StochasticDepth(p=0.2, mode=row)"
    assert repr(dnn.StochasticDepth(0.2, "batch", seed=3)) == "StochasticDepth(p=0.2, mode=batch, seed=3)"
    assert repr(dnn.DropPath(0.123)) == "DropPath(p=0.123)"
    assert repr(dnn.DropPath(0.1, False)) == "DropPath(p=0.1, scale_by_keep=False)"
    assert repr(dnn.DropBlock2d(0.1, 3)) == "DropBlock2d(p=0.1, block_size=3, inplace=False)"
    assert repr(dnn.DropBlock3d(0.1, 5, True, couple_channels=True)) == (
        "DropBlock3d(p=0.1, block_size=5, inplace=True, couple_channels=True)"
    )


def test_module_seed_gives_a_reproducible_advancing_sequence():
    x = torch.ones(64, 2)
    a, b = dnn.DropPath(0.5, seed=7), dnn.DropPath(0.5, seed=7)
    first, second = a(x), a(x)
    assert torch.equal(first, b(x)) and torch.equal(second, b(x))
    assert not torch.equal(first, second)


# ------------------------------------------------------------------------------------------------ depth rule


@pytest.mark.parametrize("depths", [[2, 2, 6, 2], [3, 3, 9, 3], [12], [1, 0, 2]])
@pytest.mark.parametrize("max_rate", [0.0, 0.1, 0.4])
def test_drop_path_rates_match_timm_linspace(depths, max_rate):
    dpr = [x.item() for x in torch.linspace(0, max_rate, sum(depths))]  # timm's VisionTransformer / ConvNeXt rule
    assert F.drop_path_rates(max_rate, depths, flat=True) == dpr
    staged = F.drop_path_rates(max_rate, depths)
    assert [len(stage) for stage in staged] == depths
    assert staged == [x.tolist() for x in torch.linspace(0, max_rate, sum(depths)).split(depths)]
    assert F.drop_path_rates(max_rate, sum(depths)) == dpr


def test_drop_path_rates_stage_and_uniform_rules():
    assert F.drop_path_rates(0.3, [2, 1, 3], rule="stage") == [[0.0, 0.0], [0.15], [0.3, 0.3, 0.3]]
    assert F.drop_path_rates(0.3, [2], rule="stage") == [[0.3, 0.3]]
    assert F.drop_path_rates(0.2, [1, 2], rule="uniform", flat=True) == [0.2, 0.2, 0.2]
    rates = F.drop_path_rates(0.5, 9)
    assert rates[0] == 0.0 and rates[-1] == 0.5 and all(b > a for a, b in itertools.pairwise(rates))
    assert F.drop_path_rates(0.5, []) == [] and F.drop_path_rates(0.5, 0) == []


# ------------------------------------------------------------------------------- kept-subset residual helper


class _Mlp(nn.Module):
    def __init__(self, c: int = 6, hidden: int = 12):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(c, hidden), nn.Linear(hidden, c)
        self.rows: list[int] = []

    def forward(self, x):
        self.rows.append(x.shape[0])
        return self.fc2(TF.gelu(self.fc1(x)))


@pytest.mark.parametrize("p", [0.1, 0.4, 0.8])
@pytest.mark.parametrize("scale_by_keep", [True, False])
def test_drop_path_residual_equals_masked_multiply_in_values_and_gradients(p, scale_by_keep):
    torch.manual_seed(0)
    branch = _Mlp()
    x = torch.randn(32, 5, 6, dtype=torch.float64)
    branch = branch.double()
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)

    y_subset = F.drop_path_residual(x1, branch, p, scale_by_keep=scale_by_keep, seed=13)
    kept_rows = branch.rows[-1]
    g = torch.randn_like(x)
    y_subset.backward(g)
    grads_subset = [t.grad.clone() for t in branch.parameters()]
    branch.zero_grad()

    y_mask = x2 + F.drop_path(branch(x2), p, True, scale_by_keep, seed=13)
    y_mask.backward(g)
    torch.testing.assert_close(y_subset, y_mask, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=1e-12)
    for a, t in zip(grads_subset, branch.parameters(), strict=True):
        torch.testing.assert_close(a, t.grad, rtol=1e-12, atol=1e-12)
    assert kept_rows == int(sample_keep_ref(13, 32, p).sum()) < 32  # the branch saw only the kept samples


def test_drop_path_residual_eval_p1_and_errors():
    branch = _Mlp()
    x = torch.randn(8, 6)
    torch.testing.assert_close(F.drop_path_residual(x, branch, 0.5, training=False), x + branch(x))
    torch.testing.assert_close(F.drop_path_residual(x, branch, 0.0), x + branch(x))
    y = F.drop_path_residual(x, branch, 1.0)
    assert torch.equal(y, x) and branch.rows[-1] == 0
    y.sum().backward()  # the branch ran on an empty batch: its parameters get zero gradients, not None
    assert all(t.grad is not None and not t.grad.any() for t in branch.parameters())
    with pytest.raises(ValueError, match=r"drop_path_residual: branch\(input\) must have shape \(\d+, 6\), but got"):
        F.drop_path_residual(x, lambda h: h[:, :3], 0.5, seed=1)
    with pytest.raises(TypeError, match="drop_path_residual: branch must be callable, but got 'int'."):
        F.drop_path_residual(x, 3, 0.5)
    with pytest.raises(ValueError, match=r"drop_path_residual: p must be in \[0, 1\], but got 1.5."):
        F.drop_path_residual(x, branch, 1.5)


def test_drop_path_residual_is_stochastic_under_mc_dropout():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = nn.Linear(4, 4)

        def forward(self, x):
            return F.drop_path_residual(x, self.mlp, 0.5, self.training)

    block = Block().eval()
    x = torch.randn(64, 4)
    assert torch.equal(block(x), block(x))
    with mc.mc_dropout(block):
        assert not torch.equal(block(x), block(x))


# ----------------------------------------------------------------------------------------------------- DropBlock

DROP_BLOCKS = [
    pytest.param(1, F.drop_block1d, dnn.DropBlock1d, (4, 3, 23), id="1d"),
    pytest.param(2, F.drop_block2d, dnn.DropBlock2d, (4, 3, 11, 13), id="2d"),
    pytest.param(3, F.drop_block3d, dnn.DropBlock3d, (2, 3, 7, 9, 8), id="3d"),
]


def _opening(dropped: torch.Tensor, block_size: int) -> torch.Tensor:
    """Union of the ``block_size`` blocks that lie inside the map and inside ``dropped`` (morphological opening)."""
    dims = dropped.dim() - 2
    fits = -POOLS[dims](-dropped.double(), kernel_size=block_size, stride=1)  # 1 where a whole block is dropped
    grown = POOLS[dims](TF.pad(fits, [block_size - 1] * (2 * dims)), kernel_size=block_size, stride=1)
    return grown > 0


@pytest.mark.parametrize(("dims", "fn", "module", "shape"), DROP_BLOCKS)
class TestDropBlock:
    def test_eval_p0_identity_and_p1_zeros(self, dims, fn, module, shape, device):
        x = torch.randn(shape, device=device)
        assert fn(x, 0.5, 3, training=False) is x
        assert fn(x, 0.0, 3) is x
        assert module(0.5, 3).eval()(x) is x
        x.view(-1)[:3] = torch.tensor([math.nan, math.inf, -math.inf])
        assert torch.equal(fn(x, 1.0, 3), torch.zeros_like(x))

    @pytest.mark.parametrize("block_size", [3, 5])
    def test_matches_torchvision_algorithm_with_the_same_centres(self, dims, fn, module, shape, block_size):
        x = torch.randn(shape, dtype=torch.float64)
        y = fn(x, 0.3, block_size, seed=17)
        ref = drop_block_ref(x, centres_ref(17, x, 0.3, block_size), block_size)
        torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
        assert (y == 0).any()

    @pytest.mark.parametrize("block_size", [1, 2, 3, 4, 5])
    def test_dropped_set_is_a_union_of_whole_blocks_inside_the_map(self, dims, fn, module, shape, block_size):
        for seed in range(5):
            dropped = fn(torch.ones(shape), 0.3, block_size, seed=seed) == 0
            assert torch.equal(_opening(dropped, block_size), dropped)
        # sparse seeds: single blocks are exactly block_size^dims elements
        sparse = fn(torch.ones(64, 1, *([block_size + 2] * dims)), 0.02, block_size, seed=3) == 0
        sizes = {int(m.sum()) for m in sparse.flatten(1)}
        assert block_size**dims in sizes and sizes <= {0, *range(block_size**dims, (block_size + 2) ** dims + 1)}

    def test_block_as_large_as_the_map_drops_whole_channels(self, dims, fn, module, shape):
        """torchvision's test_drop_block with block_size == height: each channel all-or-nothing."""
        side = 11
        x = torch.ones((5, 3) + (side,) * dims)
        for seed in range(4):
            out = fn(x, 0.5, side, seed=seed)
            for b, c in itertools.product(range(5), range(3)):
                assert out[b, c].count_nonzero() in (0, side**dims)

    def test_normalisation_is_numel_over_kept(self, dims, fn, module, shape):
        y = fn(torch.ones(shape), 0.3, 3, seed=5)
        kept = int((y != 0).sum())
        assert 0 < kept < y.numel()
        torch.testing.assert_close(y[y != 0], torch.full((kept,), y.numel() / (1e-06 + kept)))
        z = fn(torch.ones(shape), 0.3, 3, scale_by_keep=False, seed=5)
        assert torch.equal(z != 0, y != 0) and torch.equal(z[z != 0], torch.ones(kept))

    def test_couple_channels_shares_the_mask_across_channels(self, dims, fn, module, shape):
        y = fn(torch.ones(shape), 0.3, 3, couple_channels=True, seed=6) == 0
        assert torch.equal(y, y[:, :1].expand_as(y)) and y.any()
        assert not torch.equal(y[0], y[1])  # samples still differ
        uncoupled = fn(torch.ones(shape), 0.3, 3, seed=6) == 0
        assert not torch.equal(uncoupled, uncoupled[:, :1].expand_as(uncoupled))

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_dtypes_keep_shape_dtype_and_mask(self, dims, fn, module, shape, dtype):
        y = fn(torch.ones(shape, dtype=dtype), 0.3, 3, seed=2)
        assert y.shape == shape and y.dtype == dtype
        assert torch.equal(y == 0, fn(torch.ones(shape), 0.3, 3, seed=2) == 0)
        empty = torch.ones((0,) + shape[1:], dtype=dtype)
        assert fn(empty, 0.3, 3).shape == empty.shape

    def test_channels_last_non_contiguous_and_inplace(self, dims, fn, module, shape):
        x = torch.randn(shape)
        ref = fn(x, 0.3, 3, seed=4)
        if dims >= 2:
            fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
            y = fn(x.contiguous(memory_format=fmt), 0.3, 3, seed=4)
            assert torch.equal(y, ref) and y.is_contiguous(memory_format=fmt)
        view = x.transpose(-1, -2)
        assert torch.equal(fn(view, 0.3, 3, seed=4), fn(view.contiguous(), 0.3, 3, seed=4))
        for dtype in (torch.float32, torch.bfloat16):
            inp = x.to(dtype).clone()
            out = fn(inp, 0.3, 3, True, seed=4)
            assert out is inp and torch.equal(out, fn(x.to(dtype), 0.3, 3, seed=4))

    def test_seeds_generators_and_global_rng(self, dims, fn, module, shape):
        x = torch.ones(shape)
        assert torch.equal(fn(x, 0.3, 3, seed=1), fn(x, 0.3, 3, seed=1))
        assert not torch.equal(fn(x, 0.3, 3, seed=1), fn(x, 0.3, 3, seed=2))
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        assert torch.equal(fn(x, 0.3, 3, generator=g1), fn(x, 0.3, 3, generator=g2))
        torch.manual_seed(0)
        a, b = fn(x, 0.3, 3), fn(x, 0.3, 3)
        torch.manual_seed(0)
        assert not torch.equal(a, b) and torch.equal(a, fn(x, 0.3, 3))
        m1, m2 = module(0.3, 3, seed=9), module(0.3, 3, seed=9)
        assert torch.equal(m1(x), m2(x)) and torch.equal(m1(x), m2(x))

    def test_gradient_is_mask_times_scale_and_nothing_is_saved(self, dims, fn, module, shape):
        saved: list[int] = []
        x = torch.randn(shape, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            y = fn(x * 1.0, 0.3, 3, seed=12)
        assert saved == []
        y.backward(torch.ones_like(y))
        expected = fn(torch.ones(shape), 0.3, 3, seed=12)
        assert torch.equal(x.grad, expected)

    def test_gradcheck_float64(self, dims, fn, module, shape):
        small = (2, 2) + tuple(min(s, 5 if dims < 3 else 4) for s in shape[2:])  # gradcheck is O(numel^2)
        x = torch.randn(small, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda t: fn(t, 0.4, 3, seed=123), (x,))
        assert torch.autograd.gradgradcheck(lambda t: fn(t, 0.4, 3, seed=123), (x,))

    @pytest.mark.statistical
    @pytest.mark.parametrize("block_size", [1, 3])
    @pytest.mark.parametrize("p", [0.1, 0.3])
    def test_dropped_fraction_matches_the_exact_expectation(self, dims, fn, module, shape, block_size, p):
        """Each map's dropped fraction has mean sum_pos(1 - (1 - gamma)^k(pos)) / numel, k(pos) = seeds covering pos.

        Maps are independent, so the mean over M maps is within 4 standard errors of that expectation (a
        two-sided z-test at about 6e-5). The gamma formula's own approximation of p (overlapping blocks) is
        checked against torchvision's tolerance: within 15% of p.
        """
        n, c, *spatial = shape
        gamma = p * math.prod(spatial) / (block_size**dims * math.prod(s - block_size + 1 for s in spatial))
        cover = [
            torch.tensor([min(i, s - block_size) - max(0, i - block_size + 1) + 1 for i in range(s)]) for s in spatial
        ]
        k = cover[0]
        for extra in cover[1:]:
            k = k[..., None] * extra
        expected = float((1 - (1 - gamma) ** k.double()).mean())
        assert 0.75 * p < expected <= p + 1e-12  # overlapping blocks only lower the fraction gamma aims at
        if p <= 0.2:  # torchvision's tolerance for its settings
            assert abs(expected - p) / p < 0.15
        fractions = torch.cat([(fn(torch.ones(shape), p, block_size, seed=s) == 0).flatten(2).double().mean(2)
                               for s in range(60)]).flatten()  # fmt: skip
        se = float(fractions.std()) / math.sqrt(fractions.numel())
        assert abs(float(fractions.mean()) - expected) < 4 * se + 1e-12
        if block_size == 1:  # element-wise: a binomial test on the dropped count, p-value > 0.01
            dropped = int(round(float(fractions.sum()) * math.prod(spatial)))
            assert stats.binomtest(dropped, fractions.numel() * math.prod(spatial), p=p).pvalue > 0.01


@pytest.mark.statistical
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("p", [0.1, 0.2])
def test_drop_block_random_as_torchvision(dim, p):
    """torchvision's TestDropBlock.test_drop_block_random: relative error of the dropped fraction < 15%."""
    for seed in range(3):
        torch.manual_seed(seed)
        x = torch.ones((5, 3) + (11,) * dim)
        layer = dnn.DropBlock2d(p=p, block_size=3) if dim == 2 else dnn.DropBlock3d(p=p, block_size=3)
        cell_numel = x.numel()
        counts = 0
        for _ in range(100):
            with torch.no_grad():
                counts += cell_numel - layer(x).nonzero().size(0)
        assert abs(p - counts / (100 * cell_numel)) / p < 0.15


def test_structured_modules_and_ops_are_leaves_for_fx():
    model = nn.Sequential(dnn.DropBlock2d(0.1, 3), dnn.DropPath(0.1), dnn.StochasticDepth(0.1, "row"))
    graph = torch.fx.symbolic_trace(model).graph  # modules: one call each, switched by the graph's train/eval
    assert [(n.op, n.target) for n in graph.nodes][1:-1] == [("call_module", str(i)) for i in range(3)]

    def f(x):
        return F.stochastic_depth(F.drop_path(F.drop_block2d(x, 0.1, 3), 0.1), 0.1, "row", True)

    graph = torch.fx.symbolic_trace(f).graph  # ops: one call each, as torchvision's wrapped ops
    called = [n.target for n in graph.nodes if n.op == "call_function"]
    assert called == [F.drop_block2d, F.drop_path, F.stochastic_depth]


# ---------------------------------------------------------------------------------------------------- scheduler


def test_drop_block_scheduler_ramps_p_linearly_and_resumes():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), dnn.DropBlock2d(0.5, 3), nn.Sequential(dnn.DropBlock2d(0.5, 5)))
    sched = dnn.DropBlockScheduler(model, start=0.0, stop=0.3, steps=4)
    assert model[1].p == 0.0 and model[2][0].p == 0.0
    values = [sched.step() for _ in range(5)]
    assert values == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3]) and model[2][0].p == values[-1]
    state = sched.state_dict()
    fresh = dnn.DropBlockScheduler(model, start=0.0, stop=0.3, steps=4)
    assert model[1].p == 0.0
    fresh.load_state_dict(state)
    assert model[1].p == pytest.approx(0.3) and fresh.last_step == 5
    single = dnn.DropBlockScheduler(dnn.DropBlock1d(0.0, 3), stop=0.2, steps=1)
    assert single.modules[0].p == 0.2 and "steps=1" in repr(single)


def test_drop_block_scheduler_types_and_errors():
    model = nn.Sequential(dnn.DropPath(0.1), dnn.DropBlock3d(0.1, 3))
    sched = dnn.DropBlockScheduler(model, 0.0, 0.2, 3, types=(dnn.DropPath,))
    sched.step()
    assert model[0].p == pytest.approx(0.1) and model[1].p == 0.1
    with pytest.raises(ValueError, match="DropBlockScheduler: model must contain a module of type DropBlock1d, "):
        dnn.DropBlockScheduler(nn.Linear(2, 2), 0.0, 0.1, 3)
    with pytest.raises(ValueError, match="DropBlockScheduler: steps must be an int >= 1, but got 0."):
        dnn.DropBlockScheduler(model, 0.0, 0.1, 0)
    with pytest.raises(ValueError, match=r"DropBlockScheduler: p must be in \[0, 1\], but got 1.5."):
        dnn.DropBlockScheduler(model, 0.0, 1.5, 3)
    with pytest.raises(TypeError, match="DropBlockScheduler: model must be a torch.nn.Module, but got 'list'."):
        dnn.DropBlockScheduler([], 0.0, 0.1, 3)


# ---------------------------------------------------------------------------------------------------- MC dropout


def test_mc_dropout_switches_structured_modules_and_functional_ops_on():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(2, 2, 1)

        def forward(self, x):
            return F.drop_block1d(self.conv(x), 0.3, 3, training=self.training)

    models = [
        nn.Sequential(nn.Conv2d(2, 2, 1), dnn.DropBlock2d(0.3, 3)),
        nn.Sequential(nn.Linear(3, 3), dnn.DropPath(0.5)),
        nn.Sequential(nn.Linear(3, 3), dnn.StochasticDepth(0.5, "row")),
        nn.Sequential(nn.Conv1d(2, 2, 1), dnn.DropBlock1d(0.3, 3)),
        Net(),
    ]
    inputs = [
        torch.randn(8, 2, 9, 9),
        torch.randn(32, 3),
        torch.randn(32, 3),
        torch.randn(8, 2, 9),
        torch.randn(8, 2, 9),
    ]
    for model, x in zip(models, inputs, strict=True):
        model.eval()
        assert torch.equal(model(x), model(x))
        with mc.mc_dropout(model):
            assert not torch.equal(model(x), model(x))
        assert not any(m.training for m in model.modules())


# -------------------------------------------------------------------------------------------------------- errors

X4 = torch.ones(2, 3, 8, 8)

ERRORS = [
    (lambda: F.stochastic_depth(X4, 1.5, "row"), ValueError, "stochastic_depth: p must be in [0, 1], but got 1.5."),
    (
        lambda: F.stochastic_depth(X4, math.nan, "row"),
        ValueError,
        "stochastic_depth: p must be in [0, 1], but got nan.",
    ),
    (
        lambda: F.stochastic_depth(X4, 0.5, "col"),
        ValueError,
        "stochastic_depth: mode must be one of 'batch', 'row', but got 'col'.",
    ),
    (
        lambda: F.stochastic_depth(torch.tensor(1.0), 0.5, "row"),
        ValueError,
        "stochastic_depth: input must have a batch dimension (N, *), but got a 0-D input.",
    ),
    (
        lambda: F.stochastic_depth(torch.ones(3, dtype=torch.int64), 0.5, "row"),
        TypeError,
        "stochastic_depth: input must be a floating-point tensor in training, but got torch.int64.",
    ),
    (lambda: F.drop_path(X4, -0.1, True), ValueError, "drop_path: p must be in [0, 1], but got -0.1."),
    (lambda: F.drop_path(X4, 0.1, True, "yes"), TypeError, "drop_path: scale_by_keep must be a bool, but got 'yes'."),
    (
        lambda: F.drop_path(X4, 0.1, True, seed=1, generator=torch.Generator()),
        ValueError,
        "drop_path: pass either seed or generator, not both.",
    ),
    (lambda: F.drop_path_rates(1.2, [2, 2]), ValueError, "drop_path_rates: p must be in [0, 1], but got 1.2."),
    (
        lambda: F.drop_path_rates(0.1, [2, -1]),
        ValueError,
        "drop_path_rates: depths must be an int >= 0 or a sequence of them, but got [2, -1].",
    ),
    (
        lambda: F.drop_path_rates(0.1, "12"),
        TypeError,
        "drop_path_rates: depths must be an int or a sequence of ints, but got '12'.",
    ),
    (
        lambda: F.drop_path_rates(0.1, [2], rule="cosine"),
        ValueError,
        "drop_path_rates: rule must be one of 'linear', 'stage', 'uniform', but got 'cosine'.",
    ),
    (lambda: F.drop_block2d(X4, 1.5, 3), ValueError, "drop_block2d: p must be in [0, 1], but got 1.5."),
    (
        lambda: F.drop_block2d(torch.ones(3, 8, 8), 0.1, 3),
        ValueError,
        "drop_block2d: input must be a 4-D tensor (N, C, H, W), but got a 3-D input. Use dropout() for per-element",
    ),
    (
        lambda: F.drop_block3d(X4, 0.1, 3),
        ValueError,
        "drop_block3d: input must be a 5-D tensor (N, C, D, H, W), but got a 4-D input.",
    ),
    (
        lambda: F.drop_block1d(X4, 0.1, 3),
        ValueError,
        "drop_block1d: input must be a 3-D tensor (N, C, L), but got a 4-D input.",
    ),
    (lambda: F.drop_block2d(X4, 0.1, 0), ValueError, "drop_block2d: block_size must be an int >= 1, but got 0."),
    (lambda: F.drop_block2d(X4, 0.1, 3.0), TypeError, "drop_block2d: block_size must be an int, but got 3.0."),
    (lambda: F.drop_block2d(X4, 0.1, 3, eps=-1.0), ValueError, "drop_block2d: eps must be a finite number >= 0"),
    (
        lambda: F.drop_block2d(X4, 0.1, 3, couple_channels=1),
        TypeError,
        "drop_block2d: couple_channels must be a bool, but got 1.",
    ),
    (
        lambda: F.drop_block2d(torch.ones(1, 1, 4, 4, dtype=torch.int32), 0.1, 3),
        TypeError,
        "drop_block2d: input must be a floating-point tensor in training, but got torch.int32.",
    ),
    (lambda: F.drop_block2d(X4, 0.1, 3, seed=-2), ValueError, "drop_block2d: seed must be in [0, 2**64), but got -2."),
    (lambda: dnn.DropBlock2d(0.1, 0), ValueError, "DropBlock2d: block_size must be an int >= 1, but got 0."),
    (lambda: dnn.DropBlock3d(2.0, 3), ValueError, "DropBlock3d: p must be in [0, 1], but got 2.0."),
    (lambda: dnn.DropBlock1d(0.1, 3, eps=math.inf), ValueError, "DropBlock1d: eps must be a finite number >= 0"),
    (lambda: dnn.DropPath(1.1), ValueError, "DropPath: p must be in [0, 1], but got 1.1."),
    (lambda: dnn.DropPath(0.1, None), TypeError, "DropPath: scale_by_keep must be a bool, but got None."),
    (
        lambda: dnn.StochasticDepth(0.1, "rows"),
        ValueError,
        "StochasticDepth: mode must be one of 'batch', 'row', but got 'rows'.",
    ),
    (lambda: dnn.StochasticDepth(0.1, seed=1.5), TypeError, "StochasticDepth: seed must be an int, but got 1.5."),
]


@pytest.mark.parametrize(("call", "exc", "message"), ERRORS)
def test_error_messages(call, exc, message):
    with pytest.raises(exc, match=re.escape(message)):
        call()


def test_eval_still_checks_rank_and_a_block_larger_than_the_map_is_clamped_to_it():
    with pytest.raises(ValueError, match="drop_block2d: input must be a 4-D tensor"):
        dnn.DropBlock2d(0.1, 3).eval()(torch.ones(8, 8))
    x = torch.randn(2, 3, 8, 5)  # torchvision and timm: block_size = min(block_size, H, W)
    assert F.drop_block2d(x, 0.3, 7, training=False) is x
    torch.testing.assert_close(F.drop_block2d(x, 0.3, 7, seed=4), F.drop_block2d(x, 0.3, 5, seed=4), rtol=0, atol=0)
    v = torch.randn(1, 2, 3, 6, 6)
    torch.testing.assert_close(F.drop_block3d(v, 0.5, 9, seed=1), F.drop_block3d(v, 0.5, 3, seed=1), rtol=0, atol=0)


def test_bench_drop_path_smoke_run(capsys):
    """The benchmark script runs (tiny shapes, one round); timings are not asserted, the memory proxy is."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_drop_path.py"
    spec = importlib.util.spec_from_file_location("bench_drop_path", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--shape", "64", "3", "8", "--hidden", "16", "--rounds", "2", "--rates", "0.4"])
    memory = out["memory"][0.4]
    assert all(len(v) == 2 for v in out["times"][0.4].values())
    assert all(s < m for s, m in zip(memory["subset"], memory["multiply"], strict=True))  # fewer rows saved
    assert "subset/multiply" in capsys.readouterr().out


def test_drop_path_accepts_timms_drop_prob_spelling():
    """timm code passes ``drop_prob=``: DropPath and drop_path take it as an alias of ``p`` (not both)."""
    import dropkit.functional as DF
    import dropkit.nn as dnn

    m = dnn.DropPath(drop_prob=0.25)
    assert m.p == m.drop_prob == 0.25
    m.drop_prob = 0.5
    assert m.p == 0.5
    x = torch.ones(8, 3)
    assert torch.equal(DF.drop_path(x, drop_prob=0.5, training=True, seed=3), DF.drop_path(x, 0.5, True, seed=3))
    with pytest.raises(ValueError, match="drop_path: pass either p or drop_prob, not both."):
        DF.drop_path(x, 0.1, drop_prob=0.2)
    with pytest.raises(ValueError, match="DropPath: pass either p or drop_prob, not both."):
        dnn.DropPath(0.1, drop_prob=0.2)
