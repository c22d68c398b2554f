"""Triton kernels: bit-identical masks, fused dropout + add + norm, device-held seeds, op registration.

On a machine without a GPU these run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set
by conftest) with the ``triton`` backend forced; with a GPU they run on CUDA tensors through the normal
dispatch. Either way the oracle is the torch-ops reference (:mod:`dropkit.kernels.reference`).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="triton is part of the test extra on Linux x86_64")

import dropkit.nn as dnn  # noqa: E402
from dropkit import functional as F  # noqa: E402
from dropkit import kernels, rng  # noqa: E402
from dropkit.kernels import triton as tk  # noqa: E402
from dropkit.kernels.reference import keep_mask_ref, masked_affine_ref  # noqa: E402

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture
def tdev():
    """The device the Triton kernels run on here: CUDA, or CPU under the interpreter."""
    if torch.cuda.is_available():
        yield "cuda"
    else:
        with kernels.use_backend("triton"):
            yield "cpu"


def _keep(numel: int, seed: int, offset: int, p: float) -> torch.Tensor:
    return keep_mask_ref(numel, seed, offset, rng.keep_threshold(p))


def _assert_identical(got: torch.Tensor, want: torch.Tensor) -> None:
    """Bit-identical on a GPU. Triton's interpreter rounds float32 → fp16/bf16 stores differently from the GPU
    (its downcast is not round-to-nearest-even for every value), so there: identical zeros (the mask) and
    values within one unit in the last place."""
    got, want = got.cpu(), want.cpu()
    if torch.cuda.is_available() or got.dtype in (torch.float32, torch.float64):
        assert torch.equal(got, want)
        return
    assert torch.equal(got == 0, want == 0)
    ulp = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}[got.dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=ulp, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("numel", "offset", "row"),
    [(1, 0, 1), (1000, 0, 1), (5000, 0, 1), (3000, 700, 1), (4096, 2**32 - 1024, 1), (33 * 7, 5, 33), (36, 0, 3)],
)
def test_masked_affine_is_bit_identical_to_reference(tdev, dtype, numel, offset, row):
    x = torch.randn(numel, device=tdev).to(dtype)
    seed, p = 2**63 + 12345, 0.3
    y = tk.masked_affine(x, seed, offset, rng.keep_threshold(p), 1 / (1 - p), row=row)
    keep = _keep(numel // row, seed, offset, p).to(tdev).repeat_interleave(row)
    _assert_identical(y, masked_affine_ref(x, keep, 1 / (1 - p)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_ops_match_cpu_reference_bit_for_bit(tdev, dtype):
    """The public ops on the Triton path give the reference's outputs and gradients exactly."""
    x = torch.randn(4, 6, 5, 7).to(dtype)
    cases = [
        lambda t: F.dropout(t, 0.4, seed=11),
        lambda t: F.dropout2d(t, 0.4, seed=11),
        lambda t: F.dropout1d(t[0], 0.4, seed=11),
        lambda t: F.dropout(t, 1.0, seed=11),
        lambda t: F.dropout(t, 0.25, mode="classic", seed=3),
    ]
    for op in cases:
        with kernels.use_backend("reference"):
            ref_in = x.clone().requires_grad_()
            ref = op(ref_in)
            ref.backward(torch.ones_like(ref))
        dev_in = x.to(tdev).clone().requires_grad_()
        out = op(dev_in)
        out.backward(torch.ones_like(out))
        _assert_identical(out, ref)
        _assert_identical(dev_in.grad, ref_in.grad)


def test_alpha_dropout_matches_reference(tdev):
    x = torch.randn(64, 48)
    with kernels.use_backend("reference"):
        ref = F.alpha_dropout(x, 0.3, training=True, seed=5)
    out = F.alpha_dropout(x.to(tdev), 0.3, training=True, seed=5).cpu()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)  # x * a + b may be fused into one rounding on a GPU
    fill = F.SELU_ALPHA_PRIME * (1.0 / ((F.SELU_ALPHA_PRIME**2 * 0.3 + 1.0) * 0.7) ** 0.5) * (0.3 - 1.0)
    assert torch.equal(out == torch.tensor(fill, dtype=out.dtype), ref == torch.tensor(fill, dtype=ref.dtype))


def test_keep_mask_on_the_triton_path_matches_reference(tdev):
    spec = kernels.MaskSpec(99, 0, rng.keep_threshold(0.5), 2.0)
    got = kernels.keep_mask(spec, (3, 700), torch.device(tdev))
    assert torch.equal(got.cpu(), keep_mask_ref(2100, 99, 0, rng.keep_threshold(0.5)).reshape(3, 700))


