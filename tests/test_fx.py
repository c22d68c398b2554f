"""torch.fx and ``__torch_function__``: dropkit's modules and ops trace as torch's dropout does.

FX's default tracer keeps torch's ``nn.Dropout`` as one ``call_module`` node (a leaf, switched by the graph
module's ``train()`` / ``eval()``) and records ``F.dropout`` as one ``call_function`` node; a tensor subclass
or a ``TorchFunctionMode`` sees ``F.dropout`` itself. dropkit's modules and functional ops must do the same.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx as fx
from torch import nn
from torch.overrides import TorchFunctionMode

import dropkit.nn as dnn
from dropkit import functional as F
from dropkit import surgery

# (module, input shape, unpack the first element of a tuple output)
MODULES = [
    (lambda: dnn.Dropout(0.5), (4, 6), False),
    (lambda: dnn.Dropout1d(0.5), (4, 3, 5), False),
    (lambda: dnn.Dropout2d(0.5), (4, 3, 2, 2), False),
    (lambda: dnn.Dropout3d(0.5), (4, 3, 2, 2, 2), False),
    (lambda: dnn.AlphaDropout(0.3), (4, 6), False),
    (lambda: dnn.FeatureAlphaDropout(0.3), (4, 3, 5), False),
    (lambda: dnn.GaussianDropout(0.3), (4, 6), False),
    (lambda: dnn.GaussianNoise(0.2), (4, 6), False),
    (lambda: dnn.StochasticDepth(0.5, "row"), (8, 6), False),
    (lambda: dnn.DropPath(0.5), (8, 6), False),
    (lambda: dnn.DropBlock2d(0.3, 3), (2, 3, 8, 8), False),
    (lambda: dnn.DropConnectLinear(6, 5, p=0.5), (4, 6), False),
    (lambda: dnn.DropConnectConv2d(3, 4, 3, p=0.5), (2, 3, 6, 6), False),
    (lambda: dnn.DropConnect(nn.Linear(6, 5), p=0.5), (4, 6), False),
    (lambda: dnn.WeightDrop(nn.Linear(6, 5), ["weight"], p=0.5), (4, 6), False),
    (lambda: dnn.ConcreteDropout(nn.Linear(6, 5), init_min=0.3, init_max=0.3), (4, 6), False),
    (lambda: dnn.DropoutAddLayerNorm(6, p=0.4), (4, 6), False),
    (lambda: dnn.LSTM(6, 5, num_layers=2, dropout=0.3, batch_first=True, recurrent_dropout=0.3), (2, 3, 6), True),
    (lambda: dnn.GRU(6, 5, num_layers=2, dropout=0.3, recurrent_dropout=0.3), (3, 2, 6), True),
    (lambda: dnn.ZoneoutLSTMCell(6, 5, zoneout_h=0.3, zoneout_c=0.3), (4, 6), True),
]
IDS = [type(make()).__name__ for make, _, _ in MODULES]


class _Host(nn.Module):
    """A module around the dropkit layer, as in a real model (the tracer's root is the host, not the layer)."""

    def __init__(self, layer: nn.Module, unpack: bool) -> None:
        super().__init__()
        self.layer, self.unpack = layer, unpack

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layer(x * 1.0)
        return (y[0] if self.unpack else y) + 1.0


def _run(model: nn.Module, x: torch.Tensor, seed: int = 7) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize(("make", "shape", "unpack"), MODULES, ids=IDS)
def test_every_module_is_one_call_module_node_switched_by_train_and_eval(make, shape, unpack):
    host = _Host(make(), unpack).train()
    graph_module = fx.symbolic_trace(host)
    calls = [node for node in graph_module.graph.nodes if node.op == "call_module"]
    assert [node.target for node in calls] == ["layer"]  # one leaf call, nothing traced inside the layer
    assert graph_module.layer is host.layer  # the graph calls the module itself: its rate, seed, state
    x = torch.randn(*shape)
    assert torch.equal(_run(graph_module, x), _run(host, x))  # the same masks from the same generator state
    assert not torch.equal(_run(graph_module, x, seed=7), _run(graph_module, x, seed=8))  # and it does draw
    graph_module.eval(), host.eval()
    assert torch.equal(_run(graph_module, x), _run(host, x))  # eval reaches the layer through the graph module
    assert torch.equal(_run(graph_module, x, seed=7), _run(graph_module, x, seed=8))  # deterministic in eval


def test_swapped_model_traces_like_the_torch_model_it_came_from():
    torch_model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3), nn.Dropout(0.2))
    theirs = fx.symbolic_trace(torch_model)
    ours = fx.symbolic_trace(surgery.swap_dropout(copy.deepcopy(torch_model)))
    assert isinstance(ours.get_submodule("2"), dnn.Dropout) and isinstance(ours.get_submodule("4"), dnn.Dropout)
    assert [(n.op, n.target) for n in ours.graph.nodes] == [(n.op, n.target) for n in theirs.graph.nodes]
    x = torch.randn(5, 6)
    assert torch.equal(_run(ours.eval(), x), _run(theirs.eval(), x))


