"""Shard-invariant dropout across processes: a data- and tensor-parallel MLP that equals the single-process run.

Launch with torchrun (CPU, gloo backend), e.g. two processes as one tensor-parallel pair::

    torchrun --nproc_per_node 2 examples/distributed_dropout.py --tp 2
    torchrun --nproc_per_node 4 examples/distributed_dropout.py --tp 2   # 2 data-parallel x 2 tensor-parallel

Every rank seeds torch alike. Inside ``dropkit.rng.shard(...)`` a rank holding a slice of a tensor draws
exactly that slice of the unsharded tensor's mask, so the hidden activations (split over the tensor-parallel
group along the feature dimension) and the batch (split over data-parallel ranks) get the masks one process
would draw for the whole batch. Rank 0 then recomputes the whole step in one process and checks that outputs
and gradients agree bit for bit (integer data and weights with p = 0.5 keep every sum exact).
``--parallel-rng`` shows the other contract: ``rng.parallel`` gives each data-parallel rank its own masks
(no longer equal to the single-process run) while tensor-parallel peers still agree.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

import dropkit.nn as dnn
from dropkit import rng

HIDDEN, FFN, ROWS = 8, 16, 4  # rows per data-parallel rank


class _AllReduce(torch.autograd.Function):
    """Sum partial products over the tensor-parallel group; the gradient passes through."""

    @staticmethod
    def forward(ctx, x, group):  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad, None


def _integers(*shape: int, seed: int) -> torch.Tensor:
    return torch.randint(-2, 3, shape, generator=torch.Generator().manual_seed(seed)).float()


def step(x, w1, w2, drop1, drop2, *, tp_rank=0, tp=1, dp_rank=0, dp=1, group=None):
    """One forward/backward of ``drop2(w2 · drop1(w1 · x))`` on this rank's shard; returns output and grads."""
    cols = slice(tp_rank * FFN // tp, (tp_rank + 1) * FFN // tp)
    w1 = w1[cols].clone().requires_grad_(True)  # column parallel
    w2 = w2[:, cols].clone().requires_grad_(True)  # row parallel
    with rng.shard(dim=0, start=dp_rank * x.shape[0], size=dp * x.shape[0]):  # this rank's batch rows
        with rng.shard(dim=1, start=cols.start, size=FFN):  # this rank's hidden units
            h = drop1(x @ w1.t())
        y = h @ w2.t()
        if group is not None:
            y = _AllReduce.apply(y, group)
        y = drop2(y)  # replicated over the tensor-parallel group: the same rows' mask on each peer
    y.pow(2).sum().backward()
    return y.detach(), w1.grad, w2.grad, cols


def main() -> None:
    """Run one sharded step on this rank; rank 0 compares with the whole step computed in one process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tp", type=int, default=2, help="tensor-parallel size (divides the world size)")
    parser.add_argument("--parallel-rng", action="store_true", help="per data-parallel rank masks (rng.parallel)")
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tp = args.tp
    if world % tp:
        raise SystemExit(f"--tp {tp} must divide the world size {world}")
    dp, tp_rank, dp_rank = world // tp, rank % tp, rank // tp
    groups = [dist.new_group(list(range(d * tp, (d + 1) * tp))) for d in range(dp)]
    group = groups[dp_rank]

    x = _integers(dp * ROWS, HIDDEN, seed=1)
    w1, w2 = _integers(FFN, HIDDEN, seed=2), _integers(HIDDEN, FFN, seed=3)
    drop1, drop2 = dnn.Dropout(0.5), dnn.Dropout(0.5)
    rows = slice(dp_rank * ROWS, (dp_rank + 1) * ROWS)

    torch.manual_seed(1234)  # every rank alike
    if args.parallel_rng:
        with rng.parallel(data_parallel_rank=dp_rank):
            y, g1, g2, cols = step(x[rows], w1, w2, drop1, drop2, tp_rank=tp_rank, tp=tp, group=group)
    else:
        y, g1, g2, cols = step(x[rows], w1, w2, drop1, drop2, tp_rank=tp_rank, tp=tp, dp_rank=dp_rank, dp=dp,
                               group=group)  # fmt: skip

    outputs = [torch.empty_like(y) for _ in range(world)]
    dist.all_gather(outputs, y)
    if rank == 0:
        torch.manual_seed(1234)
        y_ref, g1_ref, g2_ref, _ = step(x, w1, w2, drop1, drop2)
        same = all(torch.equal(outputs[d * tp], y_ref[d * ROWS : (d + 1) * ROWS]) for d in range(dp))
        peers = all(torch.equal(outputs[r], outputs[r - r % tp]) for r in range(world))
        print(f"world={world} dp={dp} tp={tp} parallel_rng={args.parallel_rng}")
        print(f"tensor-parallel peers draw the same output masks: {peers}")
        print(f"sharded outputs equal the single-process run bit for bit: {same}")
        if not args.parallel_rng and dp == 1:
            print(f"rank 0 weight gradients equal the single-process slices: "
                  f"{torch.equal(g1, g1_ref[cols]) and torch.equal(g2, g2_ref[:, cols])}")  # fmt: skip
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
