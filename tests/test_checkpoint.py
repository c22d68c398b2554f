"""torch.utils.checkpoint: recomputation draws the masks of the original forward, whatever preserve_rng_state says.

A dropkit op's mask is a pure function of its seed; the seed an op drew in a checkpointed forward is put on a
tape and replayed when checkpointing recomputes the region, so gradients are bit-identical to a run without
checkpointing with ``preserve_rng_state`` True or False, reentrant or not. torch's own dropout relies on the
RNG state being restored and gives wrong gradients with ``preserve_rng_state=False``.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import dropkit.nn as dnn
from dropkit import functional as F
from dropkit import rng as dkrng
from dropkit.consistent import frozen_masks


class Block(nn.Module):
    """Linear layers save the dropout outputs for backward: a recomputed mask that differs shows in the grads."""

    def __init__(self, dropout: type[nn.Module]) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(12, 24), nn.Linear(24, 24), nn.Linear(24, 6)
        self.d1, self.d2 = dropout(0.4), dropout(0.3)

    def forward(self, x):
        return self.fc3(self.d2(torch.tanh(self.fc2(self.d1(torch.tanh(self.fc1(x)))))))


def _grads(block: nn.Module, x: torch.Tensor, run) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(123)
    block.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    y = run(block, x)
    torch.randn(100)  # something else draws from the generator between forward and backward
    (y * torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
    return x.grad, [p.grad.clone() for p in block.parameters()]


def _plain(block, x):
    return block(x)


def _checkpointed(reentrant: bool, preserve: bool):
    def run(block, x):
        return checkpoint(block, x, use_reentrant=reentrant, preserve_rng_state=preserve)

    return run


def _equal(a, b) -> bool:
    return torch.equal(a[0], b[0]) and all(torch.equal(u, v) for u, v in zip(a[1], b[1], strict=True))


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("preserve", [True, False])
def test_dropkit_checkpoint_gradients_bit_identical(reentrant, preserve):
    torch.manual_seed(0)
    block, x = Block(dnn.Dropout), torch.randn(8, 12)
    assert _equal(_grads(block, x, _plain), _grads(block, x, _checkpointed(reentrant, preserve)))


@pytest.mark.parametrize("reentrant", [False, True])
def test_torch_dropout_is_wrong_without_preserved_rng_state(reentrant):
    torch.manual_seed(0)
    block, x = Block(nn.Dropout), torch.randn(8, 12)
    reference = _grads(block, x, _plain)
    assert _equal(reference, _grads(block, x, _checkpointed(reentrant, True)))
    assert not _equal(reference, _grads(block, x, _checkpointed(reentrant, False)))  # silently wrong gradients


def test_generator_position_after_checkpointed_step_matches_plain():
    # the replay draws nothing: the next step's masks are those of a run without checkpointing
    torch.manual_seed(0)
    block, x = Block(dnn.Dropout), torch.randn(8, 12)
    _grads(block, x, _plain)
    after_plain = torch.rand(3)
    _grads(block, x, _checkpointed(False, False))
    assert torch.equal(torch.rand(3), after_plain)


def test_nested_functional_ops_in_checkpoint():
    def region(x):
        h = F.dropout(x, 0.5)
        h = F.dropout2d(h.reshape(2, 4, 3, 3), 0.3).reshape(2, -1)
        return F.gaussian_dropout(h * h, 0.2)

    x0 = torch.randn(2, 36)

    def grads(run):
        torch.manual_seed(5)
        x = x0.clone().requires_grad_(True)
        run(x).pow(2).sum().backward()
        return x.grad

    plain = grads(region)
    assert torch.equal(plain, grads(lambda x: checkpoint(region, x, use_reentrant=False, preserve_rng_state=False)))
    assert torch.equal(plain, grads(lambda x: checkpoint(region, x, use_reentrant=True, preserve_rng_state=False)))


def test_retain_graph_two_backwards_replay_twice():
    torch.manual_seed(0)
    block = Block(dnn.Dropout)
    x = torch.randn(4, 12, requires_grad=True)
    torch.manual_seed(1)
    y = checkpoint(block, x, use_reentrant=False, preserve_rng_state=False).sum()
    (g1,) = torch.autograd.grad(y, x, retain_graph=True)
    (g2,) = torch.autograd.grad(y, x)
    torch.manual_seed(1)
    (g0,) = torch.autograd.grad(block(x).sum(), x)
    assert torch.equal(g1, g0) and torch.equal(g2, g0)


def test_selective_activation_checkpointing_under_compile():
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op is torch.ops.aten.mm.default else CheckpointPolicy.PREFER_RECOMPUTE

    torch.manual_seed(0)
    block, x = Block(dnn.Dropout), torch.randn(8, 12)

    context_fn = functools.partial(create_selective_checkpoint_contexts, policy)  # the form dynamo traces

    def sac(module, inp):
        return checkpoint(module, inp, use_reentrant=False, context_fn=context_fn)

    compiled = torch.compile(sac, fullgraph=True)
    eager = _grads(block, x, _plain)
    got = _grads(block, x, compiled)
    # Inductor fuses and recomputes tanh/matmul with its own rounding: values agree to float32 rounding; a
    # different mask would change gradients by O(1) (scale 1/(1-p) on kept units, 0 on dropped ones)
    for a, b in zip([eager[0], *eager[1]], [got[0], *got[1]], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


class Nested(nn.Module):
    """A checkpointed block inside a checkpointed region, with a draw before it: the outer recomputation reruns the
    inner checkpoint call, which must get the forward's masks as well."""

    def __init__(self, reentrant: bool, preserve: bool) -> None:
        super().__init__()
        self.inner, self.drop = Block(dnn.Dropout), dnn.Dropout(0.5)
        self.kwargs = {"use_reentrant": reentrant, "preserve_rng_state": preserve}
        self.checkpointed = True

    def forward(self, x):
        h = self.drop(x)
        h = checkpoint(self.inner, h, **self.kwargs) if self.checkpointed else self.inner(h)
        return h.sin()  # saves the inner region's output


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("preserve", [True, False])
def test_nested_checkpoints_replay_the_forwards_masks(reentrant, preserve):
    torch.manual_seed(0)
    model, x = Nested(reentrant, preserve), torch.randn(8, 12)
    model.checkpointed = False
    plain = _grads(model, x, _plain)
    model.checkpointed = True
    assert _equal(plain, _grads(model, x, _checkpointed(reentrant, preserve)))


