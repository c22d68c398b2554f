"""Backward: gradcheck, mask regeneration instead of storage, checkpoint recompute, p = 1 gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import dropkit.nn as dnn
from dropkit import functional as F
from dropkit import rng

GRAD_OPS = [
    pytest.param(lambda x, **k: F.dropout(x, 0.4, **k), (7, 5), id="dropout"),
    pytest.param(lambda x, **k: F.dropout(x, 0.4, mode="classic", **k), (7, 5), id="dropout-classic"),
    pytest.param(lambda x, **k: F.dropout1d(x, 0.4, **k), (3, 4, 5), id="dropout1d"),
    pytest.param(lambda x, **k: F.dropout2d(x, 0.4, **k), (3, 4, 2, 3), id="dropout2d"),
    pytest.param(lambda x, **k: F.dropout3d(x, 0.4, **k), (2, 4, 2, 2, 3), id="dropout3d"),
    pytest.param(lambda x, **k: F.alpha_dropout(x, 0.4, True, **k), (7, 5), id="alpha_dropout"),
    pytest.param(lambda x, **k: F.feature_alpha_dropout(x, 0.4, True, **k), (3, 4, 5), id="feature_alpha_dropout"),
    pytest.param(lambda x, **k: F.gaussian_dropout(x, 0.4, **k), (7, 5), id="gaussian_dropout"),
    pytest.param(lambda x, **k: F.gaussian_noise(x, 0.4, **k), (7, 5), id="gaussian_noise"),
]


@pytest.mark.parametrize(("fn", "shape"), GRAD_OPS)
def test_gradcheck_float64(fn, shape, backend):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fn(t, seed=123), (x,))
    assert torch.autograd.gradgradcheck(lambda t: fn(t, seed=123), (x,))


@pytest.mark.parametrize(("fn", "shape"), GRAD_OPS)
def test_nothing_of_input_size_is_kept_for_backward(fn, shape):
    """Record every tensor autograd saves: a dropkit op keeps none (torch's dropout keeps a numel-sized mask)."""
    saved: list[int] = []

    def pack(t: torch.Tensor):
        saved.append(t.numel())
        return t

    x = torch.randn((shape[0] * 16,) + shape[1:], requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x * 1.0, seed=3)  # a non-leaf input, as inside a network
    assert saved == [], saved
    y.sum().backward()
    assert x.grad is not None

    torch_saved: list[int] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: torch_saved.append(t.numel()) or t, lambda t: t):
        torch.nn.functional.dropout(x * 1.0, 0.4)
    assert max(torch_saved) >= x.numel()  # the contrast: torch keeps a mask of the input's size


def test_backward_uses_the_forward_mask(backend):
    x = torch.randn(1001, requires_grad=True)
    y = F.dropout(x, 0.3, seed=9)
    y.backward(torch.ones_like(y))
    expected = (y.detach() != 0).float() / 0.7
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=0)


def test_backward_bfloat16_and_channels(backend):
    x = torch.randn(4, 6, 3, 3, dtype=torch.bfloat16, requires_grad=True)
    y = F.dropout2d(x, 0.5, seed=1)
    y.float().sum().backward()
    kept = (F.dropout2d(torch.ones(4, 6, 3, 3), 0.5, seed=1) != 0).to(torch.bfloat16)
    assert torch.equal(x.grad, kept * 2)


