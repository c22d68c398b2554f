"""Distributed masks: shard-invariant (rng.shard), per data-parallel rank (rng.parallel), on torch's gloo backend.

Weights and inputs are small integers and p = 0.5 (scale 2), so every sum is exact in float32 and a sharded
run can be compared with the single-process run bit for bit, reductions across ranks included: a single
mask element that differs changes the result.
"""

from __future__ import annotations

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import dropkit.nn as dnn
from dropkit import _validate, rng
from dropkit import functional as F

WORLD = 2
BATCH, HIDDEN, FFN = 6, 8, 16


# --- single process: the shard mechanism -----------------------------------------------------------------------


@pytest.mark.parametrize("dim", [0, 1, 2, -1])
@pytest.mark.parametrize("backend_name", ["numba", "reference"])
def test_shard_draws_slice_of_global_mask(dim, backend_name):
    from dropkit import kernels

    x = torch.randn(4, 6, 10)
    with kernels.use_backend(backend_name):
        full = F.dropout(x, 0.5, seed=42)
        size = x.shape[dim]
        for start, stop in ((0, size // 2), (size // 2, size), (1, size - 1)):
            part = x.narrow(dim, start, stop - start)
            with rng.shard(dim=dim, start=start, size=size):
                got = F.dropout(part, 0.5, seed=42)
            assert torch.equal(got, full.narrow(dim, start, stop - start))


def test_shard_of_channel_masks_and_alpha_dropout():
    x = torch.randn(4, 6, 5, 5)
    full2d = F.dropout2d(x, 0.5, seed=1)
    with rng.shard(dim=1, start=2, size=6):
        assert torch.equal(F.dropout2d(x[:, 2:5], 0.5, seed=1), full2d[:, 2:5])
    with rng.shard(dim=2, start=1, size=5):  # a dimension the channel mask broadcasts over
        assert torch.equal(F.dropout2d(x[:, :, 1:3], 0.5, seed=1), full2d[:, :, 1:3])
    full_alpha = F.alpha_dropout(x, 0.3, training=True, seed=9)
    with rng.shard(dim=-1, start=3, size=5):
        assert torch.equal(F.alpha_dropout(x[..., 3:], 0.3, training=True, seed=9), full_alpha[..., 3:])


def test_shard_backward_uses_the_shard_mask():
    x = torch.randn(3, 8, requires_grad=True)
    F.dropout(x, 0.5, seed=4).sum().backward()
    part = x.detach()[:, 4:].clone().requires_grad_(True)
    with rng.shard(dim=1, start=4, size=8):
        y = F.dropout(part, 0.5, seed=4)
    y.sum().backward()  # backward runs outside the block: the shard is saved with the op
    assert torch.equal(part.grad, x.grad[:, 4:])


def test_shard_with_drawn_seeds_and_device_generator():
    x = torch.randn(2, 2048)
    torch.manual_seed(0)
    full = F.dropout(x, 0.5)
    torch.manual_seed(0)
    with rng.shard(dim=1, start=1024, size=2048):
        assert torch.equal(F.dropout(x[:, 1024:], 0.5), full[:, 1024:])
    gen = rng.DeviceGenerator(seed=3, device="cpu")
    full = F.dropout(x, 0.5, generator=gen)
    gen.manual_seed(3)
    with rng.shard(dim=0, start=1, size=2):
        assert torch.equal(F.dropout(x[1:], 0.5, generator=gen), full[1:])
    assert gen.state.tolist() == [3, 4096]  # advanced past the global mask, as the unsharded call does


def test_shard_errors():
    with pytest.raises(TypeError, match=r"shard: dim must be an int, but got 1\.0"):
        with rng.shard(dim=1.0, start=0, size=4):
            pass
    with pytest.raises(ValueError, match=r"shard: start must be an int >= 0, but got -1"):
        with rng.shard(dim=0, start=-1, size=4):
            pass
    with pytest.raises(ValueError, match=r"shard: size must be an int >= 1, but got 0"):
        with rng.shard(dim=0, start=0, size=0):
            pass
    with rng.shard(dim=1, start=3, size=4):
        with pytest.raises(_validate.ShapeError, match=r"must lie in \[0, size\) along dim 1.*start=3, n=2, size=4"):
            F.dropout(torch.ones(2, 2), 0.5, seed=0)
    with rng.shard(dim=2, start=0, size=4):
        with pytest.raises(_validate.ShapeError, match=r"shard dim must be in \[-2, 1\] for a 2-D input, but got 2"):
            F.dropout(torch.ones(2, 2), 0.5, seed=0)


def test_parallel_mixes_drawn_seeds_by_rank_only():
    x = torch.ones(4096)
    masks = []
    for rank in (0, 1, 0):
        torch.manual_seed(0)
        with rng.parallel(data_parallel_rank=rank):
            masks.append(F.dropout(x, 0.5))
    assert torch.equal(masks[0], masks[2]) and not torch.equal(masks[0], masks[1])
    outside = F.dropout(x, 0.5, seed=5)
    with rng.parallel(data_parallel_rank=1):  # an explicit seed is left as given
        assert torch.equal(F.dropout(x, 0.5, seed=5), outside)
    with pytest.raises(ValueError, match=r"parallel: data_parallel_rank must be an int >= 0, but got -1"):
        with rng.parallel(data_parallel_rank=-1):
            pass


def test_parallel_rank_mixing_statistics():
    # masks of two ranks are independent: agreement rate of two p=0.5 masks ~ Binomial(n, 0.5)
    n = 1 << 16
    keep = []
    for rank in (0, 1):
        torch.manual_seed(0)
        with rng.parallel(data_parallel_rank=rank):
            keep.append(F.dropout(torch.ones(n), 0.5) != 0)
    agree = (keep[0] == keep[1]).float().mean().item()
    assert abs(agree - 0.5) < 4.5 * 0.5 / n**0.5  # 4.5 sigma


# --- two processes on gloo -----------------------------------------------------------------------------------


def _integers(*shape: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(-2, 3, shape, generator=generator).float()


class MLP(nn.Module):
    def __init__(self, hidden: int, ffn: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, ffn, bias=False)
        self.drop1 = dnn.Dropout(0.5)
        self.fc2 = nn.Linear(ffn, hidden, bias=False)
        self.drop2 = dnn.Dropout(0.5)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.fc1(x))))


