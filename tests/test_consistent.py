"""frozen_masks: replayed masks across calls and batches from seeds, per-site independence, and unfreezing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dropkit.nn as dnn
from dropkit import functional as F
from dropkit import mc
from dropkit.consistent import frozen_masks, site_seed


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.Dropout(0.5), dnn.Dropout(0.3), nn.ReLU(), dnn.DropConnectLinear(16, 16, p=0.4),
        dnn.GaussianDropout(0.2), dnn.ConcreteDropout(nn.Linear(16, 3)),
    )  # fmt: skip


def test_repeated_forwards_replay_and_unfreezing_restores_fresh_masks():
    model, x = _model(), torch.randn(4, 6)
    with frozen_masks(model, seed=3):
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    assert not torch.equal(model(x), model(x))
    with frozen_masks(model, seed=3):
        assert torch.equal(model(x), a)  # the same seed replays across contexts
    with frozen_masks(model, seed=4):
        assert not torch.equal(model(x), a)


def test_frozen_block_leaves_the_generators_where_they_were():
    model, x = _model(), torch.randn(4, 6)
    torch.manual_seed(1)
    expected = model(x)
    torch.manual_seed(1)
    with frozen_masks(model, seed=0):
        model(x)
    assert torch.equal(model(x), expected)


def test_sites_are_independent_including_a_reused_module():
    drop = nn.Dropout(0.5)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop, self.other = drop, dnn.Dropout(0.5)

        def forward(self, x):
            return torch.stack([self.drop(x), self.drop(x), self.other(x), F.dropout(x, 0.5)])

    model, x = Twice(), torch.ones(64)
    with frozen_masks(model, seed=0):
        y = model(x)
        assert torch.equal(model(x), y)
    masks = [tuple((row == 0).tolist()) for row in y]
    assert len(set(masks)) == 4


def test_per_position_masks_follow_the_row_whatever_the_batch_size():
    model, x = nn.Sequential(dnn.Dropout(0.5)), torch.randn(6, 10)
    with frozen_masks(model, seed=2):
        full = model(x)
        assert torch.equal(model(x[:3]), full[:3])
        assert not torch.equal((full[0] == 0), (full[1] == 0))


@pytest.mark.parametrize(
    "layer",
    [
        pytest.param(lambda: nn.Dropout(0.5), id="torch-dropout"),
        pytest.param(lambda: dnn.Dropout(0.5, mode="classic"), id="dropkit-classic"),
        pytest.param(lambda: nn.Dropout2d(0.5), id="dropout2d"),
        pytest.param(lambda: dnn.GaussianDropout(0.5), id="gaussian"),
    ],
)
def test_batch_shared_masks_are_one_row_for_every_batch(layer):
    model = nn.Sequential(layer())
    x = torch.ones(5, 4, 3, 3)
    with frozen_masks(model, seed=1, batch_shared=True):
        y = model(x)
        assert all(torch.equal(y[0], y[n]) for n in range(5))
        assert torch.equal(model(x[3:]), y[3:])  # chunks of a pool see the same network
        assert torch.equal(model(x[:1] * 2), y[:1] * 2)
    assert not torch.equal(model(x)[0], model(x)[1])


def test_batch_shared_dropconnect_and_warning_for_per_row_layers():
    model = nn.Sequential(dnn.DropConnectLinear(4, 4, p=0.5), nn.AlphaDropout(0.5))
    x = torch.ones(3, 4)
    with pytest.warns(UserWarning, match=r"frozen_masks: batch_shared covers .* per-row masks: \['1'\]"):
        with frozen_masks(model, seed=0, batch_shared=True):
            y = model[0](x)
    assert torch.equal(y[0], y[2])


def test_without_model_every_draw_uses_one_seed_and_explicit_seed_wins():
    x = torch.ones(100)
    with frozen_masks(seed=5):
        a = F.dropout(x)
        assert torch.equal(F.dropout(x), a)
        assert torch.equal(F.dropout(x, seed=9), F.dropout(x, seed=9))
        assert not torch.equal(F.dropout(x, seed=9), a)
    assert torch.equal(a, F.dropout(x, seed=site_seed(5)))


def test_gradients_replay_too():
    model, x = _model(), torch.randn(4, 6)
    grads = []
    with frozen_masks(model, seed=8):
        for _ in range(2):
            model.zero_grad()
            model(x).sum().backward()
            grads.append(model[0].weight.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_consistent_mc_dropout_samples_batchbald_style():
    # posterior sample j = frozen_masks(model, seed=j): the same network for every pool chunk
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3)).eval()
    pool = torch.randn(10, 5)
    samples = []
    with mc.mc_dropout(model):
        for j in range(4):
            with frozen_masks(model, seed=j, batch_shared=True):
                samples.append(torch.cat([model(pool[:4]), model(pool[4:])]))
                assert torch.allclose(model(pool), samples[-1])
    assert all(not torch.equal(samples[i], samples[j]) for i in range(4) for j in range(i + 1, 4))
    assert not model[2].training


def test_torch_functional_dropout_is_frozen_inside_mc_dropout():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.dropout_p = 0.5

        def forward(self, x):
            return torch.nn.functional.dropout(x, self.dropout_p, self.training)

    model, x = Attention().eval(), torch.ones(50)
    with mc.mc_dropout(model), frozen_masks(model, seed=0):
        assert torch.equal(model(x), model(x))
        assert (model(x) == 0).any()


def test_exit_after_an_exception_restores_everything():
    model = nn.Sequential(nn.Dropout(0.5))
    with pytest.raises(RuntimeError, match="boom"), frozen_masks(model, seed=0):
        raise RuntimeError("boom")
    assert "forward" not in model[0].__dict__ and F._seed_override is None
    assert not model[0]._forward_hooks and not model[0]._forward_pre_hooks


def test_nested_contexts_restore_the_outer_one():
    x = torch.ones(64)
    with frozen_masks(seed=1):
        outer = F.dropout(x)
        with frozen_masks(seed=2):
            assert not torch.equal(F.dropout(x), outer)
        assert torch.equal(F.dropout(x), outer)


def test_errors():
    with pytest.raises(ValueError, match=r"frozen_masks: model must be a torch.nn.Module for batch_shared=True"):
        frozen_masks(seed=0, batch_shared=True)
    with pytest.raises(ValueError, match=r"frozen_masks: seed must be in \[0, 2\*\*64\), but got -1."):
        frozen_masks(seed=-1)
    with pytest.raises(TypeError, match=r"frozen_masks: model must be a torch.nn.Module, but got 'int'."):
        frozen_masks(3)
