"""DropConnect: functional ops, the dedicated layers, the generic wrapper, MC dropout and errors."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

import dropkit.nn as dnn
from dropkit import functional as F
from dropkit import mc

tF = torch.nn.functional


def _linear(p=0.5, **kwargs):
    torch.manual_seed(0)
    return dnn.DropConnectLinear(6, 4, p=p, **kwargs)


# --- functional drop_connect ---------------------------------------------------------------------------------------


def test_drop_connect_eval_and_p0_return_the_weight():
    w = torch.randn(4, 5)
    assert F.drop_connect(w, 0.5, training=False) is w
    assert F.drop_connect(w, 0.0) is w
    assert F.drop_connect(w, 0.5, training=False, samples=3).shape == (3, 4, 5)


def test_drop_connect_values_are_zero_or_scaled():
    w = torch.randn(30, 40).abs() + 0.1
    y = F.drop_connect(w, 0.3, seed=5)
    kept = y != 0
    torch.testing.assert_close(y[kept], w[kept] / 0.7)
    assert 0 < kept.sum() < w.numel()


def test_drop_connect_p1_gives_zeros_and_zero_gradients():
    w = torch.randn(3, 4, requires_grad=True)
    y = F.drop_connect(w, 1.0, seed=0)
    assert torch.equal(y, torch.zeros(3, 4))
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros(3, 4))


def test_drop_connect_same_seed_same_mask_fresh_otherwise():
    w = torch.ones(16, 16)
    assert torch.equal(F.drop_connect(w, seed=3), F.drop_connect(w, seed=3))
    assert not torch.equal(F.drop_connect(w), F.drop_connect(w))
    torch.manual_seed(1)
    a = F.drop_connect(w)
    torch.manual_seed(1)
    assert torch.equal(a, F.drop_connect(w))
    g = torch.Generator().manual_seed(2)
    b = F.drop_connect(w, generator=g)
    assert torch.equal(b, F.drop_connect(w, generator=torch.Generator().manual_seed(2)))


def test_drop_connect_samples_are_independent_masks():
    s = F.drop_connect(torch.ones(8, 8), 0.5, samples=4, seed=0)
    assert s.shape == (4, 8, 8)
    assert all(not torch.equal(s[i], s[j]) for i in range(4) for j in range(i + 1, 4))


@pytest.mark.statistical
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_drop_connect_zero_fraction_matches_p(p):
    # binomial test over 40,000 weights, fixed seed; p-value > 0.01
    y = F.drop_connect(torch.ones(200, 200), p, seed=11)
    zeros = int((y == 0).sum())
    assert stats.binomtest(zeros, y.numel(), p).pvalue > 0.01


def test_drop_connect_gradcheck():
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: F.drop_connect(t, 0.4, seed=9), (w,))
    assert torch.autograd.gradgradcheck(lambda t: F.drop_connect(t, 0.4, seed=9) ** 2, (w,))


# --- DropConnectLinear ------------------------------------------------------------------------------------------


def test_linear_is_a_torch_linear_and_loads_its_state_dict():
    plain = torch.nn.Linear(6, 4)
    layer = dnn.DropConnectLinear(6, 4)
    assert isinstance(layer, torch.nn.Linear)
    assert layer.load_state_dict(plain.state_dict()).missing_keys == []
    assert list(layer.state_dict()) == ["weight", "bias"]
    x = torch.randn(3, 6)
    assert torch.equal(layer.eval()(x), plain(x))


def test_linear_p0_is_plain_and_p1_leaves_the_bias():
    x = torch.randn(3, 6)
    layer = _linear(0.0)
    assert torch.equal(layer(x), tF.linear(x, layer.weight, layer.bias))
    layer = _linear(1.0)
    assert torch.equal(layer(x), layer.bias.expand(3, 4))
    layer = _linear(1.0, drop_bias=True)
    assert torch.equal(layer(x), torch.zeros(3, 4))


def test_linear_per_batch_mask_is_shared_by_rows_and_matches_drop_connect():
    layer = _linear(0.5)
    eye = torch.eye(6)
    y = F.drop_connect_linear(eye, layer.weight, None, p=0.5, seed=4)  # rows of the identity read W~ column by column
    torch.testing.assert_close(y.T, F.drop_connect(layer.weight, 0.5, seed=4))


def test_linear_per_sample_rows_get_their_own_masks():
    layer = _linear(0.5)
    x = torch.randn(1, 6).expand(5, 6)
    y = F.drop_connect_linear(x, layer.weight, layer.bias, p=0.5, per_sample=True, seed=2)
    w = F.drop_connect(layer.weight, 0.5, samples=5, seed=2)
    for n in range(5):
        torch.testing.assert_close(y[n], tF.linear(x[n], w[n], layer.bias))
    assert not torch.allclose(y[0], y[1])


def test_linear_per_sample_extra_dims_and_unbatched():
    layer = _linear(0.5, per_sample=True, seed=1)
    assert layer(torch.randn(3, 7, 6)).shape == (3, 7, 4)
    assert layer(torch.randn(6)).shape == (4,)
    w = F.drop_connect(layer.weight, 0.5, samples=3, seed=8)
    x = torch.randn(3, 7, 6)
    y = F.drop_connect_linear(x, layer.weight, layer.bias, p=0.5, per_sample=True, seed=8)
    torch.testing.assert_close(y[2], tF.linear(x[2], w[2], layer.bias))


def test_linear_drop_bias_masks_bias_with_its_own_mask():
    w, b = torch.zeros(50, 3), torch.ones(50)
    y = F.drop_connect_linear(torch.ones(1, 3), w, b, p=0.5, drop_bias=True, seed=3)[0]
    assert set(y.unique().tolist()) == {0.0, 2.0}
    ys = F.drop_connect_linear(torch.ones(4, 3), w, b, p=0.5, drop_bias=True, per_sample=True, seed=3)
    assert not torch.equal(ys[0], ys[1])


def test_linear_gradients_are_masked_and_scaled():
    layer = _linear(0.4)
    x = torch.randn(5, 6)
    y = F.drop_connect_linear(x, layer.weight, layer.bias, p=0.4, seed=7)
    y.pow(2).sum().backward()
    w_tilde = F.drop_connect(layer.weight.detach(), 0.4, seed=7).requires_grad_()
    y_ref = tF.linear(x, w_tilde, layer.bias.detach())
    y_ref.pow(2).sum().backward()
    keep = (w_tilde != 0).float()
    torch.testing.assert_close(layer.weight.grad, w_tilde.grad * keep / 0.6)
    assert torch.equal(layer.weight.grad == 0, keep == 0)


def test_linear_per_sample_gradients_sum_the_rows():
    layer = _linear(0.5)
    x = torch.randn(3, 6)
    F.drop_connect_linear(x, layer.weight, None, p=0.5, per_sample=True, seed=1).sum().backward()
    masks = F.drop_connect(torch.ones(4, 6), 0.5, samples=3, seed=1)  # scaled keep masks
    expected = sum(masks[n] * x[n] for n in range(3))
    torch.testing.assert_close(layer.weight.grad, expected)


@pytest.mark.statistical
def test_linear_output_mean_matches_plain_layer():
    # E[W~] = W: the mean of 4000 per-sample outputs is within 5 standard errors of the plain output
    layer = _linear(0.5, per_sample=True, seed=0)
    x = torch.randn(1, 6).expand(4000, 6)
    with torch.no_grad():
        y = layer(x)
        plain = tF.linear(x[:1], layer.weight, layer.bias)[0]
    se = y.std(0) / 4000**0.5
    assert ((y.mean(0) - plain).abs() < 5 * se).all()


def test_linear_fresh_mask_per_forward_and_seeded_reproducibility():
    x = torch.randn(2, 6)
    layer = _linear(0.5, seed=3)
    a, b = layer(x), layer(x)
    assert not torch.equal(a, b)
    again = _linear(0.5, seed=3)
    assert torch.equal(again(x), a)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_linear_dtypes(dtype):
    layer = _linear(0.3, per_sample=True).to(dtype)
    y = layer(torch.randn(3, 6, dtype=dtype))
    assert y.dtype == dtype and y.shape == (3, 4)


def test_linear_empty_batch():
    layer = _linear(0.3)
    assert layer(torch.randn(0, 6)).shape == (0, 4)
    layer.per_sample = True
    assert layer(torch.randn(0, 6)).shape == (0, 4)


def test_linear_repr():
    assert repr(dnn.DropConnectLinear(2, 3, p=0.2, drop_bias=True, per_sample=True, seed=4)) == (
        "DropConnectLinear(in_features=2, out_features=3, bias=True, p=0.2, drop_bias=True, per_sample=True, seed=4)"
    )
    assert dnn.DropConnectLinear(2, 3, keep=0.9).p == pytest.approx(0.1)


# --- DropConnectConv1d / 2d -------------------------------------------------------------------------------------


CONVS = [
    pytest.param(dnn.DropConnectConv1d, torch.nn.Conv1d, tF.conv1d, F.drop_connect_conv1d, (4, 3, 9), id="conv1d"),
    pytest.param(dnn.DropConnectConv2d, torch.nn.Conv2d, tF.conv2d, F.drop_connect_conv2d, (4, 3, 7, 6), id="conv2d"),
]


@pytest.mark.parametrize(("cls", "torch_cls", "conv", "op", "shape"), CONVS)
class TestConv:
    def test_is_torch_conv_loads_its_state_dict_and_eval_matches(self, cls, torch_cls, conv, op, shape):
        plain = torch_cls(3, 5, 3, padding=1, padding_mode="reflect")
        layer = cls(3, 5, 3, padding=1, padding_mode="reflect", p=0.3)
        assert isinstance(layer, torch_cls)
        layer.load_state_dict(plain.state_dict())
        x = torch.randn(shape)
        assert torch.equal(layer.eval()(x), plain(x))

    def test_per_batch_equals_conv_with_one_masked_kernel(self, cls, torch_cls, conv, op, shape):
        layer = cls(3, 5, 3, stride=2, dilation=1, p=0.5)
        x = torch.randn(shape)
        y = op(x, layer.weight, layer.bias, 2, p=0.5, seed=6)
        torch.testing.assert_close(y, conv(x, F.drop_connect(layer.weight, 0.5, seed=6), layer.bias, 2))

    @pytest.mark.parametrize("groups", [1, 3])
    def test_per_sample_equals_one_conv_per_sample(self, cls, torch_cls, conv, op, shape, groups):
        layer = cls(3, 6, 3, padding="same", groups=groups, p=0.5)
        x = torch.randn(shape)
        y = op(x, layer.weight, layer.bias, 1, "same", 1, groups, p=0.5, per_sample=True, drop_bias=True, seed=2)
        w = F.drop_connect(layer.weight, 0.5, samples=shape[0], seed=2)
        b = F._masked_weight(layer.bias, 2, w.numel(), 0.5, shape[0])  # the bias mask follows the kernel's
        for n in range(shape[0]):
            torch.testing.assert_close(y[n], conv(x[n : n + 1], w[n], b[n], 1, "same", 1, groups)[0])

    def test_per_sample_unbatched_padding_mode_and_grads(self, cls, torch_cls, conv, op, shape):
        layer = cls(3, 5, 3, padding=1, padding_mode="circular", per_sample=True, seed=0)
        assert layer(torch.randn(shape[1:])).shape[0] == 5
        y = layer(torch.randn(shape))
        y.sum().backward()
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0

    def test_p1_leaves_the_bias(self, cls, torch_cls, conv, op, shape):
        layer = cls(3, 5, 3, p=1.0)
        y = layer(torch.randn(shape))
        torch.testing.assert_close(y, layer.bias.view(1, 5, *([1] * (len(shape) - 2))).expand_as(y))


# --- generic wrapper ---------------------------------------------------------------------------------------------


def test_wrapper_matches_dedicated_linear_for_the_same_seed():
    torch.manual_seed(0)
    inner = torch.nn.Linear(6, 4)
    layer = dnn.DropConnectLinear(6, 4, p=0.5, drop_bias=True, seed=5)
    layer.load_state_dict(inner.state_dict())
    wrapped = dnn.DropConnect(inner, 0.5, drop_bias=True, seed=5)
    x = torch.randn(3, 6)
    torch.testing.assert_close(wrapped(x), layer(x))
    layer.per_sample = wrapped.per_sample = True
    torch.testing.assert_close(wrapped(x), layer(x))


def test_wrapper_gradients_reach_the_wrapped_parameters_unmodified():
    inner = torch.nn.Conv2d(2, 3, 3)
    before = inner.weight.detach().clone()
    wrapped = dnn.DropConnect(inner, 0.5, seed=1)
    wrapped(torch.randn(2, 2, 5, 5)).sum().backward()
    assert torch.equal(inner.weight.detach(), before)
    assert (inner.weight.grad == 0).any() and (inner.weight.grad != 0).any()
    assert list(wrapped.state_dict()) == ["module.weight", "module.bias"]


def test_wrapper_eval_is_the_module_and_named_weights():
    inner = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    wrapped = dnn.DropConnect(inner, 0.5, weights=("0.weight", "2.weight"))
    x = torch.randn(4, 3)
    assert torch.equal(wrapped.eval()(x), inner(x))
    assert dnn.DropConnect(torch.nn.Linear(2, 2), weights="weight").weights == ("weight",)


def test_wrapper_per_sample_conv_rows_differ():
    wrapped = dnn.DropConnect(torch.nn.Conv2d(2, 3, 3), 0.5, per_sample=True, seed=0)
    x = torch.randn(1, 2, 5, 5).expand(4, 2, 5, 5)
    y = wrapped(x)
    assert y.shape == (4, 3, 3, 3) and not torch.allclose(y[0], y[1])


def test_wrapper_errors():
    with pytest.raises(ValueError, match=r"DropConnect: module must have a parameter named 'weight', but got ReLU"):
        dnn.DropConnect(torch.nn.ReLU())
    with pytest.raises(ValueError, match=r"parameter named 'kernel', but got Linear with parameters \['bias', "):
        dnn.DropConnect(torch.nn.Linear(2, 2), weights=("kernel",))
    with pytest.raises(TypeError, match=r"DropConnect: weights must be a non-empty sequence of parameter names"):
        dnn.DropConnect(torch.nn.Linear(2, 2), weights=())
    with pytest.raises(TypeError, match=r"DropConnect: module must be a torch.nn.Module, but got 'Tensor'"):
        dnn.DropConnect(torch.ones(2))
    with pytest.raises(ValueError, match=r"DropConnect: p must be in \[0, 1\], but got 2"):
        dnn.DropConnect(torch.nn.Linear(2, 2), 2)
    with pytest.raises(TypeError, match=r"DropConnect: the first positional input \(per_sample\) must be a batched"):
        dnn.DropConnect(torch.nn.Linear(2, 2), per_sample=True)(x=torch.ones(2, 2))


# --- errors of the layers and functionals --------------------------------------------------------------------------


def test_layer_and_functional_errors():
    with pytest.raises(ValueError, match=r"DropConnectLinear: p must be in \[0, 1\], but got 1.5."):
        dnn.DropConnectLinear(2, 2, p=1.5)
    with pytest.raises(ValueError, match=r"DropConnectConv2d: p must be in \[0, 1\], but got -0.1."):
        dnn.DropConnectConv2d(2, 2, 3, p=-0.1)
    with pytest.raises(TypeError, match=r"DropConnectConv1d: seed must be an int, but got 0.5."):
        dnn.DropConnectConv1d(2, 2, 3, seed=0.5)
    with pytest.raises(ValueError, match=r"drop_connect: samples must be an int >= 0, but got -1."):
        F.drop_connect(torch.ones(2), samples=-1)
    with pytest.raises(TypeError, match=r"drop_connect: samples must be an int, but got 2.0."):
        F.drop_connect(torch.ones(2), samples=2.0)
    with pytest.raises(TypeError, match=r"drop_connect_linear: input must be a floating-point tensor in training"):
        F.drop_connect_linear(torch.ones(2, dtype=torch.int64), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"drop_connect_conv2d: p must be in \[0, 1\], but got nan."):
        F.drop_connect_conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 1, 1), p=float("nan"))


# --- MC dropout ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer",
    [
        pytest.param(lambda: dnn.DropConnectLinear(4, 4), id="linear"),
        pytest.param(lambda: dnn.DropConnectConv1d(4, 4, 1), id="conv1d"),
        pytest.param(lambda: dnn.DropConnectConv2d(4, 4, 1), id="conv2d"),
        pytest.param(lambda: dnn.DropConnect(torch.nn.Linear(4, 4)), id="wrapper"),
    ],
)
def test_mc_dropout_switches_dropconnect_on(layer):
    model = torch.nn.Sequential(layer(), torch.nn.BatchNorm1d(4)).eval()
    assert [m for _, m in mc.stochastic_modules(model)] == [model[0]]
    with mc.mc_dropout(model):
        assert model[0].training and not model[1].training


def test_functional_is_forced_on_inside_mc_dropout():
    model = torch.nn.Sequential(dnn.DropConnectLinear(3, 3)).eval()
    w = torch.ones(3, 3)
    with mc.mc_dropout(model):
        assert not torch.equal(F.drop_connect_linear(torch.ones(1, 3), w, training=False, seed=1), torch.ones(1, 3) * 3)
    assert torch.equal(F.drop_connect_linear(torch.ones(1, 3), w, training=False), torch.ones(1, 3) * 3)


@pytest.mark.parametrize("per_sample", [False, True])
def test_mc_predict_gives_distinct_samples(per_sample):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 16), torch.nn.ReLU(), dnn.DropConnectLinear(16, 3, per_sample=per_sample)
    ).eval()
    assert mc._mixes_batch(model) is not per_sample  # per-batch masks: auto mode must not stack samples
    r = mc.predict(model, torch.randn(5, 4), samples=6, seed=0, keep_samples=True)
    distinct = {tuple(r.samples[t].flatten().tolist()) for t in range(6)}
    assert len(distinct) == 6


def test_linear_per_sample_chunks_give_the_same_result_and_gradients(monkeypatch):
    torch.manual_seed(3)
    w = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 2, 6, dtype=torch.float64, requires_grad=True)

    def run():
        y = F.drop_connect_linear(x, w, p=0.3, per_sample=True, seed=4)
        return (y, *torch.autograd.grad(y.pow(2).sum(), (x, w)))

    whole = run()
    monkeypatch.setattr(F, "PER_SAMPLE_CHUNK", 2 * w.numel())  # chunks of two samples: 2 + 2 + 1
    for a, b in zip(whole, run(), strict=True):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda x, w: F.drop_connect_linear(x, w, p=0.3, per_sample=True, seed=4), (x, w))


def test_linear_per_sample_half_precision_gradients():
    layer = _linear(0.5, per_sample=True, seed=0).to(torch.bfloat16)
    layer(torch.randn(3, 6, dtype=torch.bfloat16)).sum().backward()
    assert layer.weight.grad.dtype == torch.bfloat16 and layer.weight.grad.abs().sum() > 0


def test_benchmark_script_quick_runs(capsys):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_weights.py"
    spec = importlib.util.spec_from_file_location("bench_weights", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--quick"])
    assert set(results["linear 64x64, batch 8"]) >= {"plain", "per-batch", "per-sample", "per-row loop"}
    assert "conv2d" in capsys.readouterr().out
    saved = results["saved"]  # the chunked per-sample layer keeps no masked weight copies for backward
    assert saved["per-sample"]["bytes"] < saved["per-row loop"]["bytes"] / 4


def test_wrapper_per_sample_fast_path_equals_vmap_path():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    x = torch.randn(3, 2, 5, 5)
    fast = dnn.DropConnect(conv, 0.5, drop_bias=True, per_sample=True, seed=2)
    slow = dnn.DropConnect(torch.nn.Sequential(conv), 0.5, weights=("0.weight", "0.bias"), per_sample=True, seed=2)
    torch.testing.assert_close(fast(x), slow(x))
    lin = torch.nn.Linear(4, 3)
    fast = dnn.DropConnect(lin, 0.5, per_sample=True, seed=1)
    slow = dnn.DropConnect(torch.nn.Sequential(lin), 0.5, weights="0.weight", per_sample=True, seed=1)
    x = torch.randn(5, 4)
    torch.testing.assert_close(fast(x), slow(x))


def test_non_contiguous_weight_and_channels_last_input():
    w = torch.randn(6, 5)
    assert torch.equal(F.drop_connect(w.T, 0.5, seed=1), F.drop_connect(w.T.contiguous(), 0.5, seed=1))
    layer = dnn.DropConnectConv2d(3, 4, 3, padding=1, p=0.5)
    x = torch.randn(2, 3, 6, 6)
    xl = x.to(memory_format=torch.channels_last)
    for per_sample in (False, True):
        y = F.drop_connect_conv2d(x, layer.weight, layer.bias, 1, 1, p=0.5, per_sample=per_sample, seed=3)
        yl = F.drop_connect_conv2d(xl, layer.weight, layer.bias, 1, 1, p=0.5, per_sample=per_sample, seed=3)
        torch.testing.assert_close(y, yl)
    xt = torch.randn(6, 4).T  # non-contiguous (4, 6) input
    lin = _linear(0.5)
    torch.testing.assert_close(
        F.drop_connect_linear(xt, lin.weight, p=0.5, per_sample=True, seed=2),
        F.drop_connect_linear(xt.contiguous(), lin.weight, p=0.5, per_sample=True, seed=2),
    )


def test_checkpoint_recomputes_the_same_weight_mask():
    layer = _linear(0.5)
    x = torch.randn(3, 6, requires_grad=True)
    torch.manual_seed(5)
    layer(x).pow(2).sum().backward()
    expected = layer.weight.grad.clone()
    layer.weight.grad = None
    torch.manual_seed(5)
    torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False).pow(2).sum().backward()
    torch.testing.assert_close(layer.weight.grad, expected)


def test_per_sample_drop_connect_under_torch_func_matches_autograd():
    """The memory-lean Function has no torch.func rule: under a transform the masked copies are made, same masks."""
    x = torch.randn(5, 3, dtype=torch.float64)
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)

    def f(weight):
        return F.drop_connect_linear(x, weight, p=0.5, per_sample=True, seed=3)

    f(w).pow(2).sum().backward()
    assert torch.allclose(torch.func.grad(lambda v: f(v).pow(2).sum())(w.detach()), w.grad)
    primal, _ = torch.func.jvp(f, (w.detach(),), (torch.ones_like(w),))
    assert torch.equal(primal, f(w.detach()))
    jacobian = torch.func.jacrev(f)(w.detach())  # (N, out, out, in): each sample's own masked weight
    assert jacobian.shape == (5, 4, 4, 3) and not torch.equal(jacobian[0, 0, 0], jacobian[1, 0, 0])
