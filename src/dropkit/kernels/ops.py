"""Custom ops that give ``torch.compile`` and ``torch.export`` one opaque node per seed draw and per CPU kernel.

Internal. In eager mode nothing here runs: ops call the kernels directly and draw seeds as Python ints.
While torch traces (:func:`torch.compiler.is_compiling`), two things would break the graph:

- the seed draw ``int(torch.randint(...))`` on torch's CPU generator (a host read), and
- the numba kernels, which dynamo cannot look into.

``dropkit::draw_seed`` draws the seed at run time from the same generator, in the same order, and returns
it as a 0-d int64 tensor, so a compiled model draws exactly the seeds (and hence masks) eager draws for the
same ``torch.manual_seed``. It is tagged ``nondeterministic_seeded``, so the partitioner never recomputes it
in backward and constant folding leaves it alone; a per-trace call number keeps CSE from merging two draws.
``dropkit::masked_affine_host`` and ``dropkit::keep_mask_host`` wrap the CPU (numba / reference) kernels,
taking the mask spec as plain ints and floats plus an optional ``(seed, offset)`` state tensor.
"""

from __future__ import annotations

import dataclasses

import torch

from .. import rng

__all__ = ["draw_seed", "generator_slot", "masked_affine", "keep_mask", "normal"]

_generators: dict[int, torch.Generator] = {}  # slot -> generator, filled at trace time
_calls = 0


def generator_slot(generator: torch.Generator | None) -> int:
    """Return the slot through which :func:`draw_seed` finds ``generator`` at run time (``-1``: torch's default).

    A module's own generator (``seed=``) is found by ``id`` in :data:`dropkit.rng._module_generators`; any
    other is registered while dynamo traces, by a constant-folded call (which torch 2.11's dynamo refuses).
    """
    if generator is None:
        return -1
    key = id(generator)
    if key in rng._module_generators:
        return key
    return _traced_slot(generator)


@torch.compiler.assume_constant_result  # runs (and registers) while dynamo traces, so the op finds it at run time
def _traced_slot(generator: torch.Generator) -> int:
    key = id(generator)
    _generators[key] = generator
    return key


def _generator(slot: int) -> torch.Generator | None:
    if slot == -1:
        return None
    own = rng._module_generators.get(slot)
    return own if own is not None else _generators[slot]


