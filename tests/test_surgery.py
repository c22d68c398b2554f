"""Model surgery: find, swap, re-rate and fold the dropout layers of torch models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dropkit.nn as dnn
from dropkit import surgery


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Dropout2d(0.2), nn.Flatten(),
        nn.Sequential(nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Dropout(0.5, inplace=True)),
        nn.Linear(16, 3), nn.AlphaDropout(0.1),
    )  # fmt: skip


def test_find_dropout_reports_path_class_p_and_mode():
    model = _cnn()
    model.append(dnn.Dropout(0.3, mode="classic"))
    sites = surgery.find_dropout(model)
    assert [(s.path, s.p, s.mode) for s in sites] == [
        ("2", 0.2, "inverted"), ("4.2", 0.5, "inverted"), ("6", 0.1, "inverted"), ("7", 0.3, "classic"),
    ]  # fmt: skip
    assert sites[0].cls == "torch.nn.modules.dropout.Dropout2d"
    assert sites[3].cls == "dropkit.nn.dropout.Dropout"


def test_swap_dropout_keeps_eval_outputs_p_inplace_and_flags():
    model = _cnn().eval()
    model[4][0].train()  # a mixed state (a deterministic layer in training mode) must survive the swap
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    flags = [m.training for m in model.modules()]
    assert surgery.swap_dropout(model) is model
    assert torch.equal(model(x), before)
    assert [m.training for m in model.modules()] == flags
    assert type(model[2]) is dnn.Dropout2d and type(model[4][2]) is dnn.Dropout and type(model[6]) is dnn.AlphaDropout
    assert model[4][2].inplace and model[4][2].p == 0.5
    assert not any(type(m) in surgery.TWINS for m in model.modules())


def test_set_p_everywhere_and_by_pattern():
    model = _cnn()
    assert surgery.set_p(model, 0.25) == ["2", "4.2", "6"]
    assert {s.p for s in surgery.find_dropout(model)} == {0.25}
    assert surgery.set_p(model, {"4.*": 0.4, "*": 0.1}) == ["2", "4.2", "6"]
    assert [s.p for s in surgery.find_dropout(model)] == [0.1, 0.4, 0.1]
    with pytest.raises(ValueError, match=r"^set_p: p must be in \[0, 1\], but got 1.5.$"):
        surgery.set_p(model, 1.5)
    with pytest.raises(ValueError, match=r"set_p: every pattern must match a dropout module, but got no match"):
        surgery.set_p(model, {"decoder.*": 0.2})


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_fold_classic_keeps_eval_outputs_and_training_distribution(p):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), dnn.Dropout(p, mode="classic"), nn.Linear(8, 2)).eval()
    x = torch.randn(5, 6)
    before = model(x)
    weight = model[3].weight.clone()
    torch.manual_seed(7)
    train_before = model.train()(x)
    assert surgery.fold_classic(model) == ["2"]
    assert model[2].mode == "inverted"
    torch.testing.assert_close(model[3].weight, weight * (1 - p))
    torch.manual_seed(7)
    torch.testing.assert_close(model.train()(x), train_before, rtol=1e-6, atol=1e-6)  # same mask, same output
    after = model.eval()(x)
    if p == 0.5:  # (1 - p) is a power of two: the fold is exact
        assert torch.equal(after, before)
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)


def test_fold_classic_leaves_dropout_without_a_foldable_successor():
    model = nn.Sequential(nn.Linear(3, 3), dnn.Dropout(0.5, mode="classic"), nn.ReLU())
    assert surgery.fold_classic(model) == []
    assert model[1].mode == "classic"


def test_find_and_set_p_see_structured_and_weight_dropout():
    """DropPath, StochasticDepth, DropBlock and DropConnect layers are dropout sites too."""
    import dropkit.nn as dnn
    from dropkit import surgery

    model = torch.nn.Sequential(
        dnn.DropConnectLinear(4, 4, p=0.1),
        dnn.DropPath(0.2),
        dnn.StochasticDepth(0.3, "row"),
        dnn.DropBlock2d(0.4, 3),
    )
    sites = surgery.find_dropout(model)
    assert [(s.path, s.p, s.mode) for s in sites] == [
        ("0", 0.1, "inverted"),
        ("1", 0.2, "inverted"),
        ("2", 0.3, "inverted"),
        ("3", 0.4, "inverted"),
    ]
    surgery.set_p(model, 0.05)
    assert [m.p for m in model] == [0.05] * 4


def test_swap_dropout_keeps_identity_hooks_attributes_and_shared_modules():
    shared = nn.Dropout(0.4)
    calls = []
    shared.register_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    shared.note = "kept"
    model = nn.Sequential(nn.Linear(3, 3), shared, nn.Sequential(nn.ReLU(), shared))
    assert surgery.swap_dropout(model) is model
    assert model[1] is shared and model[2][1] is shared and type(shared) is dnn.Dropout  # one module, both paths
    assert shared.note == "kept" and shared.p == 0.4
    model(torch.randn(2, 3))
    assert calls == ["Dropout", "Dropout"]  # the hook still runs, on the twin
    root = nn.Dropout2d(0.3)  # a model that is itself a dropout layer
    assert surgery.swap_dropout(root) is root and type(root) is dnn.Dropout2d
    assert repr(root) == "Dropout2d(p=0.3, inplace=False)"


def test_fold_classic_leaves_shared_layers_alone_and_says_so():
    shared = nn.Linear(3, 3)
    model = nn.Sequential(dnn.Dropout(0.5, mode="classic"), shared, dnn.Dropout(0.5, mode="classic"), shared).eval()
    x = torch.randn(2, 3)
    before = model(x)
    with pytest.warns(UserWarning, match=r"left classic dropout at \['0', '2'\]") as record:
        assert surgery.fold_classic(model) == []
    assert record[0].filename == __file__
    assert torch.equal(model(x), before)  # folding the shared weight twice (or once) would have changed this