def test_inplace_and_noncontiguous_inputs(tdev):
    x = torch.randn(8, 16, device=tdev)
    expected = F.dropout(x, 0.5, seed=1)
    y = x.clone()
    F.dropout(y, 0.5, inplace=True, seed=1)
    assert torch.equal(y, expected)
    xt = torch.randn(16, 8, device=tdev).t()  # non-contiguous: reference path with the kernel's mask
    with kernels.use_backend("reference"):
        ref = F.dropout(xt.cpu(), 0.5, seed=2)
    assert torch.equal(F.dropout(xt, 0.5, seed=2).cpu(), ref)


@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_dropout_add_matches_composition(tdev, with_bias):
    x, r = torch.randn(6, 300), torch.randn(6, 300)
    b = torch.randn(300) if with_bias else None
    args = [t.to(tdev).clone().requires_grad_() if t is not None else None for t in (x, b, r)]
    y = F.bias_dropout_add(args[0], args[1], args[2], 0.3, seed=8)
    ref_args = [t.clone().requires_grad_() if t is not None else None for t in (x, b, r)]
    with kernels.use_backend("reference"):
        ref = ref_args[2] + F.dropout(ref_args[0] if b is None else ref_args[0] + ref_args[1], 0.3, seed=8)
    torch.testing.assert_close(y.cpu(), ref.detach(), rtol=1e-6, atol=1e-6)
    g = torch.randn(6, 300)
    y.backward(g.to(tdev))
    ref.backward(g)
    for got, want in zip(args, ref_args, strict=True):
        if got is not None:
            torch.testing.assert_close(got.grad.cpu(), want.grad, rtol=1e-5, atol=1e-5)


