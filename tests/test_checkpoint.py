"""torch.utils.checkpoint: recomputation draws the masks of the original forward, whatever preserve_rng_state says.

A dropkit op's mask is a pure function of its seed; the seed an op drew in a checkpointed forward is put on a
tape and replayed when checkpointing recomputes the region, so gradients are bit-identical to a run without
checkpointing with ``preserve_rng_state`` True or False, reentrant or not. torch's own dropout relies on the
RNG state being restored and gives wrong gradients with ``preserve_rng_state=False``.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import dropkit.nn as dnn
from dropkit import functional as F


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