@pytest.mark.parametrize("fn", [F.dropout, F.alpha_dropout, F.feature_alpha_dropout])
def test_p1_gives_zero_gradients(fn):
    x = torch.randn(4, 5, 6, requires_grad=True)
    y = fn(x, 1.0, True)
    assert torch.equal(y, torch.zeros_like(y))
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_inplace_under_autograd_follows_torch():
    x = torch.randn(100, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        F.dropout(x, 0.5, inplace=True)
    h = x * 2
    y = F.dropout(h, 0.5, inplace=True, seed=4)
    assert y is h
    y.sum().backward()
    expected = (F.dropout(torch.ones(100), 0.5, seed=4) != 0).float() * 4
    torch.testing.assert_close(x.grad, expected)


def _net(dropout_cls) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32),
        torch.nn.ReLU(),
        dropout_cls(0.5),
        torch.nn.Linear(32, 32),
        torch.nn.ReLU(),
        dropout_cls(0.3),
        torch.nn.Linear(32, 4),
    )


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_checkpoint_recompute_gives_identical_gradients(use_reentrant):
    net = _net(dnn.Dropout)
    x = torch.randn(8, 16, requires_grad=True)

    torch.manual_seed(42)
    net(x).pow(2).sum().backward()
    plain = [p.grad.clone() for p in net.parameters()] + [x.grad.clone()]

    net.zero_grad()
    x.grad = None
    torch.manual_seed(42)
    checkpoint(net, x, use_reentrant=use_reentrant).pow(2).sum().backward()
    recomputed = [p.grad.clone() for p in net.parameters()] + [x.grad.clone()]
    for a, b in zip(plain, recomputed, strict=False):
        assert torch.equal(a, b)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_checkpoint_of_functional_dropout_matches(use_reentrant):
    w = torch.randn(32, 32, dtype=torch.float64, requires_grad=True)
    x = torch.randn(16, 32, dtype=torch.float64, requires_grad=True)

    def block(inp):
        return F.dropout(torch.tanh(inp @ w), 0.5) @ w

    torch.manual_seed(1)
    block(x).sum().backward()
    g_plain = w.grad.clone()
    w.grad = None
    torch.manual_seed(1)
    checkpoint(block, x, use_reentrant=use_reentrant).sum().backward()
    assert torch.equal(w.grad, g_plain)


def test_channel_dropout_gradient_zeroes_whole_channels():
    x = torch.randn(3, 8, 4, 4, requires_grad=True)
    F.dropout2d(x, 0.5, seed=7).sum().backward()
    per_channel = x.grad.flatten(2)
    assert bool(((per_channel == 0).all(-1) | (per_channel == 2).all(-1)).all())
    assert math.isclose(float(per_channel.max()), 2.0)


# ---- forward-mode AD and torch.func transforms ------------------------------------------------------------


@pytest.mark.parametrize(("fn", "shape"), GRAD_OPS)
def test_gradcheck_as_torch_opinfos_run_it(fn, shape):
    """The checks torch's dropout OpInfos enable: forward-mode AD (``supports_forward_ad``), forward-over-reverse
    (``supports_fwgrad_bwgrad``) and batched gradients (``check_batched_grad``: vmap over the backward)."""
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    op = lambda t: fn(t, seed=5)  # noqa: E731
    assert torch.autograd.gradcheck(op, (x,), check_forward_ad=True, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(op, (x,), check_fwd_over_rev=True, check_batched_grad=True)


@pytest.mark.parametrize(("fn", "shape"), GRAD_OPS)
def test_torch_func_grad_jacrev_jacfwd_match_autograd(fn, shape):
    x = torch.randn(shape, dtype=torch.float64)
    leaf = x.clone().requires_grad_()
    fn(leaf, seed=9).sum().backward()
    torch.testing.assert_close(torch.func.grad(lambda t: fn(t, seed=9).sum())(x), leaf.grad, rtol=0, atol=0)
    jac_rev = torch.func.jacrev(lambda t: fn(t, seed=9))(x)
    jac_fwd = torch.func.jacfwd(lambda t: fn(t, seed=9), randomness="same")(x)
    torch.testing.assert_close(jac_rev, jac_fwd, rtol=0, atol=0)
    n = x.numel()
    torch.testing.assert_close(jac_rev.reshape(n, n).sum(0), leaf.grad.flatten(), rtol=0, atol=0)


def test_forward_mode_of_an_inplace_call_edits_the_tangent():
    import torch.autograd.forward_ad as fwAD

    x = torch.randn(6, 5)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x.clone(), torch.ones(6, 5))
        y = F.dropout(dual, 0.5, seed=1, inplace=True)
        assert y is dual
        tangent = fwAD.unpack_dual(y).tangent
    torch.testing.assert_close(tangent, F.dropout(torch.ones(6, 5), 0.5, seed=1), rtol=0, atol=0)