def _norm_reference(x, residual, weight, bias, keep, p, rowscale, eps, is_rms):
    """Explicit-mask float64 oracle: h = keep * x * rowscale / (1 - p) + residual, y = norm(h) * w + b."""
    h = x.double()
    if rowscale is not None:
        h = h * rowscale.double().reshape(x.shape[:-1] + (1,))
    h = torch.where(keep, h / (1 - p), 0.0) if p > 0 else h
    if residual is not None:
        h = h + residual.double()
    if is_rms:
        y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    else:
        y = (h - h.mean(-1, keepdim=True)) * torch.rsqrt(h.var(-1, unbiased=False, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.double()
    if bias is not None:
        y = y + bias.double()
    return y, h


@pytest.mark.parametrize("is_rms", [False, True])
@pytest.mark.parametrize(
    ("shape", "dtype", "p", "residual", "rowscale", "affine"),
    [
        ((3, 5, 1024), torch.float32, 0.2, True, False, True),  # aligned rows: one Philox call per 4 elements
        ((7, 300), torch.float32, 0.5, True, True, True),  # unaligned rows
        ((2, 3, 2048), torch.bfloat16, 0.1, True, False, True),
        ((4, 256), torch.float16, 0.3, False, True, False),
        ((5, 1000), torch.float32, 0.0, True, False, True),
    ],
)
def test_fused_norm_matches_explicit_mask_oracle(tdev, is_rms, shape, dtype, p, residual, rowscale, affine):
    torch.manual_seed(0)
    cols, rows = shape[-1], int(torch.tensor(shape[:-1]).prod())
    x = torch.randn(shape).to(dtype)
    r = torch.randn(shape).to(dtype) if residual else None
    w = torch.randn(cols) if affine else None
    b = torch.randn(cols) if affine else None
    rs = torch.rand(shape[:-1]) if rowscale else None
    op = F.dropout_add_rms_norm if is_rms else F.dropout_add_layer_norm
    leaves = [t.to(tdev).clone().requires_grad_() if t is not None else None for t in (x, r, w, b)]
    y, h = op(*leaves, p, 1e-5, rs.to(tdev) if rs is not None else None, prenorm=True, seed=21)
    keep = _keep(rows * cols, 21, 0, p).reshape(shape)
    ref_leaves = [t.double().requires_grad_() if t is not None else None for t in (x, r, w, b)]
    ry, rh = _norm_reference(*ref_leaves, keep, p, rs, 1e-5, is_rms)
    tol = TOL[dtype]
    torch.testing.assert_close(h.double().cpu(), rh.detach().to(h.dtype).double(), rtol=tol, atol=tol)
    torch.testing.assert_close(y.double().cpu(), ry.detach(), rtol=4 * tol, atol=4 * tol)
    assert y.dtype == dtype and h.dtype == dtype
    gy, gh = torch.randn(shape), torch.randn(shape)
    torch.autograd.backward((y, h), (gy.to(tdev).to(dtype), gh.to(tdev).to(dtype)))
    torch.autograd.backward((ry, rh), (gy.to(dtype).double(), gh.to(dtype).double()))
    for got, want in zip(leaves, ref_leaves, strict=True):
        if got is not None:
            scale = want.grad.abs().max().item() + 1.0
            torch.testing.assert_close(got.grad.double().cpu() / scale, want.grad / scale, rtol=0, atol=8 * tol)


def test_fused_norm_residual_dtypes_and_eval(tdev):
    x = torch.randn(4, 1024, device=tdev, dtype=torch.bfloat16)
    w = torch.ones(1024, device=tdev)
    y, h = F.dropout_add_layer_norm(x, None, w, None, 0.3, residual_in_fp32=True, prenorm=True, seed=1)
    assert h.dtype == torch.float32 and y.dtype == torch.bfloat16
    keep = _keep(4 * 1024, 1, 0, 0.3).reshape(4, 1024).to(tdev)
    assert torch.equal(h != 0, keep & (x != 0))
    y_eval = F.dropout_add_layer_norm(x, x, w, None, 0.3, training=False)
    ref = torch.nn.functional.layer_norm((x.float() + x.float()), (1024,), w, None, 1e-5).to(torch.bfloat16)
    torch.testing.assert_close(y_eval, ref, rtol=1.6e-2, atol=1.6e-2)


def test_fused_norm_keeps_no_mask_for_backward(tdev):
    """Saved for backward: h (the new residual, which LayerNorm needs anyway), weight, mean, rstd: no mask."""
    x = torch.randn(64, 1024, device=tdev, requires_grad=True)
    r = torch.randn(64, 1024, device=tdev)
    w = torch.ones(1024, device=tdev, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        F.dropout_add_layer_norm(x, r, w, None, 0.5, seed=0)
        F.dropout(x, 0.5, seed=0)
    assert all(t.dtype != torch.bool for t in saved)
    assert sum(t.numel() for t in saved if t.dim() == 2) == 64 * 1024  # h only


def test_fused_norm_module_matches_functional(tdev):
    m = dnn.DropoutAddLayerNorm(1024, prenorm=True, p=0.1, seed=4).to(tdev)
    x, r = torch.randn(2, 1024, device=tdev), torch.randn(2, 1024, device=tdev)
    y, h = m(x, r)
    seed = rng.draw_seed(torch.Generator().manual_seed(4))
    y2, h2 = F.dropout_add_layer_norm(x, r, m.weight, m.bias, 0.1, m.eps, prenorm=True, seed=seed)
    assert torch.equal(y, y2) and torch.equal(h, h2)
    m.eval()
    torch.testing.assert_close(m(x, r)[0], torch.nn.functional.layer_norm(x + r, (1024,), m.weight, m.bias, m.eps))


def test_device_generator_draws_fresh_masks_and_backward_reuses_them(tdev):
    g = rng.DeviceGenerator(seed=123, device=tdev)
    x = torch.randn(3000, device=tdev, requires_grad=True)
    y1, y2 = F.dropout(x, 0.5, generator=g), F.dropout(x, 0.5, generator=g)
    assert not torch.equal(y1, y2)
    for y, offset in ((y1, 0), (y2, 3072)):  # 3000 elements rounded up to whole groups of 1024
        keep = _keep(3000, 123, offset, 0.5).to(tdev)
        assert torch.equal(y != 0, keep & (x != 0))
        (grad,) = torch.autograd.grad(y.sum(), x)
        assert torch.equal(grad, keep.to(grad.dtype) * 2.0)
    assert g.get_state().tolist() == [123, 6144]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replay_draws_fresh_masks():
    g = rng.DeviceGenerator(seed=5, device="cuda")
    x = torch.ones(1 << 16, device="cuda")
    r = torch.zeros(2, 1024, device="cuda")
    w = torch.ones(1024, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # warm up (compile) outside the capture
        F.dropout(x, 0.5, generator=g)
        F.dropout_add_layer_norm(r + 1, r, w, None, 0.5, generator=g)
    torch.cuda.synchronize()
    g.manual_seed(5)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = F.dropout(x, 0.5, generator=g)
        z = F.dropout_add_layer_norm(x[:2048].view(2, 1024), r, w, None, 0.5, generator=g)
    seen, zs = [], []
    for _ in range(3):
        graph.replay()
        seen.append(y.clone())
        zs.append(z.clone())
    torch.cuda.synchronize()
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
    assert not torch.equal(zs[0], zs[1])
    for i, masked in enumerate(seen):  # replay i used the i-th pair of draws (capture itself ran nothing)
        offset = i * ((1 << 16) + 2048)
        assert torch.equal(masked.cpu() != 0, _keep(1 << 16, 5, offset, 0.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="opcheck runs the registered CUDA kernels")
def test_ops_pass_opcheck():
    x = torch.randn(3, 1024, device="cuda")
    torch.library.opcheck(
        torch.ops.dropkit.masked_affine.default, (x, None, None, None, 7, 0, rng.keep_threshold(0.5), 2.0, 0.0, 0.0, 1)
    )
    w = torch.randn(1024, device="cuda")
    args = (x, x.clone(), w, w.clone(), None, None, 7, 0, rng.keep_threshold(0.5), 2.0, 1e-5, False, True,
            torch.float32, torch.float32)
    torch.library.opcheck(torch.ops.dropkit.dropout_add_norm_fwd.default, args)


def test_traced_seeds_reach_the_kernels_in_a_state_tensor():
    # while torch traces, every seed goes to the Triton kernels in the (seed, offset) state tensor: Inductor cannot
    # generate code for the int encoding's constants above 2^31 (the CUDA tests below compile it for real)
    from dropkit.kernels import ops

    big = 2**64 - 5  # a seed >= 2^63: the state tensor holds its int64 bits
    spec = ops.traced_state(kernels.MaskSpec(big, 7, 123, 2.0), torch.device("cpu"))
    assert spec.seed == 0 and spec.offset == 7 and spec.state.tolist() == [big - 2**64, 0]
    drawn = ops.traced_state(kernels.MaskSpec(torch.tensor(42), 0, 123, 2.0), torch.device("cpu"))
    assert drawn.seed == 0 and drawn.state.tolist() == [42, 0]
    device_state = torch.tensor([9, 2048])  # a DeviceGenerator's draw is left as it is
    kept = ops.traced_state(kernels.MaskSpec(0, 5, 123, 2.0, state=device_state), torch.device("cpu"))
    assert kept.seed == 0 and kept.state.tolist() == [9, 2048]
    assert tk._seed_args(big, spec.state) == (3, 3)  # placeholders: no constant above 2^31 in a graph
    lo, hi = tk._seed_args(big, None)
    assert lo > 2**31 and hi > 2**31 and lo % 16 == 3 and hi % 16 == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile of Triton ops needs a GPU")
def test_compiled_ops_match_eager():
    x = torch.randn(4, 1024, device="cuda")
    w = torch.randn(1024, device="cuda")

    def block(x):
        y = F.dropout(x, 0.3, seed=5)
        return F.dropout_add_layer_norm(y, x, w, None, 0.2, seed=9)

    torch.testing.assert_close(torch.compile(block)(x), block(x), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile of Triton ops needs a GPU")
def test_compiled_ops_draw_eagers_seeds_forward_and_backward():
    # seeds drawn at run time travel to the kernels in a device state tensor, in forward and in backward
    x = torch.randn(4, 1024, device="cuda", requires_grad=True)
    w = torch.randn(1024, device="cuda", requires_grad=True)

    def block(x, w):
        y = F.dropout(x, 0.3)
        y, h = F.dropout_add_layer_norm(y, x, w, None, 0.2, prenorm=True)
        return y * h

    results = []
    for fn in (torch.compile(block), block, torch.compile(block)):
        torch.manual_seed(3)
        out = fn(x, w)
        results.append((out, *torch.autograd.grad(out.square().sum(), (x, w))))
    for compiled in (results[0], results[2]):
        for got, want in zip(compiled, results[1], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.manual_seed(4)
    assert not torch.equal(block(x, w), results[1][0])  # the masks follow the seeds: another seed, other masks


def test_triton_is_never_imported_on_cpu():
    code = (
        "import os, sys, torch; os.environ.pop('TRITON_INTERPRET', None)\n"
        "import dropkit, dropkit.functional as F\n"
        "x = torch.randn(4, 64)\n"
        "F.dropout(x, 0.5, seed=0); F.dropout2d(x.view(2, 2, 8, 8), 0.5, seed=0)\n"
        "F.dropout_add_layer_norm(x, x, torch.ones(64), None, 0.2, seed=0)\n"
        "F.bias_dropout_add(x, torch.ones(64), x, 0.2, seed=0)\n"
        "print('triton' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "False"