def test_functional_op_in_a_custom_forward_is_one_call_function_node():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x):
            h = F.dropout(self.fc(x), 0.3, self.training)
            return F.dropout2d(h.view(2, 3, 2, 1), p=0.5, training=self.training, mode="classic")

    net = Net().train()
    graph_module = fx.symbolic_trace(net)
    targets = [node.target for node in graph_module.graph.nodes if node.op == "call_function"]
    assert targets == [F.dropout, F.dropout2d]
    x = torch.randn(2, 6)
    assert torch.equal(_run(graph_module, x), _run(net, x))


@pytest.mark.parametrize(
    ("layer", "op", "concrete"),
    [(dnn.DropPath(0.5), F.drop_path, None), (dnn.Dropout(0.5), F.dropout, {"training": None})],
    ids=["DropPath", "Dropout"],
)
def test_a_dropkit_layer_traced_as_the_root_records_its_op(layer, op, concrete):
    graph_module = fx.symbolic_trace(layer.train(), concrete_args=concrete)  # Dropout: its keyword-only training=
    called = [node.target for node in graph_module.graph.nodes if node.op == "call_function"]
    assert [target for target in called if target.__module__.startswith("dropkit")] == [op]
    x = torch.randn(8, 4)
    assert torch.equal(_run(graph_module, x), _run(layer, x))


def test_torch_function_modes_and_subclasses_see_the_public_op():
    seen = []

    class Log(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    x = torch.ones(4, 6)
    with Log():
        y = F.dropout(x, 0.5, seed=3)
    assert seen[0] is F.dropout  # the op itself, once, before anything it calls
    assert torch.equal(y, F.dropout(x, 0.5, seed=3))

    class Tagged(torch.Tensor):
        pass

    out = F.alpha_dropout(x.as_subclass(Tagged), 0.5, seed=3)
    assert type(out) is Tagged  # torch's default __torch_function__ keeps the subclass, as for F.alpha_dropout
    assert torch.equal(out.as_subclass(torch.Tensor), F.alpha_dropout(x, 0.5, seed=3))


def test_tracers_that_trace_through_torch_layers_trace_through_dropkit_layers():
    class Everything(fx.Tracer):  # inlines every module, torch's own included
        def is_leaf_module(self, m, qualname):
            return False

    class Listed(fx.Tracer):  # extends FX's rule, as torchvision's feature-extraction tracer does
        def is_leaf_module(self, m, qualname):
            return isinstance(m, nn.Linear) or super().is_leaf_module(m, qualname)

    for dropout in (nn.Dropout(0.5), dnn.Dropout(0.5)):
        model = nn.Sequential(nn.Linear(4, 4), dropout)
        inlined = Everything().trace(model)
        assert [n.op for n in inlined.nodes if n.op.startswith("call")] == ["call_function"] * 2  # linear, dropout
        kept = Listed().trace(model)
        assert [(n.op, n.target) for n in kept.nodes][1:-1] == [("call_module", "0"), ("call_module", "1")]


def test_leaf_calls_keep_every_argument_as_given():
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4))

        def forward(self, x, scale=2.0):  # a keyword passed as None means something here
            parts = x if isinstance(x, torch.Tensor) else x[0] + x[1]
            return parts * self.weight * (1.0 if scale is None else scale)

    class Host(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dc = dnn.DropConnect(Scale(), p=0.5)

        def forward(self, x):
            return self.dc(x, scale=None) + self.dc([x, x])  # a keyword None, and a list holding the proxy

    host = Host()
    graph_module = fx.symbolic_trace(host)
    assert [n.target for n in graph_module.graph.nodes if n.op == "call_module"] == ["dc", "dc"]
    x = torch.randn(2, 4)
    for mode in (host.eval, host.train):
        mode(), graph_module.train(host.training)
        assert torch.equal(_run(graph_module, x), _run(host, x))


def test_compile_of_a_tensor_subclass_still_traces_the_op_body():
    class Tagged(torch.Tensor):
        pass

    x = torch.ones(4, 6).as_subclass(Tagged)
    for fn in (lambda t: F.dropout(t, 0.5, True, seed=1), dnn.Dropout(0.5, seed=1)):
        compiled = torch.compile(fn, fullgraph=True, backend="eager")
        assert type(compiled(x)) is Tagged


def test_rank_warnings_point_at_the_callers_line_through_modes_subclasses_and_modules():
    class Tagged(torch.Tensor):
        pass

    x = torch.ones(2, 3, 4)
    calls = [
        lambda: F.dropout2d(x, 0.5),
        lambda: F.dropout2d(x.as_subclass(Tagged), 0.5),
        lambda: dnn.Dropout2d(0.5)(x),
    ]
    for call in calls:
        with pytest.warns(UserWarning, match="3D input to dropout2d") as record:
            call()
        assert record[0].filename == __file__
    with pytest.warns(UserWarning, match="3D input to dropout2d") as record, torch.device("cpu"):  # a mode
        F.dropout2d(x, 0.5)
    assert record[0].filename == __file__