VMAP_OPS = [
    pytest.param(lambda t: F.dropout(t, 0.5, seed=3), id="dropout"),
    pytest.param(lambda t: F.dropout1d(t, 0.5, seed=3), id="dropout1d"),
    pytest.param(lambda t: F.alpha_dropout(t, 0.5, True, seed=3), id="alpha_dropout"),
    pytest.param(lambda t: F.gaussian_dropout(t, 0.5, seed=3), id="gaussian_dropout"),
    pytest.param(lambda t: F.gaussian_noise(t, 0.5, seed=3), id="gaussian_noise"),
]


@pytest.mark.parametrize("fn", VMAP_OPS)
def test_vmap_randomness_different_is_the_call_on_the_whole_batch(fn):
    """``randomness="different"``: each slice its own draw, namely the unbatched call's rows (one mechanism)."""
    x = torch.randn(6, 4, 5)
    got = torch.vmap(fn, randomness="different")(x)
    torch.testing.assert_close(got, fn(x), rtol=0, atol=0)
    assert not torch.equal(got[0] - x[0], got[1] - x[1])
    moved = torch.vmap(fn, in_dims=2, out_dims=2, randomness="different")(x)  # a non-leading vmapped dim
    torch.testing.assert_close(moved, fn(x.movedim(2, 0)).movedim(0, 2), rtol=0, atol=0)


@pytest.mark.parametrize("fn", VMAP_OPS)
def test_vmap_randomness_same_gives_every_slice_one_draw(fn):
    x = torch.ones(6, 4, 5)
    got = torch.vmap(fn, randomness="same")(x)
    for row in got[1:]:
        torch.testing.assert_close(row, got[0], rtol=0, atol=0)
    torch.testing.assert_close(got[0], fn(x[0]), rtol=0, atol=0)


def test_vmap_of_an_unseeded_call_follows_torch_randomness_error_mode():
    with pytest.raises(RuntimeError, match="randomness"):
        torch.vmap(lambda t: F.dropout(t, 0.5))(torch.ones(3, 4))


def test_per_sample_gradients_with_vmap_of_grad():
    """The Opacus-style recipe: per-sample gradients of a loss with seeded dropout inside."""
    w = torch.randn(8, 3, dtype=torch.float64)
    xs = torch.randn(5, 8, dtype=torch.float64)

    def loss(w, x):
        return (F.dropout(x, 0.5, seed=1) @ w).square().sum()

    per_sample = torch.vmap(torch.func.grad(loss), in_dims=(None, 0), randomness="same")(w, xs)
    for i in range(5):
        wi = w.clone().requires_grad_()
        loss(wi, xs[i]).backward()
        torch.testing.assert_close(per_sample[i], wi.grad)


# ---- inference: no autograd Function when nothing can differentiate -----------------------------------------


def test_inference_calls_skip_the_autograd_function_with_the_same_values(monkeypatch):
    x = torch.randn(4, 6, 3, 3)
    with torch.no_grad():
        direct = F.dropout2d(x, 0.3, seed=4)
    graph = F.dropout2d(x.clone().requires_grad_(), 0.3, seed=4)
    assert direct.grad_fn is None and graph.grad_fn is not None
    torch.testing.assert_close(direct, graph.detach(), rtol=0, atol=0)

    def refuse(*args):
        raise AssertionError("the autograd Function ran for a call nothing differentiates")

    monkeypatch.setattr(F._MaskedAffineFn, "apply", refuse)
    with torch.no_grad():
        torch.testing.assert_close(F.dropout2d(x, 0.3, seed=4), direct, rtol=0, atol=0)
    torch.testing.assert_close(F.dropout2d(x, 0.3, seed=4), direct, rtol=0, atol=0)  # x needs no grad


