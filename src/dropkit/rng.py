r"""The counter-based random number core that every dropkit op shares.

Every random number dropkit draws is a pure function of ``(seed, counter)``. The generator is
Philox4x32-10 (Salmon et al., "Parallel Random Numbers: As Easy as 1, 2, 3", SC 2011), with the
counter → uniform mapping of Triton's ``tl.rand(seed, offsets)`` for int64 offsets:

.. math::

    (w_0, w_1, w_2, w_3) = \mathrm{Philox4x32\text{-}10}\big(
        \text{counter}=(c \bmod 2^{32},\ \lfloor c / 2^{32} \rfloor,\ 0,\ 0),\
        \text{key}=(s \bmod 2^{32},\ \lfloor s / 2^{32} \rfloor)\big)

    u(s, c) = \mathrm{fl}_{32}\big(\mathrm{fold}(w_0) \cdot 4.6566127342\times 10^{-10}\big),
    \qquad \mathrm{fold}(w) = w \text{ if } w < 2^{31} \text{ else } 2^{32} - 1 - w

so :math:`u \in [0, 1)` (Triton's ``uint_to_uniform_float``). Each counter yields four words, so
elements are laid out in groups of 1024 = 4 words × 256 counters: element ``n`` of a call with seed ``s``
and offset ``o`` has global index :math:`m = o + n` and takes word :math:`j = \lfloor m / 256 \rfloor \bmod 4`
of counter :math:`c = 256 \lfloor m / 1024 \rfloor + (m \bmod 256)` — exactly Triton's
``tl.rand4x(seed, c)[j]``, and each block of 256 elements is one vector of counters, which keeps CPU and GPU
kernels vectorised with one Philox call per four elements. It is kept iff :math:`u \ge p`. Because ``fold``
and the float conversion are monotone, the test is done exactly in integers: ``fold(w) >= keep_threshold(p)``.

Nothing here stores a mask: backward recomputes it from ``(seed, offset)``. Seeds come from torch's
default CPU generator unless a ``generator`` or an explicit ``seed`` is given, so ``torch.manual_seed``
reproduces runs and ``torch.utils.checkpoint`` (which restores the CPU RNG state) recomputes the same
masks.

This module holds the torch-ops implementation (any device); ``dropkit.kernels.cpu`` holds the
compiled CPU twin, and the two are tested to be bit-identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import sys
import weakref
from collections.abc import Iterator, Sequence

import numpy as np
import torch

__all__ = [
    "PHILOX_KEY_A",
    "PHILOX_KEY_B",
    "PHILOX_ROUND_A",
    "PHILOX_ROUND_B",
    "UNIFORM_SCALE",
    "philox4x32",
    "uint32_to_uniform",
    "LANES",
    "GROUP",
    "random_words",
    "element_words",
    "uniform",
    "normal",
    "keep_threshold",
    "draw_seed",
    "DeviceGenerator",
    "shard",
    "current_shards",
    "Shard",
    "parallel",
    "draw_seed_mixed",
    "RNGState",
]

PHILOX_KEY_A = 0x9E3779B9  #: Weyl increment of key word 0 (golden ratio).
PHILOX_KEY_B = 0xBB67AE85  #: Weyl increment of key word 1 (sqrt(3) - 1).
PHILOX_ROUND_A = 0xD2511F53  #: Multiplier applied to counter word 0.
PHILOX_ROUND_B = 0xCD9E8D57  #: Multiplier applied to counter word 2.
PHILOX_ROUNDS = 10
UNIFORM_SCALE = 4.6566127342e-10  #: Triton's uint32 → [0, 1) scale: the largest s with (2^31 - 1)·s < 1 in fp32.

LANES = 256  #: Counters per group: one vector of consecutive counters.
GROUP = 4 * LANES  #: Elements per group: the four Philox words of LANES counters, word-major.

_MASK32 = 0xFFFFFFFF
_SEED_LIMIT = 2**64

ShapeLike = int | Sequence[int] | torch.Size


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(hi, lo)`` 32-bit halves of ``a * b`` for a constant ``a`` and uint32 values in int64 ``b``."""
    # a * b can reach 2^64, beyond int64: split b into 16-bit halves so every product stays below 2^49.
    b_hi, b_lo = b >> 16, b & 0xFFFF
    a_b_hi, a_b_lo = a * b_hi, a * b_lo
    hi = (a_b_hi + (a_b_lo >> 16)) >> 16
    lo = (a_b_lo + ((a_b_hi & 0xFFFF) << 16)) & _MASK32
    return hi, lo


