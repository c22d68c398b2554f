"""Property tests over shapes, dtypes, strides and p: each output element is a drop or the scaled input."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dropkit import functional as F
from dropkit import kernels, rng

DTYPES = st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64])
SHAPES = st.lists(st.integers(0, 9), min_size=1, max_size=4)
PS = st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0, allow_nan=False))


def _view(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same logical tensor as ``x`` with another memory layout."""
    if layout == "transposed" and x.dim() >= 2:
        return x.transpose(0, -1).contiguous().transpose(0, -1)
    if layout == "strided":
        return torch.repeat_interleave(x, 2, dim=-1)[..., ::2]
    return x


@settings(max_examples=120, deadline=None)
@given(
    shape=SHAPES,
    dtype=DTYPES,
    p=PS,
    seed=st.integers(0, 2**64 - 1),
    layout=st.sampled_from(["contiguous", "transposed", "strided"]),
    backend=st.sampled_from(["numba", "reference"]),
)
def test_dropout_matches_reference_mask_for_any_layout(shape, dtype, p, seed, layout, backend):
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    with kernels.use_backend(backend):
        y = F.dropout(_view(x, layout), p, seed=seed)
    assert y.shape == x.shape and y.dtype == dtype
    keep = (rng.uniform(x.numel(), seed) >= torch.tensor(p, dtype=torch.float32)).reshape(x.shape)
    scale = 0.0 if p == 1 else 1.0 / (1.0 - p)
    opmath = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    expected = torch.where(keep, x.to(opmath) * scale, torch.zeros((), dtype=opmath)).to(dtype)
    if p == 0.0:
        expected = x
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 5),
    c=st.integers(1, 6),
    spatial=st.lists(st.integers(1, 4), min_size=2, max_size=2),
    p=PS,
    seed=st.integers(0, 2**63),
    channels_last=st.booleans(),
)
def test_dropout2d_drops_whole_channels_with_the_reference_mask(n, c, spatial, p, seed, channels_last):
    x = torch.rand(n, c, *spatial) + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = F.dropout2d(x, p, seed=seed)
    keep = (rng.uniform(n * c, seed) >= torch.tensor(p, dtype=torch.float32)).reshape(n, c, 1, 1)
    scale = 0.0 if p == 1 else 1.0 / (1.0 - p)
    expected = x if p == 0 else torch.where(keep, x * scale, torch.zeros(()))
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    if channels_last and p not in (0.0,):
        assert y.is_contiguous(memory_format=torch.channels_last)


@settings(max_examples=40, deadline=None)
@given(shape=SHAPES.filter(lambda s: math.prod(s) > 0), p=st.floats(0.01, 0.99), seed=st.integers(0, 2**32))
def test_gradient_is_the_forward_mask_times_scale(shape, p, seed):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = F.dropout(x, p, seed=seed)
    y.backward(torch.ones_like(y))
    keep = rng.uniform(x.numel(), seed).reshape(shape) >= torch.tensor(p, dtype=torch.float32)
    torch.testing.assert_close(x.grad, keep.double() / (1 - p), rtol=0, atol=0)