@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("context", ["parallel", "shard"])
def test_recomputation_after_the_rank_or_shard_block_closed(reentrant, context):
    # the usual training step: forward inside the block, backward after it; the recomputation must use the rank
    # mixing and shard of the forward, not the (closed) blocks at backward time
    def open_block():
        return dkrng.parallel(data_parallel_rank=1) if context == "parallel" else dkrng.shard(0, 4, 8)

    def grads(checkpointed):
        torch.manual_seed(0)
        block, x = Block(dnn.Dropout), torch.randn(4, 12, requires_grad=True)
        with open_block():
            y = checkpoint(block, x, use_reentrant=reentrant, preserve_rng_state=False) if checkpointed else block(x)
        (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
        return x.grad

    assert torch.equal(grads(False), grads(True))


@pytest.mark.parametrize("reentrant", [False, True])
def test_frozen_masks_of_a_block_checkpointed_twice(reentrant):
    # one block applied twice (weight sharing): its two calls are two sites with two masks, also when recomputed
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Tanh())
            self.checkpointed = True

        def forward(self, x):
            for _ in range(2):
                x = checkpoint(self.block, x, use_reentrant=reentrant) if self.checkpointed else self.block(x)
            return x

    torch.manual_seed(0)
    model, x0 = Shared(), torch.randn(4, 8)

    def grads():
        x = x0.clone().requires_grad_(True)
        with frozen_masks(model, seed=3):
            model(x).sin().sum().backward()
        return x.grad

    model.checkpointed = False
    plain = grads()
    model.checkpointed = True
    assert torch.equal(plain, grads())