def test_eager_calls_under_autograd_skip_torchs_signature_binding(monkeypatch):
    """torch's Python ``Function.apply`` runs ``inspect.signature`` per call; dropkit's eager calls skip it.

    Same values and gradients as through ``Function.apply``, and a tensor left by a finished torch.func transform
    (a dead wrapper, which that layer unwraps) still differentiates to its leaf.
    """
    x = torch.randn(4, 6, requires_grad=True)
    spec = F._spec(x, 5, None, 0.3, 1 / 0.7)
    expected = F._MaskedAffineFn.apply(x, spec, False)
    (grad,) = torch.autograd.grad(expected.sum(), x)
    noisy = F._GaussianFn.apply(x, 5, 0.5, True, False, -1)  # sigma^2 = p / (1 - p) at p = 0.2

    signature = torch.autograd.function.inspect.signature
    ours = {F._MaskedAffineFn.forward, F._GaussianFn.forward}

    def refuse(fn, *args, **kwargs):
        assert fn not in ours, "inspect.signature ran for an eager dropkit call"
        return signature(fn, *args, **kwargs)

    monkeypatch.setattr(torch.autograd.function.inspect, "signature", refuse)
    y = F.dropout(x, 0.3, seed=5)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    torch.testing.assert_close(torch.autograd.grad(y.sum(), x)[0], grad, rtol=0, atol=0)
    torch.testing.assert_close(F.gaussian_dropout(x, 0.2, seed=5), noisy)

    escaped: list[torch.Tensor] = []
    torch.func.grad(lambda t: escaped.append(t) or t.sum())(x)
    assert torch._C._functorch.is_functorch_wrapped_tensor(escaped[0])
    (through,) = torch.autograd.grad(F.dropout(escaped[0], 0.3, seed=5).sum(), x)
    torch.testing.assert_close(through, grad, rtol=0, atol=0)


def test_inplace_without_grad_still_bumps_the_version_counter():
    x = torch.randn(8, 8)
    before = x._version
    with torch.no_grad():
        assert F.dropout(x, 0.5, seed=1, inplace=True) is x
    assert x._version > before


LINEAR_OPS = ("dropout", "dropout1d", "gaussian_dropout")  #: y = m ⊙ x: Jacobian-vector products give y / x


@pytest.mark.parametrize("fn", VMAP_OPS)
def test_vmap_of_forward_mode_gives_each_slice_its_own_mask(fn, request):
    """Tangents under ``vmap(randomness="different")`` follow each slice's mask, as the primal does."""
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    primal, tangent = torch.vmap(lambda a, b: torch.func.jvp(fn, (a,), (b,)), randomness="different")(
        x, torch.ones_like(x)
    )
    torch.testing.assert_close(primal, fn(x), rtol=0, atol=0)
    jac_fwd = torch.vmap(torch.func.jacfwd(fn), randomness="different")(x)
    jac_rev = torch.vmap(torch.func.jacrev(fn), randomness="different")(x)
    torch.testing.assert_close(jac_fwd, jac_rev)
    if request.node.callspec.id in LINEAR_OPS:
        torch.testing.assert_close(torch.einsum("bijkl,bkl->bij", jac_rev, x), primal)
        torch.testing.assert_close(tangent * x, primal)


@pytest.mark.parametrize("fn", VMAP_OPS)
def test_per_sample_gradients_under_vmap_different(fn):
    x = torch.randn(5, 3, 6, dtype=torch.float64)
    grads = torch.vmap(torch.func.grad(lambda a: fn(a).sum()), randomness="different")(x)
    for i in range(5):  # slice i's gradient is the gradient of row i of the whole-batch call
        leaf = x.clone().requires_grad_()
        fn(leaf)[i].sum().backward()
        torch.testing.assert_close(grads[i], leaf.grad[i])


