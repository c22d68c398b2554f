"""Concrete dropout: the relaxed mask, the wrapper, its regulariser, and the learned p against the data size."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import dropkit.nn as dnn
from dropkit import functional as F
from dropkit import mc, rng


def _reference_concrete_dropout(x, p_logit, u, temperature=0.1, eps=1e-7):
    """The authors' PyTorch code (yaringal/ConcreteDropout), with the uniforms passed in."""
    p = torch.sigmoid(p_logit)
    drop_prob = torch.log(p + eps) - torch.log(1 - p + eps) + torch.log(u + eps) - torch.log(1 - u + eps)
    drop_prob = torch.sigmoid(drop_prob / temperature)
    return x * (1 - drop_prob) / (1 - p)


def test_concrete_dropout_matches_reference_formula_and_seed():
    x = torch.randn(4, 5)
    logit = torch.tensor([0.3])
    y = F.concrete_dropout(x, logit, 0.2, seed=7)
    torch.testing.assert_close(y, _reference_concrete_dropout(x, logit, rng.uniform((4, 5), 7), 0.2))
    assert torch.equal(y, F.concrete_dropout(x, logit, 0.2, seed=7))
    assert not torch.equal(F.concrete_dropout(x, logit), F.concrete_dropout(x, logit))


def test_concrete_dropout_eval_is_identity_and_empty():
    x = torch.randn(3)
    assert F.concrete_dropout(x, 0.0, training=False) is x
    e = torch.randn(0, 3)
    assert F.concrete_dropout(e, 0.0) is e


def test_concrete_dropout_gradient_reaches_p_logit():
    logit = torch.zeros(1, requires_grad=True)
    x = torch.randn(64, requires_grad=True)
    F.concrete_dropout(x, logit, seed=1).pow(2).sum().backward()
    assert logit.grad is not None and logit.grad.abs().item() > 0
    assert x.grad is not None


@pytest.mark.statistical
def test_concrete_dropout_low_temperature_is_bernoulli_dropout():
    # at t = 1e-4 the mask is (almost) binary: dropped fraction vs p by a binomial test (p-value > 0.01)
    p = 0.3
    y = F.concrete_dropout(torch.ones(40_000), math.log(p / (1 - p)), 1e-4, seed=3)
    dropped = int((y < 0.5).sum())
    assert ((y < 1e-3) | ((y - 1 / (1 - p)).abs() < 1e-3)).float().mean() > 0.999
    assert stats.binomtest(dropped, y.numel(), p).pvalue > 0.01


def test_module_forward_eval_and_p():
    torch.manual_seed(0)
    inner = torch.nn.Linear(5, 3)
    layer = dnn.ConcreteDropout(inner, init_min=0.25, init_max=0.25, seed=0)
    assert layer.p == pytest.approx(0.25)
    x = torch.randn(4, 5)
    assert torch.equal(layer.eval()(x), inner(x))
    layer.train()
    g = torch.Generator().manual_seed(0)
    rng.draw_seed(g)  # the module's first draw initialised p_logit
    expected = inner(F.concrete_dropout(x, layer.p_logit, 0.1, generator=g))
    fresh = dnn.ConcreteDropout(inner, init_min=0.25, init_max=0.25, seed=0)
    torch.testing.assert_close(fresh(x), expected)


def test_module_init_range_is_drawn_from_dropkit_rng():
    ps = [dnn.ConcreteDropout(torch.nn.Linear(2, 2), init_min=0.1, init_max=0.5, seed=s).p for s in range(20)]
    assert all(0.1 <= p <= 0.5 for p in ps) and len(set(ps)) == 20
    assert dnn.ConcreteDropout(torch.nn.Linear(2, 2), init_min=0.1, init_max=0.5, seed=3).p == ps[3]


def test_regularization_is_the_reference_term():
    torch.manual_seed(0)
    inner = torch.nn.Linear(6, 4)
    layer = dnn.ConcreteDropout(inner, weight_regularizer=1e-2, dropout_regularizer=1e-1, init_min=0.3, init_max=0.3)
    layer(torch.randn(2, 6))
    p = torch.sigmoid(layer.p_logit)[0]
    expected = 1e-2 * inner.weight.pow(2).sum() / (1 - p) + 1e-1 * 6 * (p * torch.log(p) + (1 - p) * torch.log(1 - p))
    torch.testing.assert_close(layer.regularization(), expected)
    layer.regularization().backward()
    assert layer.p_logit.grad is not None and inner.weight.grad is not None and inner.bias.grad is None


def test_regularization_input_dim_is_one_sample_numel():
    conv = dnn.ConcreteDropout(torch.nn.Conv2d(2, 3, 3), dropout_regularizer=1.0, weight_regularizer=0.0)
    with pytest.raises(ValueError, match=r"ConcreteDropout: input_dim must be known for the entropy term"):
        conv.regularization()
    conv(torch.randn(4, 2, 5, 5))
    p = conv.p
    assert conv.regularization().item() == pytest.approx(2 * 5 * 5 * (p * math.log(p) + (1 - p) * math.log(1 - p)))