def test_device_generator_draws_replay_and_mix_the_rank():
    x0 = torch.randn(4, 64)

    def grads(checkpointed, rank=None):
        gen = dkrng.DeviceGenerator(4, device="cpu")
        x = x0.clone().requires_grad_(True)
        f = lambda t: F.dropout(t, 0.5, generator=gen).sin()  # noqa: E731
        with dkrng.parallel(rank) if rank is not None else contextlib.nullcontext():
            y = checkpoint(f, x, use_reentrant=False) if checkpointed else f(x)
        y.sum().backward()
        return x.grad

    assert torch.equal(grads(False), grads(True))  # the recomputation replays the forward's state
    assert torch.equal(grads(False, 1), grads(True, 1))
    # data-parallel ranks draw different masks from one DeviceGenerator seed, as from a torch.Generator
    assert not torch.equal(grads(False, 0), grads(False, 1))
    assert torch.equal(grads(False, 0), grads(False, 0))


def test_saved_tensor_hooks_inside_the_region_do_not_hide_it():
    # save_on_cpu pushes its own hooks over the region's; the draws are still recorded and replayed
    def grads(checkpointed):
        torch.manual_seed(0)
        x = torch.randn(4, 64, requires_grad=True)

        def f(t):
            with torch.autograd.graph.save_on_cpu():
                return F.dropout(t, 0.5).sin()

        y = checkpoint(f, x, use_reentrant=False, preserve_rng_state=False) if checkpointed else f(x)
        torch.randn(10)
        y.sum().backward()
        return x.grad

    assert torch.equal(grads(False), grads(True))


def test_module_checkpoint_of_torch_distributed_replays():
    # torch.distributed's checkpoint(module) (FSDP2's) opens the region from forward hooks: no checkpoint() frame
    from torch.distributed._composable import checkpoint as checkpoint_module

    def grad(checkpointed, preserve):
        torch.manual_seed(0)
        model = nn.Sequential(dnn.Dropout(0.5), nn.Linear(16, 16), dnn.Dropout(0.5, seed=3), nn.Linear(16, 16))
        if checkpointed:
            checkpoint_module(model, preserve_rng_state=preserve)
        x = torch.randn(8, 16, requires_grad=True)
        model(x).sum().backward()
        return model[1].weight.grad, model[3].weight.grad

    for preserve in (True, False):
        assert all(torch.equal(a, b) for a, b in zip(grad(False, preserve), grad(True, preserve), strict=True))


@pytest.mark.parametrize("reentrant", [False, True])
def test_torch_random_ops_after_a_dropkit_draw_in_the_region(reentrant):
    # with preserve_rng_state=True torch's own random ops in the region (attention dropout, F.dropout) recompute
    # from the forward's state: a replayed dropkit draw still advances the restored generator as the forward did
    x0 = torch.randn(4, 8, 16)

    def body(z):
        h = F.dropout(z, 0.5)
        h = torch.nn.functional.scaled_dot_product_attention(h, h, h, dropout_p=0.3)
        return torch.nn.functional.dropout(h, 0.2).sin()

    def run(checkpointed):
        torch.manual_seed(0)
        x = x0.clone().requires_grad_(True)
        y = checkpoint(body, x, use_reentrant=reentrant) if checkpointed else body(x)
        torch.randn(3)
        y.sum().backward()
        return x.grad, torch.rand(2)  # and the generator where the plain run leaves it

    plain, checkpointed = run(False), run(True)
    assert torch.equal(plain[0], checkpointed[0]) and torch.equal(plain[1], checkpointed[1])


def test_reentrant_region_recomputed_by_every_backward_of_a_retained_graph():
    torch.manual_seed(0)
    block, x = Block(dnn.Dropout), torch.randn(4, 12, requires_grad=True)
    torch.manual_seed(1)
    y = checkpoint(block, x, use_reentrant=True, preserve_rng_state=False).sum()
    grads = []
    for _ in range(3):
        x.grad = None
        y.backward(retain_graph=True)
        grads.append(x.grad)
    torch.manual_seed(1)
    (expected,) = torch.autograd.grad(block(x).sum(), x)
    assert all(torch.equal(g, expected) for g in grads)