@pytest.mark.parametrize("fn", VMAP_OPS)
@pytest.mark.parametrize(("outer", "inner"), [("same", "different"), ("different", "same"), ("different", "different")])
def test_nested_vmap_applies_each_levels_randomness(fn, outer, inner):
    x = torch.ones(3, 4, 2, 16)
    y = torch.vmap(torch.vmap(fn, randomness=inner), randomness=outer)(x)
    assert (not torch.equal(y[0], y[1])) == (outer == "different")
    assert (not torch.equal(y[:, 0], y[:, 1])) == (inner == "different")


@pytest.mark.parametrize("fn", [
    pytest.param(lambda t: F.dropout(t, 0.5), id="dropout"),
    pytest.param(lambda t: F.alpha_dropout(t, 0.5, True), id="alpha_dropout"),
    pytest.param(lambda t: F.gaussian_dropout(t, 0.5), id="gaussian_dropout"),
    pytest.param(lambda t: F.gaussian_noise(t, 0.5), id="gaussian_noise"),
])
def test_unseeded_vmap_matches_eager_under_the_same_manual_seed(fn):
    """functorch's randomness contract (its test_vmap checks torch's random ops so): under one manual_seed,
    "different" equals the eager call on the whole batch and "same" the eager call on one slice."""
    x = torch.randn(4, 32)
    torch.manual_seed(7)
    different = torch.vmap(fn, randomness="different")(x)
    torch.manual_seed(7)
    torch.testing.assert_close(different, fn(x), rtol=0, atol=0)
    torch.manual_seed(7)
    same = torch.vmap(fn, randomness="same")(torch.ones(4, 32))
    torch.manual_seed(7)
    torch.testing.assert_close(same, fn(torch.ones(32)).expand(4, 32), rtol=0, atol=0)


def test_unseeded_calls_under_vmap_draw_per_call_and_per_slice():
    """torch's dropout works unseeded under vmap "same" and "different" (model ensembling, per-sample grads)."""
    x = torch.ones(3, 64)
    torch.manual_seed(0)
    different = torch.vmap(lambda a: F.dropout(a, 0.5), randomness="different")(x)
    assert not torch.equal(different[0], different[1])
    same = torch.vmap(lambda a: F.dropout(a, 0.5), randomness="same")(x)
    assert torch.equal(same[0], same[1]) and torch.equal(same[0], same[2])
    grads = torch.vmap(torch.func.grad(lambda a: F.dropout(a, 0.5).sum()), randomness="different")(x)
    assert not torch.equal(grads[0], grads[1])
    torch.manual_seed(3)  # under torch.func.grad alone the draws are eager's: the same masks
    via_func = torch.func.grad(lambda a: F.dropout(a, 0.5).sum())(x[0])
    torch.manual_seed(3)
    leaf = x[0].clone().requires_grad_()
    F.dropout(leaf, 0.5).sum().backward()
    assert torch.equal(via_func, leaf.grad)


@pytest.mark.parametrize("fn", [
    pytest.param(lambda a: F.dropout(a * 1, 0.5, seed=1, inplace=True), id="dropout"),
    pytest.param(lambda a: F.gaussian_dropout(a * 1, 0.5, seed=1, inplace=True), id="gaussian_dropout"),
    pytest.param(lambda a: F.gaussian_noise(a * 1, 0.5, seed=1, inplace=True), id="gaussian_noise"),
])
@pytest.mark.parametrize("randomness", ["same", "different"])
def test_inplace_calls_under_vmap_of_grad(fn, randomness):
    """Slice i's gradient is that of the unbatched call ("same") or of row i of the whole-batch call ("different")."""
    x = torch.randn(3, 4, dtype=torch.float64)
    grads = torch.vmap(torch.func.grad(lambda a: fn(a).square().sum()), randomness=randomness)(x)
    for i in range(3):
        if randomness == "same":
            leaf = x[i].clone().requires_grad_()
            expected = torch.autograd.grad(fn(leaf).square().sum(), leaf)[0]
        else:
            leaf = x.clone().requires_grad_()
            expected = torch.autograd.grad(fn(leaf)[i].square().sum(), leaf)[0][i]
        torch.testing.assert_close(grads[i], expected)


