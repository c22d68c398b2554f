"""DropoutScheduler (constant, linear, early, late, curriculum, callable), presets and the widening rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import dropkit.nn as dnn
from dropkit.schedule import DropoutScheduler, apply_presets, dropout_layers, widen


def _reference_drop_scheduler(drop_rate, epochs, niter_per_ep, cutoff_epoch=0, mode="standard", schedule="constant"):
    """``drop_scheduler`` of facebookresearch/dropout (Liu et al. 2023), verbatim."""
    assert mode in ["standard", "linear"]
    assert schedule in ["constant", "early", "late"]
    if schedule == "constant":
        return np.full(epochs * niter_per_ep, drop_rate)
    early_iters = cutoff_epoch * niter_per_ep
    late_iters = (epochs - cutoff_epoch) * niter_per_ep
    if mode == "standard":
        early_schedule = np.full(early_iters, drop_rate)
    elif mode == "linear":
        early_schedule = np.linspace(drop_rate, 0, early_iters)
    if schedule == "early":
        final_schedule = np.concatenate((early_schedule, np.full(late_iters, 0)))
    elif schedule == "late":
        final_schedule = np.concatenate((np.full(early_iters, 0), np.full(late_iters, drop_rate)))
    return final_schedule


def _model():
    return nn.Sequential(
        nn.Dropout(0.2), nn.Linear(4, 8), nn.ReLU(), dnn.Dropout(0.5), dnn.DropConnectLinear(8, 8, p=0.4),
        dnn.ConcreteDropout(nn.Linear(8, 2)),
    )  # fmt: skip


def _trace(sched, steps):
    rates = [sched.get_p()]
    rates += [sched.step() for _ in range(steps - 1)]
    return rates


def test_dropout_layers_finds_settable_rates_only():
    model = nn.Sequential(_model(), nn.MultiheadAttention(8, 2, dropout=0.1), dnn.GaussianDropout(0.3))
    assert [path for path, _ in dropout_layers(model)] == ["0.0", "0.3", "0.4", "2"]


def test_constant_keeps_each_layers_own_rate():
    model = _model()
    sched = DropoutScheduler(model)
    assert sched.get_p() == {"0": 0.2, "3": 0.5, "4": 0.4}
    assert sched.step() == {"0": 0.2, "3": 0.5, "4": 0.4}
    assert model[4].p == 0.4


def test_target_rates_one_value_or_patterns():
    model = _model()
    DropoutScheduler(model, p=0.3)
    assert [model[i].p for i in (0, 3, 4)] == [0.3, 0.3, 0.3]
    model = _model()
    DropoutScheduler(model, p={"4": 0.1, "*": 0.6})
    assert [model[i].p for i in (0, 3, 4)] == [0.6, 0.6, 0.1]


def test_linear_ramp():
    model = _model()
    sched = DropoutScheduler(model, "linear", total_steps=4)
    got = [r["3"] for r in _trace(sched, 7)]
    assert got == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5, 0.5, 0.5])
    sched = DropoutScheduler(_model(), "linear", total_steps=2, start_factor=1.0, end_factor=0.5)
    assert [r["3"] for r in _trace(sched, 3)] == pytest.approx([0.5, 0.375, 0.25])


@pytest.mark.parametrize(("schedule", "mode"), [("early", "standard"), ("early", "linear"), ("late", "standard")])
def test_early_and_late_match_the_authors_scheduler(schedule, mode):
    epochs, per_epoch, cutoff = 5, 3, 2
    reference = _reference_drop_scheduler(0.5, epochs, per_epoch, cutoff, mode, schedule)
    sched = DropoutScheduler(_model(), schedule, cutoff=cutoff * per_epoch, early_mode=mode)
    got = [r["3"] for r in _trace(sched, epochs * per_epoch)]
    np.testing.assert_allclose(got, reference, atol=1e-12)


def test_curriculum_keep_probability_formula():
    gamma = 0.3
    sched = DropoutScheduler(_model(), "curriculum", gamma=gamma)
    theta_bar = 1 - 0.5
    for t, rates in enumerate(_trace(sched, 10)):
        theta = (1 - theta_bar) * math.exp(-gamma * t) + theta_bar  # Morerio et al. 2017
        assert rates["3"] == pytest.approx(1 - theta)
    sched = DropoutScheduler(_model(), "curriculum", total_steps=100)
    assert sched.gamma == pytest.approx(0.1)
    assert sched.factor(0) == 0.0 and sched.factor(100) == pytest.approx(1 - math.exp(-10))


def test_callable_schedule():
    sched = DropoutScheduler(_model(), lambda t: 1.0 / (1 + t))
    assert [r["0"] for r in _trace(sched, 3)] == pytest.approx([0.2, 0.1, 0.2 / 3])
    with pytest.raises(ValueError, match=r"DropoutScheduler: schedule\(1\) must be in \[0, 1\], but got 2"):
        DropoutScheduler(_model(), lambda t: 2 * t).step()


def test_state_dict_resumes():
    model = _model()
    sched = DropoutScheduler(model, "linear", p=0.4, total_steps=10)
    for _ in range(3):
        sched.step()
    state = sched.state_dict()
    fresh_model = _model()
    resumed = DropoutScheduler(fresh_model, "linear", total_steps=10)
    resumed.load_state_dict(state)
    assert resumed.last_step == 3 and fresh_model[3].p == model[3].p == pytest.approx(0.12)
    assert resumed.step() == sched.step()
    with pytest.raises(ValueError, match=r"DropoutScheduler: state\['base_p'\] must be the keys \['0', '3', '4'\]"):
        resumed.load_state_dict({"last_step": 1, "base_p": {"9": 0.1}})


def test_scheduler_errors():
    cases = [
        (lambda: DropoutScheduler(nn.Linear(2, 2)), ValueError, r"model must contain a dropout layer, but got Linear"),
        (lambda: DropoutScheduler(_model(), "cosine"), ValueError, r"schedule must be one of 'constant', 'linear'"),
        (lambda: DropoutScheduler(_model(), "linear"), ValueError, r"total_steps must be an int >= 1 for the linear"),
        (lambda: DropoutScheduler(_model(), "early"), ValueError, r"cutoff must be an int >= 0 for the early schedule"),
        (lambda: DropoutScheduler(_model(), "curriculum"), ValueError, r"total_steps must be an int >= 1 for curric"),
        (lambda: DropoutScheduler(_model(), "curriculum", gamma=-1), ValueError, r"gamma must be a finite number > 0"),
        (lambda: DropoutScheduler(_model(), p=1.5), ValueError, r"DropoutScheduler: p must be in \[0, 1\]"),
        (lambda: DropoutScheduler(_model(), "late", cutoff=-2), ValueError, r"cutoff must be an int >= 0, but got -2"),
        (lambda: DropoutScheduler(_model(), start_factor=2), ValueError, r"start_factor must be in \[0, 1\]"),
        (lambda: DropoutScheduler(_model(), early_mode="cos"), ValueError, r"early_mode must be one of 'standard'"),
        (lambda: DropoutScheduler("m"), TypeError, r"DropoutScheduler: model must be a torch.nn.Module, but got 'str'"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()
    expected = "DropoutScheduler(schedule='late', last_step=0, layers=3)"
    assert repr(DropoutScheduler(_model(), "late", cutoff=1)) == expected


def test_apply_presets_input_and_hidden():
    model = _model()
    assert apply_presets(model) == {"0": 0.2, "3": 0.5, "4": 0.5}
    assert model[0].p == 0.2 and model[4].p == 0.5
    no_input = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.1))
    assert apply_presets(no_input, hidden_p=0.4) == {"1": 0.4}
    with pytest.raises(ValueError, match=r"apply_presets: input_p must be in \[0, 1\], but got 1.2."):
        apply_presets(model, input_p=1.2)
    with pytest.raises(ValueError, match=r"apply_presets: model must contain a dropout layer, but got ReLU with none."):
        apply_presets(nn.ReLU())


def test_widen():
    assert [widen(100, 0.5), widen(70, 0.3), widen(10, 0.0), widen(0, 0.9), widen(1024, 0.2)] == [200, 100, 10, 0, 1280]
    assert widen(3, 0.5) == 6 and widen(5, 0.3) == 8  # 7.14... rounds up
    with pytest.raises(ValueError, match=r"widen: p must be in \[0, 1\), but got 1.0."):
        widen(10, 1.0)
    with pytest.raises(ValueError, match=r"widen: n must be an int >= 0, but got -1."):
        widen(-1, 0.5)
    with pytest.raises(TypeError, match=r"widen: n must be an int, but got 2.5."):
        widen(2.5, 0.5)


def test_scheduled_rate_takes_effect_in_forward():
    model = nn.Sequential(dnn.Dropout(0.5))
    sched = DropoutScheduler(model, "late", cutoff=1)
    x = torch.ones(1000)
    assert torch.equal(model(x), x)  # rate 0 before the cutoff
    sched.step()
    assert (model(x) == 0).any()


def test_scheduler_refuses_p_1_for_gaussian_dropout_as_set_p_does():
    model = nn.Sequential(nn.Linear(3, 3), dnn.GaussianDropout(0.3))
    with pytest.raises(ValueError, match=r"DropoutScheduler: p must be in \[0, 1\), but got 1.0"):
        DropoutScheduler(model, p=1.0)
