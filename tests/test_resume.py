"""Resume: rng.RNGState saved with a checkpoint makes a stopped and resumed run draw the uninterrupted run's masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dropkit.nn as dnn
from dropkit import functional as F
from dropkit import rng


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16),
        dnn.Dropout(0.5),  # draws from torch's default generator
        nn.Linear(16, 16),
        dnn.Dropout(0.3, seed=11),  # its own generator
        dnn.GaussianDropout(0.2),
        nn.Linear(16, 2),
    )


def _step(model: nn.Module, opt: torch.optim.Optimizer, step: int, device_gen: rng.DeviceGenerator) -> torch.Tensor:
    x = torch.linspace(-1, 1, 24).reshape(4, 6) * (step + 1)
    y = F.dropout(model(x), 0.2, generator=device_gen)
    loss = y.pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return y.detach()


def _fresh():
    model = _model()
    return model, torch.optim.SGD(model.parameters(), lr=0.1), rng.DeviceGenerator(seed=5, device="cpu")


def test_stopped_and_resumed_run_draws_the_same_masks(tmp_path):
    model, opt, gen = _fresh()
    torch.manual_seed(1)
    uninterrupted = [_step(model, opt, s, gen) for s in range(6)]

    model, opt, gen = _fresh()
    torch.manual_seed(1)
    first = [_step(model, opt, s, gen) for s in range(3)]
    state = rng.RNGState(model, [gen])
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "rng": state.state_dict()}, tmp_path / "ck.pt")

    model, opt, gen = _fresh()  # a new process: other seeds, generators at their start
    torch.manual_seed(999)
    saved = torch.load(tmp_path / "ck.pt")
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    rng.RNGState(model, [gen]).load_state_dict(saved["rng"])
    second = [_step(model, opt, s, gen) for s in range(3, 6)]

    for a, b in zip(uninterrupted, first + second, strict=True):
        assert torch.equal(a, b)


def test_without_rng_state_the_resumed_run_differs():
    model, opt, gen = _fresh()
    torch.manual_seed(1)
    uninterrupted = [_step(model, opt, s, gen) for s in range(4)]
    model, opt, gen = _fresh()
    torch.manual_seed(1)
    first = [_step(model, opt, s, gen) for s in range(2)]
    saved = {"model": model.state_dict(), "opt": opt.state_dict()}
    model, opt, gen = _fresh()
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    second = [_step(model, opt, s, gen) for s in range(2, 4)]
    assert torch.equal(uninterrupted[1], first[1])
    assert not torch.equal(uninterrupted[2], second[0])


def test_state_dict_keys_and_errors():
    model = _model()
    gen = rng.DeviceGenerator(seed=1, device="cpu")
    state = rng.RNGState(model, [gen])
    keys = list(state.state_dict())
    assert keys == ["torch.default", "module:3", "generator:0"]
    assert list(rng.RNGState(model, default=False).state_dict()) == ["module:3"]
    with pytest.raises(KeyError, match=r"RNGState.load_state_dict: state_dict must hold the keys .* no 'module:3'"):
        state.load_state_dict({"torch.default": torch.get_rng_state()})
    with pytest.raises(TypeError, match=r"RNGState.load_state_dict: state_dict must be a dict, but got 'list'"):
        state.load_state_dict([])


def test_state_dict_is_a_snapshot():
    state = rng.RNGState()
    saved = state.state_dict()
    first = [rng.draw_seed() for _ in range(3)]
    state.load_state_dict(saved)
    assert [rng.draw_seed() for _ in range(3)] == first