def test_device_generator_under_vmap_different_is_refused():
    g = rng.DeviceGenerator(7, device="cpu")
    with pytest.raises(NotImplementedError, match="DeviceGenerator"):
        torch.vmap(lambda a: F.dropout(a, 0.5, generator=g), randomness="different")(torch.ones(4, 8))
    same = torch.vmap(lambda a: F.dropout(a, 0.5, generator=g), randomness="same")(torch.ones(4, 8))
    assert torch.equal(same[0], same[3])


@pytest.mark.parametrize("op", [
    pytest.param(lambda t: F.dropout(t, 0.5, seed=1, inplace=True), id="dropout"),
    pytest.param(lambda t: F.gaussian_noise(t, 0.5, seed=1, inplace=True), id="gaussian_noise"),
    pytest.param(lambda t: F.drop_block2d(t, 0.5, 3, inplace=True, seed=1), id="drop_block2d"),
])
def test_inplace_without_grad_returns_the_input_and_refuses_inference_tensors_outside(op):
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    with torch.no_grad():
        assert op(x) is x  # as torch: the input itself, also when it requires grad
    with torch.inference_mode():
        frozen = torch.randn(2, 3, 6, 6)
    with pytest.raises(RuntimeError, match="(?i)inference tensor outside InferenceMode"):
        op(frozen)


def test_bias_dropout_add_under_torch_func_matches_the_fused_op():
    x, residual = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    bias = torch.randn(6, dtype=torch.float64)

    def op(t):
        return F.bias_dropout_add(t, bias, residual, 0.4, seed=2)

    leaf = x.clone().requires_grad_()
    (op(leaf) ** 2).sum().backward()
    torch.testing.assert_close(torch.func.grad(lambda t: (op(t) ** 2).sum())(x), leaf.grad, rtol=0, atol=0)
    torch.testing.assert_close(torch.func.jacfwd(op)(x), torch.func.jacrev(op)(x), rtol=0, atol=0)
    rows = torch.vmap(lambda t, r: F.bias_dropout_add(t, bias, r, 0.4, seed=2), randomness="different")(x, residual)
    torch.testing.assert_close(rows, op(x), rtol=0, atol=0)


def test_drop_block_under_torch_func_matches_autograd_and_refuses_vmap_different():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)

    def op(t):
        return F.drop_block2d(t, 0.3, 3, seed=5)

    leaf = x.clone().requires_grad_()
    (op(leaf) ** 2).sum().backward()
    torch.testing.assert_close(torch.func.grad(lambda t: (op(t) ** 2).sum())(x), leaf.grad)
    _, tangent = torch.func.jvp(op, (x,), (torch.ones_like(x),))
    torch.testing.assert_close(tangent, op(torch.ones_like(x)))
    same = torch.vmap(op, randomness="same")(x.unsqueeze(0).expand(3, *x.shape))
    torch.testing.assert_close(same[2], op(x))
    with pytest.raises(NotImplementedError, match="randomness='different'"):
        torch.vmap(lambda t: F.drop_block2d(t, 0.3, 3), randomness="different")(x.unsqueeze(0).expand(3, *x.shape))