@torch.library.custom_op("dropkit::draw_seed", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def _draw_seed_op(slot: int, call: int, anchor: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rng.draw_seed(_generator(slot)), dtype=torch.int64)


@_draw_seed_op.register_fake
def _(slot: int, call: int, anchor: torch.Tensor) -> torch.Tensor:
    return torch.empty((), dtype=torch.int64)


@torch.compiler.assume_constant_result  # runs at trace time: a distinct constant per draw, no traced side effect
def _call_number() -> int:
    global _calls
    _calls += 1
    return _calls


def draw_seed(generator: torch.Generator | None) -> torch.Tensor:
    """Return a seed drawn at run time from ``generator`` as a 0-d int64 CPU tensor (traceable)."""
    # anchor: an empty CPU tensor naming the device seeds are drawn on. Selective activation checkpointing under
    # compile wraps a recomputed random op in run_and_save_rng_state, which finds the op's device from a tensor
    return _draw_seed_op(generator_slot(generator), _call_number(), torch.empty(0))


def _signed(value: int) -> int:
    return value - 2**64 if value >= 2**63 else value


def _spec_from(state, seed, offset, threshold, scale, bias, fill, mask_dims, shard, p=0.0):
    from . import MaskSpec

    if threshold < 0:  # p was symbolic while tracing: derive the threshold now
        threshold = rng.keep_threshold(p)
    return MaskSpec(
        seed % 2**64,
        offset,
        threshold,
        scale,
        bias,
        fill,
        mask_dims,
        state,
        tuple(tuple(shard[i : i + 3]) for i in range(0, len(shard), 3)) or None,
    )


@torch.library.custom_op("dropkit::masked_affine_host", mutates_args=())
def _masked_affine_op(
    x: torch.Tensor,
    state: torch.Tensor | None,
    seed: int,
    offset: int,
    threshold: int,
    scale: float,
    bias: float,
    fill: float,
    mask_dims: int,
    shard: list[int],
    p: float,
) -> torch.Tensor:
    from . import apply

    spec = _spec_from(state, seed, offset, threshold, scale, bias, fill, mask_dims, shard, p)
    y = apply(x, spec)
    return y.clone(memory_format=torch.contiguous_format) if y is x or not y.is_contiguous() else y


@_masked_affine_op.register_fake
def _(x, state, seed, offset, threshold, scale, bias, fill, mask_dims, shard, p):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.custom_op("dropkit::keep_mask_host", mutates_args=())
def _keep_mask_op(
    state: torch.Tensor | None,
    seed: int,
    offset: int,
    threshold: int,
    shape: list[int],
    device: torch.device,
    shard: list[int],
    p: float,
) -> torch.Tensor:
    from . import keep_mask

    spec = _spec_from(state, seed, offset, threshold, 1.0, 0.0, 0.0, -1, shard, p)
    mask = keep_mask(spec, tuple(shape), device)
    return mask if mask.is_contiguous() else mask.contiguous()


@_keep_mask_op.register_fake
def _(state, seed, offset, threshold, shape, device, shard, p):
    return torch.empty(shape, dtype=torch.bool, device=device)


def _args(spec) -> tuple:
    state, seed = spec.state, spec.seed
    if isinstance(seed, torch.Tensor):  # a traced draw: carry it as the state tensor
        base = seed.reshape(1)
        drawn = torch.cat((base, torch.zeros_like(base)))
        state = drawn if state is None else state + drawn
        seed = 0
    shard = [v for part in spec.shard for v in part] if spec.shard is not None else []  # flat (dim, start, size)*
    return state, _signed(int(seed)), spec.offset, spec.threshold, shard


def traced_state(spec, device: torch.device):
    """Return ``spec`` for the Triton kernels while torch traces: its seed in a ``state`` tensor on ``device``.

    A traced draw is a tensor already. An int seed goes the same way: the kernels' int encoding of a seed
    (``2^36 + 16 k + 3``, see ``triton._seed_args``) is a constant above 2^31, which Inductor fails to
    generate code for (torch 2.11: ``'int' object has no attribute 'xreplace'``).
    """
    if spec.state is None and not isinstance(spec.seed, torch.Tensor):
        spec = dataclasses.replace(spec, seed=torch.tensor(_signed(int(spec.seed) % 2**64), dtype=torch.int64))
    state, seed, _, _, _ = _args(spec)
    return dataclasses.replace(spec, seed=seed, state=state.to(device))


def masked_affine(x: torch.Tensor, spec) -> torch.Tensor:
    """Traceable masked affine map of ``x`` under ``spec`` on the host (numba or reference) path."""
    state, seed, offset, threshold, shard = _args(spec)
    if state is not None:
        state = state.to(x.device)
    p = 0.0 if spec.p is None else spec.p
    return _masked_affine_op(
        x, state, seed, offset, threshold, spec.scale, spec.bias, spec.fill, spec.mask_dims, shard, p
    )


def keep_mask(spec, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Traceable bool keep mask of ``spec`` with the given shape on the host path."""
    state, seed, offset, threshold, shard = _args(spec)
    if state is not None:
        state = state.to(device)
    p = 0.0 if spec.p is None else spec.p
    return _keep_mask_op(state, seed, offset, threshold, [int(d) for d in shape], torch.device(device), shard, p)


@torch.library.custom_op("dropkit::normal_host", mutates_args=())
def _normal_op(
    state: torch.Tensor | None, seed: int, offset: int, shape: list[int], device: torch.device
) -> torch.Tensor:
    if state is not None:
        seed, base = (int(v) for v in state.tolist())
        offset += base
    return rng.normal(tuple(shape), seed % 2**64, offset, device=device)


@_normal_op.register_fake
def _(state, seed, offset, shape, device):
    return torch.empty(shape, dtype=torch.float32, device=device)


def normal(shape: tuple[int, ...], seed, offset: int, device) -> torch.Tensor:
    """Traceable :func:`dropkit.rng.normal`: one node, the eager values bit for bit (no re-derived log/cos)."""
    state = None
    if isinstance(seed, torch.Tensor):
        base = seed.reshape(1)
        state, seed = torch.cat((base, torch.zeros_like(base))), 0
    device = torch.device("cpu" if device is None else device)
    return _normal_op(state, _signed(int(seed)), int(offset), [int(d) for d in shape], device)
