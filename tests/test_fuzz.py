"""Hypothesis fuzzing of every public functional op: valid inputs keep the contract, bad ones raise clear errors.

CI runs a few hundred generated cases; the ``slow`` run (``pytest --runslow`` or ``DROPKIT_SLOW=1``) runs
12,000. Each case draws an op, a shape, a dtype, a memory layout, p (edge values included), a 64-bit seed,
optionally NaN/inf values and a shard, and checks: the call succeeds; shape and dtype follow the input; the
same seed gives the same output bit for bit (NaN-aware); mask ops turn dropped elements into exact fills
(so NaN appears only where the input had NaN or inf); p = 1 zeroes dropout; backward gives finite gradients
for finite inputs. Invalid p, seeds and non-float inputs raise the documented exception naming the op.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dropkit import functional as F
from dropkit import kernels, rng

CI_CASES, SLOW_CASES = 60, 3_000  # per test; four tests: 240 cases in CI, 12,000 in the slow run


def _fuzz(body, **strategies):
    """Return ``(ci_test, slow_test)``: the property under a fixed CI budget and a ``slow``-marked 12,000 budget."""
    common = {"deadline": None, "suppress_health_check": list(HealthCheck)}
    ci = settings(max_examples=CI_CASES, derandomize=True, **common)(given(**strategies)(body))
    slow = settings(max_examples=SLOW_CASES, **common)(given(**strategies)(body))
    return ci, pytest.mark.slow(slow)


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
MASK_OPS = {"dropout", "dropout1d", "dropout2d", "dropout3d"}


def _layout(data, x: torch.Tensor) -> torch.Tensor:
    layout = data.draw(st.sampled_from(["contiguous", "transposed", "strided"]), label="layout")
    if layout == "transposed" and x.dim() >= 2:
        return x.transpose(0, -1).contiguous().transpose(0, -1)
    if layout == "strided" and x.dim() >= 1:
        return torch.repeat_interleave(x, 2, dim=-1)[..., ::2]
    return x


def _tensor(data, shape, dtype, special: bool = True) -> torch.Tensor:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 999), label="xs")))
    if special and x.numel() and data.draw(st.booleans(), label="special"):
        flat = x.view(-1)
        for value in (math.nan, math.inf, -math.inf):
            flat[data.draw(st.integers(0, x.numel() - 1), label="where")] = value
    return _layout(data, x.to(dtype))


def _shape(data, min_dims: int, max_dims: int, min_size: int = 0) -> tuple[int, ...]:
    ndim = data.draw(st.integers(min_dims, max_dims), label="ndim")
    return tuple(data.draw(st.lists(st.integers(min_size, 6), min_size=ndim, max_size=ndim), label="shape"))


P = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 1e-7, 1 - 1e-7]), st.floats(0.0, 1.0, allow_nan=False))


def _case(data, op: str):
    """Return ``(call(seed) -> output, input, expected_shape)`` for a valid random call of ``op``."""
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    p = data.draw(P, label="p")
    if op in ("dropout", "alpha_dropout", "gaussian_noise"):
        x = _tensor(data, _shape(data, 0, 4), dtype)
    elif op == "gaussian_dropout":
        p = min(p, 0.99)
        x = _tensor(data, _shape(data, 0, 4), dtype)
    elif op == "dropout1d":
        x = _tensor(data, _shape(data, 2, 3), dtype)
    elif op in ("dropout2d", "feature_alpha_dropout"):
        x = _tensor(data, _shape(data, 3, 4), dtype)
    elif op == "dropout3d":
        x = _tensor(data, _shape(data, 4, 5), dtype)
    elif op in ("bias_dropout_add", "dropout_add_layer_norm", "dropout_add_rms_norm"):
        shape = _shape(data, 1, 3, min_size=1)
        x, residual = _tensor(data, shape, dtype), _tensor(data, shape, dtype, special=False)
        vec = torch.randn(shape[-1]).to(dtype)
        if op == "bias_dropout_add":
            return (lambda seed: F.bias_dropout_add(x, vec, residual, p, seed=seed)), x, shape
        fn = getattr(F, op)
        return (lambda seed: fn(x, residual, vec + 1, vec, p, seed=seed)), x, shape
    elif op == "drop_connect":
        x = _tensor(data, _shape(data, 1, 3), dtype)
        return (lambda seed: F.drop_connect(x, p, seed=seed)), x, x.shape
    elif op in ("drop_connect_linear", "drop_connect_conv1d", "drop_connect_conv2d"):
        dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="wdtype")
        n, cin, cout = (data.draw(st.integers(1, 4), label=k) for k in ("n", "cin", "cout"))
        per_sample = data.draw(st.booleans(), label="per_sample")
        if op == "drop_connect_linear":
            x, w, shape = _tensor(data, (n, cin), dtype, False), torch.randn(cout, cin, dtype=dtype), (n, cout)
        else:
            nd = 1 if op.endswith("1d") else 2
            size = data.draw(st.integers(2, 5), label="size")
            x = _tensor(data, (n, cin) + (size,) * nd, dtype, False)
            w, shape = torch.randn((cout, cin) + (2,) * nd, dtype=dtype), (n, cout) + (size - 1,) * nd
        fn = getattr(F, op)
        return (lambda seed: fn(x, w, torch.zeros(cout, dtype=dtype), p=p, per_sample=per_sample, seed=seed)), x, shape
    elif op == "concrete_dropout":
        x = _tensor(data, _shape(data, 0, 3), dtype, special=False)
        logit = data.draw(st.floats(-6.0, 6.0), label="logit")
        return (lambda seed: F.concrete_dropout(x, logit, seed=seed)), x, x.shape
    else:  # pragma: no cover - a new public op without a fuzz case
        raise AssertionError(op)
    fn = getattr(F, op)
    if op == "gaussian_noise":
        return (lambda seed: fn(x, p, seed=seed)), x, x.shape
    kwargs = {"training": True} if "alpha" in op else {}
    return (lambda seed: fn(x, p, seed=seed, **kwargs)), x, x.shape


OPS = [
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "gaussian_dropout",
    "gaussian_noise", "bias_dropout_add", "dropout_add_layer_norm", "dropout_add_rms_norm", "drop_connect",
    "drop_connect_linear", "drop_connect_conv1d", "drop_connect_conv2d", "concrete_dropout",
]  # fmt: skip


def test_fuzz_table_names_public_ops():
    assert set(OPS) <= set(F.__all__)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and torch.equal(a.isnan(), b.isnan())
        and torch.equal(a.nan_to_num(0.0, 1.0, -1.0), b.nan_to_num(0.0, 1.0, -1.0))
    )


def _public_ops(data, op, seed):
    backend = data.draw(st.sampled_from(["numba", "reference"]), label="backend")
    with kernels.use_backend(backend):
        call, x, shape = _case(data, op)
        y = call(seed)
        assert tuple(y.shape) == tuple(shape) and y.dtype == x.dtype
        assert _same(y, call(seed))
        if op in MASK_OPS | {"alpha_dropout", "feature_alpha_dropout"}:
            assert not (y.isnan() & ~(x.isnan() | x.isinf())).any()  # dropped NaN/inf become exact fills
            assert y.is_contiguous(memory_format=torch.contiguous_format) or x.numel() == 0 or not x.is_contiguous()


def _shards_and_large_offsets(data, op, seed, offset_bits):
    # a shard's mask is the slice of the global mask, including global offsets far beyond 2^32
    ndim = {"dropout": (1, 4), "dropout1d": (2, 3), "dropout2d": (3, 4), "dropout3d": (4, 5)}[op]
    x = _tensor(data, _shape(data, *ndim, min_size=1), torch.float32, special=False)
    dim = data.draw(st.integers(0, x.dim() - 1), label="dim")
    start = data.draw(st.integers(0, x.shape[dim] - 1), label="start")
    stop = data.draw(st.integers(start + 1, x.shape[dim]), label="stop")
    fn = getattr(F, op)
    full = fn(x, 0.5, seed=seed)
    with rng.shard(dim=dim, start=start, size=x.shape[dim]):
        part = fn(x.narrow(dim, start, stop - start), 0.5, seed=seed)
    assert torch.equal(part, full.narrow(dim, start, stop - start))
    numel, offset = 37, 2**offset_bits - 5 if offset_bits >= 3 else offset_bits  # crossing 2^32 and group edges
    spec = kernels.MaskSpec(seed, offset, rng.keep_threshold(0.5), 2.0)
    reference = kernels.reference.keep_mask_ref(numel, seed, offset, spec.threshold)
    with kernels.use_backend("numba"):
        assert torch.equal(kernels.keep_mask(spec, (numel,), torch.device("cpu")), reference)


def _backward_is_finite_and_p1_is_zero(data, op):
    call, x, _ = _case(data, op)
    x = x.detach().float().nan_to_num(0.0, 0.0, 0.0).requires_grad_(True)
    fn = getattr(F, op)
    kwargs = {"training": True} if "alpha" in op else {}
    y = fn(x, 0.3, seed=data.draw(st.integers(0, 2**64 - 1), label="seed"), **kwargs)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if op in MASK_OPS:
        assert torch.equal(fn(x.detach(), 1.0, seed=0), torch.zeros_like(x))


BAD_P = st.one_of(
    st.floats(allow_nan=True).filter(lambda v: not 0.0 <= v <= 1.0), st.sampled_from([math.nan, math.inf, -0.5, 1.5])
)


def _bad_arguments_raise_clear_errors(op, bad):
    fn = getattr(F, op)
    x = torch.ones(2, 3, 4) if op == "dropout1d" else torch.ones(2, 3, 4, 5)
    kwargs = {"training": True} if "alpha" in op else {}
    kind, value = bad
    if kind == "p":
        with pytest.raises(ValueError, match=rf"^{op}: p must be in \[0, 1\)?\]?, but got"):
            fn(x, value, **kwargs)
    elif kind == "ptype":
        with pytest.raises(TypeError, match=rf"^{op}: p must be a real number"):
            fn(x, value, **kwargs)
    elif kind == "seed":
        with pytest.raises(ValueError, match=rf"^{op}: seed must be in \[0, 2\*\*64\)"):
            fn(x, 0.5, seed=value, **kwargs)
    elif kind == "seedtype":
        with pytest.raises(TypeError, match=rf"^{op}: seed must be an int"):
            fn(x, 0.5, seed=value, **kwargs)
    else:
        with pytest.raises(TypeError, match=rf"^{op}: "):
            fn(x.to(value), 0.5, **kwargs)


test_fuzz_public_ops, test_fuzz_public_ops_slow = _fuzz(
    _public_ops, data=st.data(), op=st.sampled_from(OPS), seed=st.integers(0, 2**64 - 1)
)
test_fuzz_shards_and_large_offsets, test_fuzz_shards_and_large_offsets_slow = _fuzz(
    _shards_and_large_offsets,
    data=st.data(),
    op=st.sampled_from(sorted(MASK_OPS)),
    seed=st.integers(0, 2**64 - 1),
    offset_bits=st.integers(0, 40),
)
test_fuzz_backward_is_finite, test_fuzz_backward_is_finite_slow = _fuzz(
    _backward_is_finite_and_p1_is_zero,
    data=st.data(),
    op=st.sampled_from(sorted(MASK_OPS | {"alpha_dropout", "gaussian_dropout"})),
)
test_fuzz_bad_arguments, test_fuzz_bad_arguments_slow = _fuzz(
    _bad_arguments_raise_clear_errors,
    op=st.sampled_from(sorted(MASK_OPS | {"alpha_dropout", "feature_alpha_dropout", "gaussian_dropout"})),
    bad=st.one_of(
        BAD_P.map(lambda v: ("p", v)),
        st.sampled_from(["0.5", None, True, 1j]).map(lambda v: ("ptype", v)),
        st.one_of(st.integers(max_value=-1), st.integers(min_value=2**64)).map(lambda v: ("seed", v)),
        st.sampled_from([1.5, "1", True]).map(lambda v: ("seedtype", v)),
        st.sampled_from([torch.int64, torch.int32, torch.bool]).map(lambda v: ("dtype", v)),
    ),
)