def test_vmap_different_gives_unbatched_tensors_a_draw_per_slice_as_torch_does():
    """A tensor the vmapped function builds itself (or a weight) is not batched: torch's random ops still draw
    each slice its own values under ``randomness="different"``, and so must dropkit's (the MC-dropout idiom
    ``vmap(lambda _: model(x), randomness="different")(torch.arange(T))``)."""
    ones = torch.ones(64)
    for op in (F.dropout, F.gaussian_dropout, F.alpha_dropout):
        different = torch.vmap(lambda _, op=op: op(ones, 0.5, True), randomness="different")(torch.arange(4))
        assert different.shape == (4, 64) and all(not torch.equal(different[0], row) for row in different[1:])
        same = torch.vmap(lambda _, op=op: op(ones, 0.5, True), randomness="same")(torch.arange(4))
        assert all(torch.equal(same[0], row) for row in same[1:])
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), dnn.Dropout(0.5), torch.nn.Linear(16, 3)).train()
    x = torch.randn(5, 8)
    samples = torch.vmap(lambda _: model(x), randomness="different")(torch.arange(6))
    assert samples.shape == (6, 5, 3) and len({tuple(s.flatten().tolist()) for s in samples}) == 6
    layer = dnn.DropConnectLinear(8, 4, p=0.5)  # the weight is never batched: each slice its own weight mask
    rows = torch.vmap(layer, randomness="different")(torch.ones(6, 8))
    assert len({tuple(r.tolist()) for r in rows}) > 1
    with pytest.raises(RuntimeError, match="in-place random op"):  # torch's in-place dropout raises here too
        torch.vmap(lambda _: F.dropout(torch.ones(3), 0.5, inplace=True), randomness="different")(torch.arange(2))


def test_linearize_traces_the_op_through_torch_ops():
    """``torch.func.linearize`` traces with make_fx, a dispatch mode the numba kernels' writes would bypass."""
    x = torch.randn(16)
    out, jvp_fn = torch.func.linearize(lambda t: F.dropout(t, 0.5, seed=3), x)
    assert torch.equal(out, F.dropout(x, 0.5, seed=3))
    assert torch.equal(jvp_fn(torch.ones(16)), F.dropout(torch.ones(16), 0.5, seed=3))  # the same mask, linear
    out, jvp_fn = torch.func.linearize(lambda t: F.dropout(t, 0.5), x)  # unseeded: its seed drawn as a constant
    assert out.shape == x.shape and jvp_fn(x).shape == x.shape


@pytest.mark.parametrize("op", [F.dropout, F.gaussian_dropout], ids=["dropout", "gaussian"])
def test_gradients_under_vmap_different_reuse_the_forwards_masks(op):
    """The backward, jvp and vmap rule re-dispatch the op: they must apply the forward's masks, never re-decide."""
    w = torch.full((30,), 2.0)

    def value_and_grad(_):
        y, pullback = torch.func.vjp(lambda t: op(t, 0.5, True), w)
        return y, pullback(torch.ones_like(y))[0]

    y, grad = torch.vmap(value_and_grad, randomness="different")(torch.arange(4))
    assert torch.allclose(grad * w, y)  # d(m * w)/dw = m: the forward's mask
    jac, y = torch.vmap(torch.func.jacrev(lambda t: (op(t, 0.5, True),) * 2, has_aux=True), randomness="different")(
        torch.full((4, 30), 2.0)
    )
    assert torch.allclose(torch.diagonal(jac, dim1=-2, dim2=-1) * 2.0, y)


@pytest.mark.parametrize("op", [F.dropout, F.gaussian_dropout], ids=["dropout", "gaussian"])
def test_nested_vmap_different_gives_every_outer_slice_its_own_draw(op):
    """The inner vmap's rule re-dispatches the op's own call: the outer "different" level lifts it too."""
    rows = torch.ones(3, 64)
    inner = lambda _: torch.vmap(lambda r: op(r, 0.5, True), randomness="different")(rows)  # noqa: E731
    y = torch.vmap(inner, randomness="different")(torch.arange(4))
    assert y.shape == (4, 3, 64) and len({tuple(r.tolist()) for r in y.reshape(-1, 64)}) == 12