def philox4x32(
    c0: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
    c3: torch.Tensor,
    k0: int,
    k1: int,
    rounds: int = PHILOX_ROUNDS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Run Philox4x32 on counters ``(c0, c1, c2, c3)`` with key ``(k0, k1)``.

    One round maps :math:`(c_0, c_1, c_2, c_3)` to
    :math:`(\mathrm{hi}(B c_2) \oplus c_1 \oplus k_0,\ \mathrm{lo}(B c_2),\ \mathrm{hi}(A c_0) \oplus c_3 \oplus k_1,\
    \mathrm{lo}(A c_0))` and then bumps the key by the Weyl constants, exactly as Random123 and Triton do.

    Args:
        c0: Counter word 0: int64 tensor holding values in ``[0, 2^32)``.
        c1: Counter word 1, broadcastable with ``c0``.
        c2: Counter word 2, broadcastable with ``c0``.
        c3: Counter word 3, broadcastable with ``c0``.
        k0: Key word 0, an int in ``[0, 2^32)``.
        k1: Key word 1, an int in ``[0, 2^32)``.
        rounds: Number of rounds. Default: ``10``.

    Returns:
        The four output words as int64 tensors holding uint32 values.

    Example:
        >>> z = torch.zeros(1, dtype=torch.int64)
        >>> [hex(int(w)) for w in philox4x32(z, z, z, z, 0, 0)]
        ['0x6627e8d5', '0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
    """
    for _ in range(rounds):
        hi0, lo0 = _mulhilo(PHILOX_ROUND_A, c0)
        hi1, lo1 = _mulhilo(PHILOX_ROUND_B, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_KEY_A) & _MASK32
        k1 = (k1 + PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def fold(words: torch.Tensor) -> torch.Tensor:
    """Map uint32 words (int64 tensor) to ``[0, 2^31)`` the way Triton does: ``x if x >= 0 else ~x`` on int32."""
    return torch.where(words >= 2**31, _MASK32 - words, words)


def uint32_to_uniform(words: torch.Tensor) -> torch.Tensor:
    r"""Convert uint32 words to float32 uniforms in :math:`[0, 1)`, bit-identical to Triton's ``uint_to_uniform_float``.

    Args:
        words: int64 tensor holding uint32 values.

    Returns:
        float32 tensor :math:`\mathrm{fl}_{32}(\mathrm{fl}_{32}(\mathrm{fold}(w)) \cdot 4.6566127342\times10^{-10})`.

    Example:
        >>> uint32_to_uniform(torch.tensor([0, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])).tolist()
        [0.0, 0.9999999403953552, 0.9999999403953552, 0.0]
    """
    return fold(words).to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32, device=words.device)


def _numel(shape: ShapeLike) -> tuple[int, tuple[int, ...]]:
    dims = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
    return math.prod(dims), dims


def _split_seed(seed: int) -> tuple[int, int]:
    return seed & _MASK32, (seed >> 32) & _MASK32


def random_words(
    numel: int, seed: int, offset: int = 0, *, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the four Philox output words of counters ``offset .. offset + numel - 1``.

    Counter ``c`` is ``(c mod 2^32, c div 2^32, 0, 0)`` and the key is the seed's two 32-bit halves, as
    Triton's ``tl.randint4x(seed, c)`` with int64 ``c``.

    Args:
        numel: Number of consecutive counters.
        seed: 64-bit key.
        offset: First counter. Default: ``0``.
        device: Device of the result. Default: CPU.

    Returns:
        Four int64 tensors of shape ``(numel,)`` holding uint32 values.

    Example:
        >>> [w.tolist() for w in random_words(2, seed=0)]
        [[1713891541, 4175744164], [3781805453, 1555169499], [3159862348, 2980410603], [2600524760, 159317863]]
        >>> torch.equal(random_words(1, seed=0, offset=1)[0], random_words(2, seed=0)[0][1:])  # counters, not state
        True
    """
    counter = torch.arange(offset, offset + numel, dtype=torch.int64, device=device)
    zero = torch.zeros((), dtype=torch.int64, device=device)
    return philox4x32(counter & _MASK32, counter >> 32, zero, zero, *_split_seed(seed))


def _grouped_words(numel: int, seed: int, offset: int, device) -> tuple[torch.Tensor, int]:
    """Return the words of every group that elements ``offset .. offset + numel - 1`` touch, as ``(G, 4, LANES)``.

    Also returns the position of element ``offset`` in the flattened result.
    """
    first, last = offset // GROUP, (offset + max(numel, 1) - 1) // GROUP
    words = random_words((last - first + 1) * LANES, seed, first * LANES, device=device)
    grouped = torch.stack(words).reshape(4, last - first + 1, LANES).transpose(0, 1)
    return grouped, offset - first * GROUP


def element_words(numel: int, seed: int, offset: int = 0, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Return the Philox word of each element ``offset .. offset + numel - 1`` under the grouped layout.

    Returns:
        int64 tensor of shape ``(numel,)`` holding uint32 values.

    Example:
        >>> w = element_words(8, seed=0)
        >>> w.dtype, bool(((0 <= w) & (w < 2**32)).all())
        (torch.int64, True)
        >>> torch.equal(element_words(5, seed=0, offset=3), w[3:])  # element n's word depends on n alone
        True
    """
    grouped, start = _grouped_words(numel, seed, offset, device)
    return grouped.reshape(-1)[start : start + numel]


def uniform(shape: ShapeLike, seed: int, offset: int = 0, *, device: torch.device | str | None = None) -> torch.Tensor:
    r"""Return float32 uniforms in :math:`[0, 1)`: element ``n`` gets Triton's ``tl.rand4x(seed, c)[j]`` of its slot.

    Args:
        shape: Shape of the result; element ``n`` in row-major order has global index ``offset + n``.
        seed: 64-bit key, an int in ``[0, 2^64)``.
        offset: First counter. Default: ``0``.
        device: Device of the result. Default: CPU.

    Returns:
        float32 tensor of the given shape.

    Example:
        >>> u = uniform((2, 3), seed=0)
        >>> u.shape, bool(((0 <= u) & (u < 1)).all())
        (torch.Size([2, 3]), True)
        >>> torch.equal(uniform(6, seed=0), u.flatten())
        True
    """
    n, dims = _numel(shape)
    _key("uniform", seed, offset)
    return uint32_to_uniform(element_words(n, seed, offset, device=device)).reshape(dims)


def _key(op: str, seed: object, offset: object) -> None:
    """Check an explicit ``seed`` (an int in ``[0, 2^64)``) and ``offset`` (an int ``>= 0``), eager calls only."""
    if type(seed) is int and type(offset) is int and 0 <= seed < _SEED_LIMIT and offset >= 0:
        return  # the common case, first: the Gaussian ops come through here on every call
    if torch.compiler.is_compiling():  # a traced seed
        return
    from . import _validate

    if seed is None:
        raise TypeError(f"{op}: seed must be an int in [0, 2**64), but got None.")
    _validate.seed_source(op, seed, None)
    if isinstance(offset, bool) or not isinstance(offset, numbers.Integral):
        raise _validate._fail(op, "offset", "an int", offset, TypeError)
    if offset < 0:
        raise _validate._fail(op, "offset", "an int >= 0", offset)


def normal(shape: ShapeLike, seed: int, offset: int = 0, *, device: torch.device | str | None = None) -> torch.Tensor:
    r"""Return float32 standard normals, element ``n`` from its slot as Triton's ``tl.randn4x(seed, c)[j]``.

    Box–Muller on word pairs (0, 1) and (2, 3) of each counter: with
    :math:`r = \sqrt{-2 \ln \max(10^{-7}, u_{2k})}` and :math:`\theta = 2\pi u_{2k+1}`, words ``2k`` and
    ``2k + 1`` give :math:`r\cos\theta` and :math:`r\sin\theta`.

    Args:
        shape: Shape of the result; element ``n`` has global index ``offset + n``.
        seed: 64-bit key.
        offset: First global index. Default: ``0``.
        device: Device of the result. Default: CPU.

    Returns:
        float32 tensor of the given shape.

    Example:
        >>> z = normal(10_000, seed=0)
        >>> abs(float(z.mean())) < 0.05, abs(float(z.std()) - 1) < 0.05
        (True, True)
        >>> torch.equal(normal((2, 3), seed=0).flatten(), z[:6])
        True
    """
    n, dims = _numel(shape)
    if torch.compiler.is_compiling():  # one opaque node: compiled code would round log/cos differently
        from .kernels import ops

        return ops.normal(dims, seed, offset, device)
    _key("normal", seed, offset)
    grouped, start = _grouped_words(n, seed, offset, device)
    u = uint32_to_uniform(grouped)
    radius = torch.sqrt(-2.0 * torch.log(u[:, 0::2].clamp_min(1.0e-7)))
    theta = 6.283185307179586 * u[:, 1::2]
    z = torch.stack((radius * torch.cos(theta), radius * torch.sin(theta)), dim=2)  # (G, pair, cos/sin, LANES)
    return z.reshape(-1)[start : start + n].reshape(dims)


def keep_threshold(p: float) -> int:
    r"""Return the integer ``t`` such that ``u >= p`` (in float32) iff ``fold(w) >= t``.

    ``t`` is the smallest integer in :math:`[0, 2^{31}]` with
    :math:`\mathrm{fl}_{32}(\mathrm{fl}_{32}(t)\cdot 4.6566127342\times 10^{-10}) \ge \mathrm{fl}_{32}(p)`;
    ``p = 0`` gives ``0`` (keep all) and ``p = 1`` gives :math:`2^{31}` (keep none).

    Example:
        >>> keep_threshold(0.0), keep_threshold(0.5), keep_threshold(1.0)
        (0, 1073741889, 2147483648)
    """
    p32 = np.float32(p)
    scale = np.float32(UNIFORM_SCALE)
    lo, hi = 0, 2**31  # invariant: the answer lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if np.float32(mid) * scale >= p32:
            hi = mid
        else:
            lo = mid + 1
    return lo


def draw_seed(generator: torch.Generator | None = None) -> int:
    """Draw a fresh 63-bit seed from ``generator``, or from torch's default CPU generator when ``None``.

    Drawing advances the generator, so successive calls give independent masks while
    ``torch.manual_seed`` (or ``generator.manual_seed``) makes the whole sequence reproducible.

    Example:
        >>> _ = torch.manual_seed(0); a = draw_seed()
        >>> _ = torch.manual_seed(0); a == draw_seed()
        True
    """
    device = generator.device if generator is not None else "cpu"
    # under vmap(randomness="different"): one plain draw, as the call on the whole batch makes (the ops' vmap rules
    # do the rest); in vmap's "error" mode torch's own draw raises, as for any random op
    plain = _vmap_randomness() & {"different", "error"} == {"different"}
    with torch._C._DisableFuncTorch() if plain else contextlib.nullcontext(), _outside_dispatch_modes():
        return int(torch.randint(0, 2**63 - 1, (), generator=generator, device=device))


def _seen_by_mode() -> bool:
    """Whether a Python dispatch mode sees torch's ops now.

    ``make_fx`` (``torch.func.linearize``), a fake-tensor mode, a user's ``TorchDispatchMode`` (FLOP counters,
    loggers). The numba kernels write straight into memory, unseen by it (a traced graph would replay an empty
    tensor): :mod:`dropkit.kernels` takes torch ops then, and seeds are drawn with the modes off. False while
    dynamo traces (it cannot trace the check; its graphs hold dropkit's custom ops, which such modes see).
    """
    return not torch.compiler.is_compiling() and torch._C._dispatch_tls_is_dispatch_key_included(
        torch._C.DispatchKey.Python
    )


def _outside_dispatch_modes() -> contextlib.AbstractContextManager:
    """The context of a seed draw: Python dispatch modes off, if any runs.

    Under ``make_fx`` (``torch.func.linearize``) or a fake-tensor mode the draw would be a traced tensor, which
    has no value to read; the seed is then a constant of the trace.
    """
    if not _seen_by_mode():
        return contextlib.nullcontext()
    from torch.utils._python_dispatch import _disable_current_modes

    return _disable_current_modes()


def _vmap_randomness() -> set[str]:
    """The ``randomness`` of every ``torch.vmap`` level active now (empty outside vmap)."""
    if not torch._C._are_functorch_transforms_active():
        return set()
    try:  # functorch's interpreter stack: private, so a torch without it reads as "no vmap level"
        from torch._functorch.pyfunctorch import coerce_cinterpreter

        vmap = torch._C._functorch.TransformType.Vmap
        stack = torch._C._functorch.get_interpreter_stack() or ()
        return {coerce_cinterpreter(level).randomness() for level in stack if level.key() == vmap}
    except (ImportError, AttributeError):  # pragma: no cover - torch internals moved
        return set()


class DeviceGenerator:
    r"""A seed and a position held in an int64 device tensor ``(seed, offset)``: mask draws that CUDA graphs replay.

    A torch generator hands dropkit a seed on the host, which a captured CUDA graph would freeze. Pass a
    ``DeviceGenerator`` as ``generator=`` instead: each op snapshots the pair on the device (16 bytes, kept
    for its backward) and advances ``offset`` there by the op's mask size rounded up to a group of
    :data:`GROUP` elements, with no host sync. A graph captured around the ops therefore draws fresh masks
    on every replay, and the op's mask equals the one an integer ``seed`` with the snapshot's offset gives.

    Args:
        seed: 64-bit seed, an int in ``[0, 2^64)``. Default: ``0``.
        device: Device of the state tensor. Default: ``"cuda"``.

    Example:
        >>> g = DeviceGenerator(seed=7, device="cpu")
        >>> g.draw(10).tolist(), g.draw(10).tolist()
        ([7, 0], [7, 1024])
    """

    def __init__(self, seed: int = 0, device: torch.device | str = "cuda") -> None:
        self.state = torch.zeros(2, dtype=torch.int64, device=device)
        self.manual_seed(seed)

    @property
    def device(self) -> torch.device:
        """Device of the state tensor."""
        return self.state.device

    def manual_seed(self, seed: int) -> DeviceGenerator:
        """Set the seed and rewind the offset to 0; return ``self`` (as ``torch.Generator.manual_seed``)."""
        seed = int(seed)
        if not 0 <= seed < _SEED_LIMIT:
            raise ValueError(f"DeviceGenerator: seed must be in [0, 2**64), but got {seed!r}.")
        self.state.copy_(torch.tensor([seed - _SEED_LIMIT if seed >= 2**63 else seed, 0], dtype=torch.int64))
        return self

    def draw(self, numel: int) -> torch.Tensor:
        """Return a snapshot of ``(seed, offset)`` and advance the offset past ``numel`` mask elements."""
        snapshot = self.state.clone()
        self.state[1:].add_(-(-max(int(numel), 1) // GROUP) * GROUP)
        return snapshot

    def get_state(self) -> torch.Tensor:
        """Return a copy of the ``(seed, offset)`` tensor, for checkpoints."""
        return self.state.clone()

    def set_state(self, state: torch.Tensor) -> None:
        """Restore a state returned by :meth:`get_state`."""
        self.state.copy_(state)


# ---------------------------------------------------------------------------------------------------------------
# The contract across torch.compile, checkpointing and distributed training (issue 9).
#
# Every op's mask is a pure function of (seed, offset, element index). Three things below decide those inputs
# beyond a plain call: shard() maps a shard's elements to their global indices (shard-invariant masks),
# parallel() folds the data-parallel rank into drawn seeds, and a seed tape replays drawn seeds when
# torch.utils.checkpoint recomputes a region, whatever preserve_rng_state says. RNGState checkpoints it all.
# ---------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shard:
    """A slice ``[start, start + n)`` along ``dim`` of a global tensor whose size along ``dim`` is ``size``."""

    dim: int
    start: int
    size: int


_shards: list[Shard] = []
_dp_rank: list[int] = []


@contextlib.contextmanager
def shard(dim: int, start: int, size: int) -> Iterator[Shard]:
    r"""Make ops inside the block draw, for a shard of a tensor, exactly that slice of the unsharded tensor's mask.

    Inside the block every dropkit op reads its input as the slice ``[start, start + n)`` along ``dim`` of a
    global tensor of the same shape except ``size`` along ``dim`` (``n`` is the input's own size there), and
    gives element :math:`i` the global row-major index it has in that tensor:

    .. math:: m(i) = \sum_k (i_k + \text{start}\,[k = \text{dim}]) \cdot \text{stride}^{\text{global}}_k

    So a rank holding a shard draws bit for bit the slice a single process draws for the whole tensor with
    the same seed: a data-parallel batch shard (``dim=0``), a column-parallel activation (``dim=-1``), a
    sequence-parallel slice. Nested blocks shard several dimensions at once (a data-parallel batch slice of
    a tensor-parallel activation); an inner block naming the same dimension replaces the outer one. A single
    leading shard (``dim=0``) costs nothing (a plain offset); otherwise the op draws the mask of the span of
    global indices the shard covers and gathers its elements (torch ops, not the fused kernels). Channel
    masks (``dropout2d`` ...) shard along their channel dimensions only; a shard of a dimension a mask
    broadcasts over changes nothing. Seeds are
    not changed: seed every rank of the group alike (the same ``torch.manual_seed`` or ``seed=``).

    Args:
        dim: Sharded dimension (negative counts from the end).
        start: Global index of the shard's first slice along ``dim``, ``>= 0``.
        size: Global size along ``dim``, ``>= start + n``.

    Example:
        >>> from dropkit.functional import dropout
        >>> x = torch.ones(4, 6)
        >>> full = dropout(x, 0.5, seed=3)
        >>> with shard(dim=1, start=2, size=6):
        ...     part = dropout(x[:, 2:5], 0.5, seed=3)
        >>> torch.equal(part, full[:, 2:5])
        True
    """
    from . import _validate

    spec = Shard(*_validate.shard("shard", dim, start, size))
    _shards.append(spec)
    try:
        yield spec
    finally:
        _shards.pop()


def current_shards() -> tuple[Shard, ...]:
    """Return the :func:`shard` declarations in force, outermost first.

    Example:
        >>> with shard(0, 4, 8):
        ...     current_shards()
        (Shard(dim=0, start=4, size=8),)
        >>> current_shards()
        ()
    """
    return tuple(_shards)


_RANK_MIX = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: xor of (rank + 1) times it gives each rank a distinct key


@contextlib.contextmanager
def parallel(data_parallel_rank: int | None = None) -> Iterator[int]:
    """Declare how drawn masks relate across ranks: different per data-parallel rank, equal across tensor-parallel.

    Inside the block each seed an op *draws* (no explicit ``seed=``) is xor-ed with a constant of the
    data-parallel rank, so data-parallel replicas seeded alike draw independent masks, while ranks of one
    tensor-parallel group (same data-parallel rank, same ``torch.manual_seed``) draw identical ones. An
    explicit ``seed=`` is left as given. Combine with :func:`shard` for activations a tensor-parallel rank
    holds a slice of. ``data_parallel_rank=None`` reads the rank of the default ``torch.distributed`` group
    (0 when it is not initialised).

    Args:
        data_parallel_rank: This process's data-parallel rank, ``>= 0``. Default: from ``torch.distributed``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> with parallel(data_parallel_rank=0):
        ...     a = draw_seed_mixed()
        >>> _ = torch.manual_seed(0)
        >>> with parallel(data_parallel_rank=1):
        ...     b = draw_seed_mixed()
        >>> a != b
        True
    """
    from . import _validate

    if data_parallel_rank is None:
        dist = torch.distributed
        data_parallel_rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    rank = _validate.rank("parallel", "data_parallel_rank", data_parallel_rank)
    _dp_rank.append(rank)
    try:
        yield rank
    finally:
        _dp_rank.pop()


def mix_rank(seed, rank: int):
    """Return ``seed`` (int, or 0-d int64 tensor while tracing) keyed by ``rank``: an injective map per rank."""
    return seed ^ (((rank + 1) * _RANK_MIX) & (2**63 - 1))


def draw_seed_mixed(generator: torch.Generator | None = None):
    """Draw a seed as ops do: replayed under checkpoint recomputation, traceable under ``torch.compile``, rank-mixed.

    Returns an int in eager mode and a 0-d int64 tensor while torch traces. The rank mixing happens before the
    seed goes on the checkpoint tape (:func:`replayed`), so a region recomputed after its :func:`parallel`
    block has closed gets the seeds its forward used.

    Example:
        >>> a = draw_seed_mixed(torch.Generator().manual_seed(0))
        >>> isinstance(a, int), a == draw_seed_mixed(torch.Generator().manual_seed(0))
        (True, True)
    """
    return _draw_seed_mixed(generator)


def _draw_seed_mixed(generator: torch.Generator | None, regions: list | None = None):
    """:func:`draw_seed_mixed`, with the checkpoint regions around the call if the caller has found them."""
    if torch.compiler.is_compiling():
        from .kernels import ops

        return _mixed(ops.draw_seed(generator))
    return replayed(lambda: _mixed(draw_seed(generator)), regions, generator is None)


def _mixed(seed):
    return mix_rank(seed, _dp_rank[-1]) if _dp_rank else seed


def mixed_state(state: torch.Tensor) -> torch.Tensor:
    """A :class:`DeviceGenerator` draw ``(seed, offset)`` with its seed rank-mixed as :func:`draw_seed_mixed` mixes.

    On the tensor's device (no host sync: CUDA-graph safe); ``state`` itself when no :func:`parallel` block is open.
    """
    return torch.cat((_mixed(state[:1]), state[1:])) if _dp_rank else state


#: The generators dropkit modules own (``seed=``), by ``id``, while their module lives. Compiled code finds
#: them with a dict lookup; other generators go through a constant-folded call that registers them while torch
#: traces (``kernels.ops.generator_slot``), which torch 2.11's dynamo refuses for a ``torch.Generator``.
_module_generators: dict[int, torch.Generator] = {}


def _own_generator(
    owner: object, op: str, seed: int | None, generator: torch.Generator | None
) -> torch.Generator | None:
    """Return a module's generator: its own one seeded by ``seed``, the caller's ``generator``, or ``None``."""
    from . import _validate

    _validate.seed_source(op, seed, generator)
    if seed is None:
        return generator
    own = torch.Generator().manual_seed(seed)
    _module_generators[id(own)] = own
    weakref.finalize(owner, _module_generators.pop, id(own), None)
    return own


# --- the tape: torch.utils.checkpoint recomputation replays what the original forward drew ------------------

_tapes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_cursors: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _closure(fn, name: str):
    fn = getattr(fn, "__wrapped__", fn)
    code = getattr(fn, "__code__", None)
    if code is None or name not in code.co_freevars or fn.__closure__ is None:
        return None
    return fn.__closure__[code.co_freevars.index(name)].cell_contents


def _region_codes() -> dict:
    """The code objects of ``torch.utils.checkpoint``'s frames that open a region, by what they do."""
    try:
        from torch.utils import checkpoint as ckpt
    except ImportError:  # pragma: no cover - torch without checkpointing
        return {}
    codes = {
        ckpt.CheckpointFunction.forward.__code__: "forward",  # reentrant: the original forward (under no_grad)
        ckpt.CheckpointFunction.backward.__code__: "backward",  # reentrant: the recomputation
    }
    entry = getattr(ckpt.checkpoint, "__wrapped__", ckpt.checkpoint)  # non-reentrant: the original forward ...
    codes[entry.__code__] = "enter"
    hook = getattr(ckpt, "_checkpoint_hook", None)  # ... and its recomputation, run by the unpack hook
    for const in getattr(getattr(hook, "__init__", None), "__code__", None).co_consts if hook else ():
        if getattr(const, "co_name", None) == "unpack_hook":
            codes[const] = "recompute"
    return codes


_REGION_CODES = _region_codes()


def _checkpoint_regions() -> list[tuple[object, object]]:
    """The ``torch.utils.checkpoint`` regions around this call, innermost first, as ``(region, replay)``.

    ``region`` identifies one checkpointed call (its ``_CheckpointFrame``, or the reentrant ``ctx``), weakly
    referenceable; ``replay`` is ``None`` in the original forward, else a key of the recomputation (one per
    backward pass). Nested regions matter: while an outer region recomputes, an inner ``checkpoint`` call runs
    its "original" forward again and must get the outer forward's draws. Cheap with grad on, outside a backward
    and with no saved-tensor hooks (a look at those three); otherwise a walk up the Python stack, which also
    runs for every op under ``no_grad`` (a reentrant region's forward runs there and leaves no other trace).
    """
    # a non-reentrant region pushes saved-tensor hooks (another pushed inside it, save_on_cpu, hides them); a
    # reentrant one runs its forward under no_grad and recomputes inside backward: walk the stack only then
    top = torch._C._autograd._top_saved_tensors_default_hooks(False)
    if top is None and torch.is_grad_enabled() and torch._C._current_graph_task_id() == -1:
        return []
    regions: list[tuple[object, object]] = []
    frame = sys._getframe(2)
    while frame is not None:
        kind = _REGION_CODES.get(frame.f_code)
        if kind is not None:
            found = frame.f_locals
            if kind == "forward":
                region = (found.get("ctx"), None)
            elif kind == "backward":  # one recomputation per backward pass (a retained graph runs it again)
                region = (found.get("ctx"), ("task", torch._C._current_graph_task_id()))
            elif kind == "recompute":
                region = (found.get("frame"), ("gid", found.get("gid")))
            else:  # checkpoint() itself: non-reentrant when it holds the region's generator
                gen = found.get("gen")
                code = getattr(gen, "gi_frame", None)
                region = (code.f_locals.get("new_frame") if code is not None else None, None)
            if region[0] is not None:
                regions.append(region)
        frame = frame.f_back
    hooked = _hooked_region(top[0]) if top is not None else None
    if hooked is not None and all(region is not hooked[0] for region, _ in regions):
        regions.insert(0, hooked)  # a region with no checkpoint() frame: torch.distributed's checkpoint(module)
    return regions


def _hooked_region(pack) -> tuple[object, object] | None:
    """The non-reentrant region whose saved-tensor hook ``pack`` is, as :func:`_checkpoint_regions` gives it."""
    pack = getattr(pack, "__wrapped__", pack)
    name = getattr(pack, "__qualname__", "")
    if name.startswith("_checkpoint_hook."):
        frame = _closure(pack, "frame")
        return (frame, None) if frame is not None else None
    if name.startswith("_recomputation_hook."):
        ref, gid = _closure(pack, "target_frame_ref"), _closure(pack, "gid")
        frame = ref() if ref is not None else None
        return (frame, ("gid", gid)) if frame is not None else None
    return None


def _preserves_rng(region: object) -> bool:
    """Whether a region's recomputation runs from the forward's RNG state and restores the caller's after."""
    if hasattr(region, "recompute_fn"):  # non-reentrant: the flag is a variable of its recompute function
        return bool(_closure(region.recompute_fn, "preserve_rng_state"))
    return bool(getattr(region, "preserve_rng_state", False))


def replayed(draw, regions: list | None = None, default_generator: bool = False):
    """Return ``draw()``; while ``torch.utils.checkpoint`` recomputes a region, what it returned in the forward.

    Every random choice an op makes goes through here (drawn seeds, frozen-mask seeds, ``DeviceGenerator``
    states, the :func:`shard` declarations in force), so a recomputed region draws the masks its forward drew,
    whatever ``preserve_rng_state`` says and whichever :func:`parallel` / :func:`shard` blocks are still open,
    and with every generator ending where an uncheckpointed run leaves it. In the
    original forward each value is recorded on the tape of every region around the call; in a recomputation
    it comes from the tape of the innermost region being recomputed (regions inside it record it in turn, for
    their own recomputation later). A recomputation that draws more than the forward did draws afresh.
    ``regions``: :func:`_checkpoint_regions`, when the caller has them already (one look per op).

    ``default_generator``: ``draw`` draws from torch's default generator. A replay then still draws (and drops
    the value) when the region restores the RNG state for its recomputation (``preserve_rng_state=True``), so
    that torch's own random ops later in the region (its dropout, attention dropout) see the state they saw in
    the forward; the state is restored after the recomputation, so nothing shows outside it.
    """
    if torch.compiler.is_compiling():
        return draw()
    if regions is None:
        regions = _checkpoint_regions()
    if not regions:
        return draw()
    recording: list[object] = []
    value, found = None, False
    for region, replay in regions:
        if replay is None:
            recording.append(region)
            continue
        try:
            tape, cursors = _tapes.get(region, []), _cursors.setdefault(region, {})
        except TypeError:  # not weak-referenceable: no tape
            break
        position = cursors.get(replay, 0)
        cursors[replay] = position + 1
        if position < len(tape):
            value, found = tape[position], True
            if default_generator and _preserves_rng(region):
                draw()
        break
    if not found:
        value = draw()
    for region in recording:
        try:
            _tapes.setdefault(region, []).append(value)
        except TypeError:  # not weak-referenceable: no tape
            pass
    return value


# --- checkpointable RNG position -------------------------------------------------------------------------------


class RNGState:
    r"""Everything that decides which masks dropkit draws next, as one checkpointable object.

    dropkit draws each op's seed from a generator: torch's default CPU generator, a module's own generator
    (``Dropout(seed=...)``) or a :class:`DeviceGenerator`. Saving their states with the model and optimizer and
    loading them on resume makes a stopped and resumed run draw exactly the masks of a run that never
    stopped. Generators are found on ``module``'s submodules (attribute ``generator``) and taken from
    ``generators``.

    Args:
        module: Model whose dropkit layers' generators are included. Default: ``None``.
        generators: Extra ``torch.Generator`` / :class:`DeviceGenerator` objects. Default: ``()``.
        default: Include torch's default CPU generator. Default: ``True``.

    Example:
        >>> state = RNGState()
        >>> saved = state.state_dict()
        >>> a = draw_seed()
        >>> state.load_state_dict(saved)
        >>> a == draw_seed()
        True
    """

    def __init__(
        self,
        module: torch.nn.Module | None = None,
        generators: Sequence[torch.Generator | DeviceGenerator] = (),
        *,
        default: bool = True,
    ) -> None:
        self.module = module
        self.generators = list(generators)
        self.default = default

    def _all(self) -> list[tuple[str, torch.Generator | DeviceGenerator]]:
        found: list[tuple[str, torch.Generator | DeviceGenerator]] = []
        seen: set[int] = set()
        if self.module is not None:
            for name, sub in self.module.named_modules():
                gen = getattr(sub, "generator", None)
                if isinstance(gen, (torch.Generator, DeviceGenerator)) and id(gen) not in seen:
                    seen.add(id(gen))
                    found.append((f"module:{name}", gen))
        for i, gen in enumerate(self.generators):
            if id(gen) not in seen:
                seen.add(id(gen))
                found.append((f"generator:{i}", gen))
        return found

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Return the generator states (tensors), keyed by where each generator was found."""
        states = {"torch.default": torch.get_rng_state()} if self.default else {}
        for name, gen in self._all():
            states[name] = gen.get_state().clone()
        return states

    def load_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Restore states returned by :meth:`state_dict` (the same model layout); missing keys raise ``KeyError``."""
        from . import _validate

        expected = (["torch.default"] if self.default else []) + [name for name, _ in self._all()]
        _validate.state_keys("RNGState.load_state_dict", expected, state_dict)
        if self.default:
            torch.set_rng_state(state_dict["torch.default"])
        for name, gen in self._all():
            gen.set_state(state_dict[name])