def _model() -> MLP:
    g = torch.Generator().manual_seed(1)
    model = MLP(HIDDEN, FFN)
    with torch.no_grad():
        model.fc1.weight.copy_(_integers(FFN, HIDDEN, generator=g))
        model.fc2.weight.copy_(_integers(HIDDEN, FFN, generator=g))
    return model


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return _integers(BATCH * WORLD, HIDDEN, generator=g), _integers(BATCH * WORLD, HIDDEN, generator=g)


def _single_process() -> dict[str, torch.Tensor]:
    model, (x, w) = _model(), _data()
    torch.manual_seed(7)
    y = model(x)
    (y * w).sum().backward()
    return {"y": y.detach(), "fc1": model.fc1.weight.grad, "fc2": model.fc2.weight.grad}


def _init(rank: int, path: str) -> None:
    timeout = datetime.timedelta(seconds=120)  # fail, do not hang, if a peer dies
    dist.init_process_group("gloo", init_method=f"file://{path}/init", rank=rank, world_size=WORLD, timeout=timeout)


def _ddp_worker(rank: int, path: str) -> None:
    _init(rank, path)
    try:
        model = nn.parallel.DistributedDataParallel(_model())
        x, w = _data()
        rows = slice(rank * BATCH, (rank + 1) * BATCH)
        torch.manual_seed(7)  # every rank alike: the batch shard takes its rows of the global mask
        with rng.shard(dim=0, start=rank * BATCH, size=WORLD * BATCH):
            y = model(x[rows])
        (y * w[rows]).sum().mul(WORLD).backward()  # DDP averages: x WORLD gives the global sum
        torch.save(
            {"y": y.detach(), "fc1": model.module.fc1.weight.grad, "fc2": model.module.fc2.weight.grad},
            f"{path}/ddp{rank}.pt",
        )
    finally:
        dist.barrier()  # no destroy_process_group: gloo's destructor was seen to deadlock on the GIL; exit instead


def _tp_worker(rank: int, path: str) -> None:
    _init(rank, path)
    try:
        full = _model()
        x, w = _data()
        cols = slice(rank * FFN // WORLD, (rank + 1) * FFN // WORLD)
        fc1 = full.fc1.weight[cols].detach().clone().requires_grad_(True)  # column parallel
        fc2 = full.fc2.weight[:, cols].detach().clone().requires_grad_(True)  # row parallel
        torch.manual_seed(7)  # the tensor-parallel group draws the same seeds
        h = x @ fc1.t()
        with rng.shard(dim=-1, start=cols.start, size=FFN):  # each rank holds a slice of the hidden units
            h = full.drop1(h)
        partial = h @ fc2.t()
        y = _AllReduce.apply(partial)
        y = full.drop2(y)  # replicated activation: the same mask on every rank
        (y * w).sum().backward()
        torch.save(
            {"y": y.detach(), "fc1": fc1.grad, "fc2": fc2.grad, "cols": (cols.start, cols.stop)}, f"{path}/tp{rank}.pt"
        )
    finally:
        dist.barrier()  # no destroy_process_group: gloo's destructor was seen to deadlock on the GIL; exit instead


class _AllReduce(torch.autograd.Function):
    """Row-parallel output: sum the partial products forward, pass the gradient through backward."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad


def _run_and_exit(rank: int, worker, path: str) -> None:
    worker(rank, path)
    # results are on disk: leave without tearing the process group down (ProcessGroupGloo's destructor joins its
    # threads holding the GIL and was seen to deadlock with DDP's reducer)
    os._exit(0)


def _spawn(worker, path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_run_and_exit, args=(worker, str(path)), nprocs=WORLD, join=True)


def test_ddp_two_processes_match_single_process_bit_for_bit(tmp_path):
    _spawn(_ddp_worker, tmp_path)
    expected = _single_process()
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"ddp{rank}.pt")
        assert torch.equal(got["y"], expected["y"][rank * BATCH : (rank + 1) * BATCH])
        assert torch.equal(got["fc1"], expected["fc1"]) and torch.equal(got["fc2"], expected["fc2"])


def test_tensor_parallel_mlp_two_processes_match_single_process_bit_for_bit(tmp_path):
    _spawn(_tp_worker, tmp_path)
    expected = _single_process()
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"tp{rank}.pt")
        cols = slice(*got["cols"])
        assert torch.equal(got["y"], expected["y"])
        assert torch.equal(got["fc1"], expected["fc1"][cols])
        assert torch.equal(got["fc2"], expected["fc2"][:, cols])


def test_single_process_reference_is_sensitive_to_the_mask():
    # the comparison above can fail: another seed changes the single-process result
    expected = _single_process()
    model, (x, _) = _model(), _data()
    torch.manual_seed(8)
    assert not torch.equal(model(x), expected["y"])


def test_nested_shards_of_two_dimensions():
    x = torch.randn(6, 10, 3)
    full = F.dropout(x, 0.5, seed=21)
    with rng.shard(dim=0, start=2, size=6), rng.shard(dim=1, start=5, size=10):
        part = F.dropout(x[2:4, 5:9], 0.5, seed=21)
    assert torch.equal(part, full[2:4, 5:9])