def test_concrete_regularization_sums_layers():
    model = torch.nn.Sequential(
        dnn.ConcreteDropout(torch.nn.Linear(3, 8)), torch.nn.ReLU(), dnn.ConcreteDropout(torch.nn.Linear(8, 1))
    )
    total = dnn.concrete_regularization(model)
    torch.testing.assert_close(total, model[0].regularization() + model[2].regularization())
    with pytest.raises(ValueError, match=r"concrete_regularization: model must contain a ConcreteDropout layer"):
        dnn.concrete_regularization(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match=r"concrete_regularization: model must be a torch.nn.Module, but got 'int'"):
        dnn.concrete_regularization(3)


def test_mc_dropout_switches_concrete_dropout_on():
    model = torch.nn.Sequential(dnn.ConcreteDropout(torch.nn.Linear(3, 3)), torch.nn.BatchNorm1d(3)).eval()
    with mc.mc_dropout(model):
        assert model[0].training and not model[1].training
    r = mc.predict(model, torch.randn(4, 3), samples=5, seed=0, task="regression")
    assert (r.variance > 0).all()


def test_module_errors_and_repr():
    lin = torch.nn.Linear(2, 2)
    cases = [
        (dict(init_min=0.0), ValueError, r"ConcreteDropout: init_min must be in \(0, 1\), but got 0.0."),
        (dict(init_max=1.0), ValueError, r"ConcreteDropout: init_max must be in \(0, 1\), but got 1.0."),
        (dict(init_min=0.5, init_max=0.2), ValueError, r"ConcreteDropout: init_max must be >= init_min \(0.5\)"),
        (dict(temperature=0.0), ValueError, r"ConcreteDropout: temperature must be a finite number > 0, but got 0.0."),
        (dict(weight_regularizer=-1), ValueError, r"weight_regularizer must be a finite number >= 0, but got -1."),
        (dict(dropout_regularizer="a"), TypeError, r"dropout_regularizer must be a real number, but got 'a'."),
    ]
    for kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            dnn.ConcreteDropout(lin, **kwargs)
    with pytest.raises(TypeError, match=r"ConcreteDropout: module must be a torch.nn.Module, but got 'str'."):
        dnn.ConcreteDropout("linear")
    with pytest.raises(ValueError, match=r"concrete_dropout: temperature must be a finite number > 0, but got -1"):
        F.concrete_dropout(torch.ones(2), 0.0, -1)
    assert "p=0.1, weight_regularizer=1e-06, dropout_regularizer=1e-05, temperature=0.1" in repr(
        dnn.ConcreteDropout(lin)
    )


def _learned_p(n: int, steps: int = 300, hidden: int = 32, length_scale: float = 1e-2) -> list[float]:
    """Fit y = 2x + 8 + noise on n points (the paper's toy problem) with Concrete dropout on every layer."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=g)
    y = 2 * x + 8 + torch.randn(n, 1, generator=g)
    torch.manual_seed(0)
    wr, dr = length_scale**2 / n, 2.0 / n  # the paper's scaling: l^2 / N and 2 / N (tau = 1)

    def wrap(layer):
        return dnn.ConcreteDropout(layer, wr, dr, seed=0)

    model = torch.nn.Sequential(
        wrap(torch.nn.Linear(1, hidden)), torch.nn.ReLU(), wrap(torch.nn.Linear(hidden, hidden)), torch.nn.ReLU(),
        wrap(torch.nn.Linear(hidden, 1)),
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = min(n, 128)
    for _ in range(steps):
        idx = torch.randint(0, n, (batch,), generator=g)
        loss = 0.5 * (model(x[idx]) - y[idx]).pow(2).mean() + dnn.concrete_regularization(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [m.p for m in model if isinstance(m, dnn.ConcreteDropout)]


def test_learned_p_falls_with_more_data():
    # Gal et al. 2017, fig. 2 / the authors' notebook: the optimal p shrinks as N grows (less epistemic
    # uncertainty to express). Fixed seeds; with 10 points the hidden layers' p sits far above 1000 points'.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-unit MLP: intra-op threads only contend on a loaded machine
    try:
        few, many = _learned_p(10), _learned_p(1000)
    finally:
        torch.set_num_threads(threads)
    assert few[1] > 0.2 and few[2] > 0.2
    assert all(m < f for m, f in zip(many, few, strict=True))
    assert max(many[1:]) < 0.5 * min(few[1:])


def test_meta_device_construction_and_an_empty_batch():
    with torch.device("meta"):  # how large models are built before their weights are loaded
        layer = dnn.ConcreteDropout(torch.nn.Linear(4, 3), init_min=0.2, init_max=0.2)
    assert layer.p_logit.device.type == "meta"
    layer.to_empty(device="cpu")
    assert layer.train()(torch.ones(2, 4)).shape == (2, 3)
    assert layer(torch.ones(0, 4)).shape == (0, 3) and layer.input_dim == 4  # torch's layers take empty batches
