"""torch.compile and torch.export: dropkit graphs compile with fullgraph=True and draw the eager masks bit for bit.

Compiled and eager runs draw the same seeds from torch's generator (``dropkit::draw_seed``) and run the
same kernels (``dropkit::masked_affine_host``), so every output and gradient that is a mask times the input
is bit-identical; where a module adds float arithmetic of its own (LayerNorm, the Concrete relaxation, the
batch reductions of parameter gradients) Inductor may round differently: there the masks are compared
exactly and the values to 1e-6.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dropkit.nn as dnn
from dropkit import functional as F
from dropkit import rng


def _run(model: nn.Module, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(seed)
    x = x.detach().clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    y = model(x)
    (y * torch.linspace(-1.0, 1.0, y.numel()).reshape(y.shape)).sum().backward()
    return y.detach(), x.grad, [p.grad for p in model.parameters()]


def _compare_exact(model: nn.Module, x: torch.Tensor, seeds=(0, 1)) -> None:
    compiled = torch.compile(model, fullgraph=True)
    for seed in seeds:  # a second seed: the graph holds no baked-in seed
        ye, gxe, gpe = _run(model, x, seed)
        yc, gxc, gpc = _run(compiled, x, seed)
        assert torch.equal(ye, yc)
        assert torch.equal(gxe, gxc)
        for a, b in zip(gpe, gpc, strict=True):  # weight/bias grads are reductions Inductor may reorder
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_elementwise_family_compiles_bit_exact():
    model = nn.Sequential(
        nn.Linear(16, 32),
        dnn.Dropout(0.3),
        nn.Linear(32, 32),
        dnn.AlphaDropout(0.2),
        dnn.GaussianDropout(0.25),
        dnn.GaussianNoise(0.1),
        dnn.DropConnectLinear(32, 32, p=0.4),
        dnn.Dropout(0.5, mode="classic"),
        dnn.DropConnect(nn.Linear(32, 8), p=0.2),
    ).train()
    _compare_exact(model, torch.randn(6, 16))


def test_channel_family_compiles_bit_exact():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.d1, self.d2, self.d3 = dnn.Dropout1d(0.3), dnn.Dropout2d(0.3), dnn.Dropout3d(0.3)
            self.fa = dnn.FeatureAlphaDropout(0.2)
            self.conv = dnn.DropConnectConv1d(4, 4, 3, padding=1, p=0.3)

        def forward(self, x):  # x: (N, C, D, H, W)
            y = self.d3(x)
            y = self.d2(y.flatten(3))
            y = self.fa(y)
            y = self.d1(y.flatten(2))
            return self.conv(y)

    _compare_exact(Net().train(), torch.randn(2, 4, 2, 3, 3))


def test_inplace_and_functional_ops_compile_bit_exact():
    def f(x):
        a = F.dropout(x * 1.0, 0.4, inplace=True)
        b = F.dropout(x, 0.4, seed=123)
        c = F.alpha_dropout(x, 0.3, training=True, seed=2**64 - 1)  # a seed above 2^63
        d = F.gaussian_dropout(x * 1.0, 0.3, inplace=True, seed=5)  # was: "mark_dirty input not returned"
        return a + b + c + d

    x = torch.randn(7, 9, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True)
    torch.manual_seed(4)
    ye = f(x)
    (ge,) = torch.autograd.grad(ye.sum(), x)
    torch.manual_seed(4)
    yc = compiled(x)
    (gc,) = torch.autograd.grad(yc.sum(), x)
    assert torch.equal(ye, yc) and torch.equal(ge, gc)


def test_inplace_call_whose_result_is_discarded_compiles_with_eager_gradients():
    """``F.dropout(h, p, inplace=True)`` used for its effect on ``h`` (torch 2.11's dynamo lost the mask here)."""

    def f(x):
        h = x * 1.0
        F.dropout(h, 0.5, inplace=True, seed=3)
        F.gaussian_dropout(h, 0.2, inplace=True, seed=4)
        return h

    x = torch.randn(16, requires_grad=True)
    ye = f(x)
    (ge,) = torch.autograd.grad(ye.sum(), x)
    yc = torch.compile(f, fullgraph=True)(x)
    (gc,) = torch.autograd.grad(yc.sum(), x)
    assert torch.equal(ye, yc)
    torch.testing.assert_close(gc, ge)


def test_two_draws_in_one_graph_stay_distinct():
    # two identical calls must not be merged by common-subexpression elimination
    compiled = torch.compile(lambda x: torch.stack((F.dropout(x, 0.5), F.dropout(x, 0.5))), fullgraph=True)
    torch.manual_seed(0)
    y = compiled(torch.ones(4096))
    assert not torch.equal(y[0], y[1])
    torch.manual_seed(0)
    assert torch.equal(y, torch.stack((F.dropout(torch.ones(4096), 0.5), F.dropout(torch.ones(4096), 0.5))))


def test_module_generator_draws_same_seeds_compiled():
    layer = dnn.Dropout(0.5, seed=7)
    x = torch.ones(64)
    eager = [layer(x) for _ in range(3)]
    layer.generator.manual_seed(7)
    compiled = torch.compile(layer, fullgraph=True)
    for expected in eager:
        assert torch.equal(compiled(x), expected)


def test_caller_generator_compiles_and_advances():
    # a generator dropkit did not make is registered while dynamo traces (torch >= 2.13; see the robustness page)
    gen = torch.Generator().manual_seed(5)
    x = torch.ones(64)
    eager = [F.dropout(x, 0.5, generator=gen) for _ in range(3)]
    gen.manual_seed(5)
    compiled = torch.compile(lambda t: F.dropout(t, 0.5, generator=gen), fullgraph=True)
    for expected in eager:
        assert torch.equal(compiled(x), expected)


def test_module_generator_is_registered_while_its_module_lives():
    import gc

    layer = dnn.Dropout(0.5, seed=1)
    key = id(layer.generator)
    assert rng._module_generators[key] is layer.generator  # compiled code finds it by id, no traced call
    del layer
    gc.collect()
    assert key not in rng._module_generators


def test_device_generator_compiles_and_advances():
    gen = rng.DeviceGenerator(seed=11, device="cpu")
    x = torch.ones(3000)
    eager = [F.dropout(x, 0.5, generator=gen) for _ in range(2)]
    gen.manual_seed(11)
    compiled = torch.compile(lambda t: F.dropout(t, 0.5, generator=gen), fullgraph=True)
    assert torch.equal(compiled(x), eager[0])
    assert torch.equal(compiled(x), eager[1])
    assert gen.state.tolist() == [11, 2 * 3072]


def test_fused_norm_compiles_masks_exact_values_close():
    layer = dnn.DropoutAddLayerNorm(16, prenorm=True, p=0.3).train()
    x, residual = torch.randn(5, 16), torch.randn(5, 16)
    compiled = torch.compile(layer, fullgraph=True)
    torch.manual_seed(9)
    ye, he = layer(x, residual)
    torch.manual_seed(9)
    yc, hc = compiled(x, residual)
    assert torch.equal(he, hc)  # h = dropout(x) + residual: the mask, bit for bit
    torch.testing.assert_close(yc, ye, rtol=1e-6, atol=1e-6)


def test_concrete_dropout_compiles_close():
    layer = dnn.ConcreteDropout(nn.Linear(8, 3)).train()
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.randn(4, 8)
    torch.manual_seed(2)
    ye = layer(x)
    torch.manual_seed(2)
    yc = compiled(x)
    torch.testing.assert_close(yc, ye, rtol=1e-6, atol=1e-6)


def test_shard_context_compiles_bit_exact():
    x = torch.randn(4, 12)
    full = F.dropout(x, 0.5, seed=5)

    def f(t):
        with rng.shard(dim=1, start=4, size=12):
            return F.dropout(t, 0.5, seed=5)

    assert torch.equal(torch.compile(f, fullgraph=True)(x[:, 4:8]), full[:, 4:8])


def _block() -> nn.Module:
    return nn.Sequential(
        nn.Linear(8, 16),
        dnn.Dropout(0.5),
        nn.ReLU(),
        dnn.AlphaDropout(0.2),
        dnn.Dropout2d(0.3),
        dnn.GaussianDropout(0.2),
        dnn.DropConnectLinear(16, 4, p=0.3),
    )


def test_export_eval_model_drops_dropout():
    model = _block().eval()
    x = torch.randn(3, 8)
    program = torch.export.export(model, (x,))
    targets = " ".join(str(node.target) for node in program.graph.nodes)
    assert "dropkit" not in targets and "dropout" not in targets and "randint" not in targets
    assert torch.equal(program.module()(x), model(x))


def test_export_training_graph_holds_dropkit_ops():
    # the op is visible to export (one node per draw and per kernel), so a training graph can be exported too
    program = torch.export.export(_block()[:2].train(), (torch.randn(3, 8),))
    targets = [str(node.target) for node in program.graph.nodes]
    assert "dropkit.draw_seed.default" in targets and "dropkit.masked_affine_host.default" in targets


_COLD_EXPORT = """
import torch
from torch import nn
import dropkit.nn as dnn

model = nn.Sequential(dnn.Dropout(0.5), dnn.Dropout2d(0.3), dnn.DropPath(0.3), dnn.StochasticDepth(0.3, "row"),
                      dnn.DropBlock2d(0.2, 3), dnn.AlphaDropout(0.2), dnn.GaussianDropout(0.2)).train()
x = torch.ones(8, 4, 6, 6)
run = torch.export.export(model, (x,)).module()  # the first dropkit call of the process happens while tracing
a, b = run(x), run(x)
assert a.shape == x.shape and not torch.equal(a, b)
print("ok")
"""


def test_export_of_a_training_model_in_a_fresh_process():
    # loading the CPU kernels inside torch.export's non-strict tracing failed (its patches of the math module broke
    # numba's first load); traced code now leaves them to the custom op, which loads them when the program runs
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _COLD_EXPORT], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_compile_edge_probabilities(p):
    compiled = torch.compile(lambda x: F.dropout(x, p), fullgraph=True)
    x = torch.randn(10, requires_grad=True)
    y = compiled(x)
    assert torch.equal(y, x if p == 0.0 else torch.zeros(10))


def test_changing_p_recompiles_nothing_and_matches_eager():
    # a dropout schedule changes p between steps: dynamo makes p symbolic, the op derives the threshold at run time
    layer = dnn.Dropout(0.1)
    compiled = torch.compile(layer, fullgraph=True)
    x = torch.ones(2048)
    for p in (0.1, 0.25, 0.6, 0.9):
        layer.p = p
        torch.manual_seed(1)
        expected = layer(x)
        torch.manual_seed(1)
        assert torch.equal(compiled(x), expected)


def test_onnx_export_of_an_eval_model_drops_dropout(tmp_path):
    """The dynamo ONNX exporter on an eval model: no dropout (or dropkit) node, same outputs (onnx's evaluator)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.ReLU(),
        dnn.Dropout2d(0.3),
        dnn.DropBlock2d(0.2, 3),
        torch.nn.Flatten(),
        dnn.Dropout(0.5),
        dnn.DropPath(0.1),
        torch.nn.Linear(8 * 6 * 6, 4),
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True)
    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert not {op for op in ops if "ropout" in op or "dropkit" in op.lower()}, ops
    (out,) = ReferenceEvaluator(onnx.load(str(path))).run(None, {graph.input[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), model(x), rtol=1e-5, atol=1e-5)


def test_compiling_a_dropkit_model_warns_nothing():
    """dynamo warns on calls to functools-cached functions and refuses importlib: the dispatch uses neither."""
    import warnings

    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(8, 8), dnn.Dropout(0.3), dnn.AlphaDropout(0.2), nn.Linear(8, 2)).train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.compile(model, fullgraph=True)(torch.randn(4, 8)).sum().backward()
    assert [str(w.message) for w in caught if "dropkit" in str(w.message) or "cache" in str(w.message)] == []


def test_drop_block_compiles_fullgraph_with_the_eager_blocks():
    """Its seed rate and mask shapes are built from lists: dynamo refuses generator expressions as arguments.

    The blocks are the eager ones exactly; the renormalisation (numel / kept) may round differently.
    """
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), dnn.DropBlock2d(0.3, 3)).train()
    for dynamic in (False, True):  # dynamic shapes: the seed rate is symbolic
        _compare_blocks(model, torch.compile(model, fullgraph=True, dynamic=dynamic))


def _compare_blocks(model: nn.Module, compiled) -> None:
    for seed, x in ((0, torch.randn(2, 3, 8, 8)), (1, torch.randn(3, 3, 9, 7))):
        torch.manual_seed(seed)
        eager = model(x)
        torch.manual_seed(seed)
        got = compiled(x)
        assert torch.equal(got == 0, eager == 0)
        torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)
