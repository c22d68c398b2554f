"""Kernel dispatch: one place that picks how a seeded mask is generated and applied.

Internal, not re-exported. Backends:

- ``triton``: Triton kernels (:mod:`dropkit.kernels.triton`) for contiguous float32 / float16 / bfloat16
  CUDA tensors. Imported on first use only, so a CPU-only install never imports Triton.
- ``numba``: numba kernels (:mod:`dropkit.kernels.cpu`), fused mask generation and apply for contiguous
  float32 / float64 / bfloat16 CPU tensors; mask generation for other CPU cases.
- ``reference``: torch ops (:mod:`dropkit.kernels.reference`), any device and dtype.

:func:`select` is the one dispatch: it names the backend a tensor goes to. ``DROPKIT_CPU_BACKEND``
(``auto`` | ``numba`` | ``reference``) or :func:`use_backend` force a choice; ``auto`` takes numba on CPU
and Triton on CUDA when they import, and the reference otherwise; ``reference`` forces the reference on
every device. All give identical masks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..rng import _seen_by_mode
from .reference import keep_mask_ref, masked_affine_ref

__all__ = ["MaskSpec", "apply", "keep_mask", "backend", "select", "use_backend"]

_BACKENDS = ("auto", "numba", "reference", "triton")
_forced: str | None = None


@dataclass(frozen=True)
class MaskSpec:
    """Everything needed to (re)generate and apply one call's mask: O(1) bytes whatever the tensor size.

    Element ``m`` of the mask (row-major over the leading ``mask_dims`` dimensions of the input) is kept
    iff ``fold(w0(seed, offset + m)) >= threshold``; kept elements map to ``x * scale + bias``, dropped
    ones to ``fill``; the mask broadcasts over the remaining dimensions.
    """

    seed: int
    offset: int
    threshold: int
    scale: float
    bias: float = 0.0
    fill: float = 0.0
    mask_dims: int = -1  # -1: every dimension (element-wise)
    state: torch.Tensor | None = None  # int64 (seed, offset) on the device: read there instead of seed/offset
    shard: tuple[tuple[int, int, int], ...] | None = None  # (dim, start, size) per sharded dimension
    p: float | None = None  # while tracing with a symbolic p: threshold is -1, derived from p at run time

    def resolved(self) -> MaskSpec:
        """Return the spec with ``state`` read into ``seed`` and ``offset`` (a host sync on CUDA)."""
        if self.state is None:
            return self
        seed, base = (int(v) for v in self.state.tolist())
        return dataclasses.replace(self, seed=seed % 2**64, offset=base + self.offset, state=None)

    def mask_shape(self, shape: torch.Size) -> tuple[int, ...]:
        """Return the broadcastable mask shape for an input of ``shape``."""
        k = len(shape) if self.mask_dims < 0 else self.mask_dims
        return tuple(shape[:k]) + (1,) * (len(shape) - k)

    def linear(self) -> MaskSpec:
        """Return the spec of the derivative: the same mask, kept elements scaled, no bias, dropped to 0."""
        if self.bias == 0.0 and self.fill == 0.0:  # dropout's own spec (every backward): no copy to make
            return self
        return dataclasses.replace(self, bias=0.0, fill=0.0)


def _requested() -> str:
    """The CPU backend asked for: :func:`use_backend`'s, else ``DROPKIT_CPU_BACKEND``, else ``auto``."""
    return _forced or os.environ.get("DROPKIT_CPU_BACKEND", "auto")


def backend() -> str:
    """Return the CPU backend in force: ``numba``, ``reference``, or ``triton`` (Triton's interpreter, for tests)."""
    choice = _requested()
    if choice not in _BACKENDS:
        raise ValueError(f"DROPKIT_CPU_BACKEND must be one of {', '.join(_BACKENDS)}, but got {choice!r}.")
    if choice in ("reference", "triton"):
        if choice == "triton" and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("triton backend on CPU tensors needs Triton's interpreter: set TRITON_INTERPRET=1.")
        return choice
    if not _importable("cpu"):
        if choice == "numba":
            raise RuntimeError("numba backend requested but numba is not installed (pip install numba).")
        return "reference"
    return "numba"


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force the backend (``auto``, ``numba``, ``reference`` or ``triton``) inside a ``with`` block.

    ``reference`` applies to every device; ``numba`` and ``triton`` (Triton's interpreter) to CPU tensors.
    """
    global _forced
    if name not in _BACKENDS:
        raise ValueError(f"use_backend: name must be one of {', '.join(map(repr, _BACKENDS))}, but got {name!r}.")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


_imports: dict[str, bool] = {}


def _importable(module: str) -> bool:
    """Whether ``dropkit.kernels.<module>`` (``cpu``: numba's kernels; ``triton``) imports; checked once.

    A plain dict and import statements, not ``functools.cache`` and ``importlib``: dynamo traces this function,
    warns on cached functions and refuses ``importlib`` calls.
    """
    known = _imports.get(module)
    if known is None:
        try:
            if module == "cpu":
                from . import cpu  # noqa: F401
            else:
                from . import triton  # noqa: F401
            known = True
        except ImportError:
            known = False
        _imports[module] = known
    return known


def select(x: torch.Tensor) -> str:
    """Return the backend that takes ``x``: ``triton``, ``numba`` or ``reference``."""
    return _select(x.device, x.dtype)


def _select(device: torch.device, dtype: torch.dtype) -> str:
    if device.type == "cpu" and torch.compiler.is_compiling() and _requested() != "triton":
        # traced: only "triton or not" matters, the host custom op loads the CPU kernels when it runs; loading
        # them now could fail (torch.export's non-strict tracing patches the math module numba registers from)
        return "reference"
    choice = backend()
    if device.type == "cpu" and choice != "triton":
        return "reference" if choice == "numba" and _seen_by_mode() else choice
    if device.type in ("cuda", "cpu") and choice != "reference" and _importable("triton"):
        from . import triton

        if dtype in triton.DTYPES:
            return "triton"
    return "reference"


def _place(spec: MaskSpec, mask_shape: tuple[int, ...]) -> MaskSpec:
    """Return ``spec`` with shards the mask broadcasts over dropped, and one leading shard made a plain offset."""
    if spec.shard is None:
        return spec
    k = len(mask_shape) if spec.mask_dims < 0 else min(spec.mask_dims, len(mask_shape))
    shards = tuple(part for part in spec.shard if part[0] < k)
    if len(shards) == 1 and math.prod(mask_shape[: shards[0][0]]) == 1:  # one contiguous run of global indices
        dim, start, _ = shards[0]
        return dataclasses.replace(spec, offset=spec.offset + start * math.prod(mask_shape[dim + 1 :]), shard=None)
    return dataclasses.replace(spec, shard=shards or None)


def _sharded_keep_mask(spec: MaskSpec, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Keep mask of a shard: the mask of the span of global indices it covers, gathered at its elements' indices."""
    sizes, starts = list(shape), [0] * len(shape)
    for dim, start, size in spec.shard:  # type: ignore[union-attr]
        sizes[dim], starts[dim] = size, start
    strides = [math.prod(sizes[k + 1 :]) for k in range(len(shape))]
    index = torch.zeros((), dtype=torch.int64, device=device)
    for k, n in enumerate(shape):
        axis = (torch.arange(n, dtype=torch.int64, device=device) + starts[k]) * strides[k]
        index = index.unsqueeze(-1) + axis
    if index.numel() == 0:
        return torch.zeros(shape, dtype=torch.bool, device=device)
    low = sum(s * t for s, t in zip(starts, strides, strict=True))
    span = int(index.max()) - low + 1
    flat = keep_mask(dataclasses.replace(spec, offset=spec.offset + low, shard=None), (span,), device)
    return flat[index - low].reshape(shape)


def keep_mask(spec: MaskSpec, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Return the bool keep mask of ``spec`` with the given (mask) shape."""
    numel = math.prod(shape)
    device = torch.device(device)
    spec = _place(spec, tuple(shape))
    if torch.compiler.is_compiling():
        if spec.shard is not None or spec.p is not None or _select(device, torch.float32) != "triton":
            from . import ops

            return ops.keep_mask(spec, tuple(shape), device)
        from . import ops

        spec = ops.traced_state(spec, device)
    if spec.shard is not None:
        return _sharded_keep_mask(spec, tuple(shape), device)
    if _select(device, torch.float32) == "triton":
        from . import triton

        ones = torch.ones(numel, device=device)
        spec = spec.linear()
        kept = triton.masked_affine(ones, spec.seed, spec.offset, spec.threshold, 1.0, state=spec.state)
        return kept.ne(0).reshape(shape)
    spec = spec.resolved()
    if device.type == "cpu" and _select(device, torch.float32) == "numba":
        return _cpu().keep_mask(numel, spec.seed, spec.offset, spec.threshold).reshape(shape)
    return keep_mask_ref(numel, spec.seed, spec.offset, spec.threshold, device).reshape(shape)


def apply(
    x: torch.Tensor,
    spec: MaskSpec,
    out: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the masked affine map of ``x`` under ``spec``, written into ``out`` when given (``out`` may be ``x``).

    With ``bias`` (shape ``(x.shape[-1],)``) and ``residual`` (shape of ``x``), element-wise specs only, return
    ``residual + map(x + bias)`` (fused on the Triton path).
    """
    if spec.shard is not None:
        spec = _place(spec, spec.mask_shape(x.shape))  # a leading shard (an MC sample's rows) becomes an offset
    if (  # the eager CPU path in one test: it runs per call of every op, so its Python cost counts on small inputs
        bias is None
        and residual is None
        and spec.state is None
        and spec.shard is None
        and spec.p is None
        and x.device.type == "cpu"
        and x.dtype in _NUMBA_DTYPES
        and x.is_contiguous()
        and (out is None or out.is_contiguous())
        and not torch.compiler.is_compiling()
        and backend() == "numba"
        and not _wrapped(x)
    ):
        cpu = _cpu()
        row = (math.prod(x.shape[spec.mask_dims :]) or 1) if spec.mask_dims >= 0 else 1
        dst = cpu.advise_huge_pages(torch.empty_like(x, memory_format=torch.contiguous_format)) if out is None else out
        cpu.masked_affine(x, dst, spec.seed, spec.offset, spec.threshold, spec.scale, spec.bias, spec.fill, row)
        return dst
    mask_shape = spec.mask_shape(x.shape)
    row = x.numel() // max(1, math.prod(mask_shape))
    which = "reference" if spec.shard is not None or _wrapped(x) else select(x)
    if torch.compiler.is_compiling():  # one traceable node: custom ops for the host path, triton_op on the GPU
        from . import ops

        dense = x.is_contiguous() and all(t is None or t.is_contiguous() for t in (out, residual))
        if which != "triton" or not dense or spec.p is not None:
            if bias is not None or residual is not None:
                y = ops.masked_affine(x if bias is None else x + bias, spec)
                y = y if residual is None else y + residual
            else:
                y = ops.masked_affine(x, spec)
            return y if out is None else out.copy_(y)
        spec = ops.traced_state(spec, x.device)
    contiguous = x.is_contiguous() and (out is None or out.is_contiguous())
    if which == "triton" and contiguous and (residual is None or residual.is_contiguous()):
        from . import triton

        b = None if bias is None else bias.contiguous()
        return triton.masked_affine(
            x, spec.seed, spec.offset, spec.threshold, spec.scale, spec.bias, spec.fill, row,
            out=out, residual=residual, bias=b, state=spec.state,
        )
    if bias is not None or residual is not None:
        y = apply(x if bias is None else x + bias, spec)
        return y if residual is None else y + residual
    spec = spec.resolved()
    if which == "numba" and contiguous and _numba_takes(x.dtype):
        cpu = _cpu()
        dst = torch.empty_like(x, memory_format=torch.contiguous_format) if out is None else out
        cpu.masked_affine(x, dst, spec.seed, spec.offset, spec.threshold, spec.scale, spec.bias, spec.fill, row)
        return dst
    with plain_draws(x):
        keep = keep_mask(spec, mask_shape, x.device)
    result = masked_affine_ref(x, keep, spec.scale, spec.bias, spec.fill)
    return result if out is None else out.copy_(result)


_cpu_module = None


def _cpu():
    """:mod:`dropkit.kernels.cpu` (numba's kernels), imported on first use."""
    global _cpu_module
    if _cpu_module is None:
        from . import cpu

        _cpu_module = cpu
    return _cpu_module


def _wrapped(x: torch.Tensor) -> bool:
    """Whether ``x`` must go through torch ops: it has no storage of its own, or a mode watches the ops.

    A torch.func transform's wrapper, a batched grad (``torch.autograd.grad(..., is_grads_batched=True)``,
    gradcheck's ``check_batched_grad``), a tensor subclass that handles ops in ``__torch_dispatch__``
    (wrapper subclasses such as torch's ``TwoTensor``), or any tensor while a Python dispatch mode runs
    (:func:`dropkit.rng._seen_by_mode`).
    False while torch traces: that check comes first, so dynamo never sees the pybind functions, which it
    cannot trace.
    """
    return not torch.compiler.is_compiling() and (
        torch._C._functorch.is_functorch_wrapped_tensor(x)
        or torch._C._functorch.is_legacy_batchedtensor(x)
        or type(x).__torch_dispatch__ is not torch._C._disabled_torch_dispatch_impl
        or _seen_by_mode()
    )


def plain_draws(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Context in which the masks and noise drawn for ``x`` are plain tensors.

    torch.func is switched off while ``x`` is a transform's wrapper: the draw is one plain tensor, and the ops'
    own vmap rules decide how the slices share it.
    """
    return torch._C._DisableFuncTorch() if _wrapped(x) else contextlib.nullcontext()


#: :data:`dropkit.kernels.cpu.DTYPES`, without importing numba.
_NUMBA_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _numba_takes(dtype: torch.dtype) -> bool:
    return dtype in _cpu().DTYPES


def fused_norm(x: torch.Tensor) -> bool:
    """Return whether the fused dropout + add + norm kernels take ``x`` (rows of ``x.shape[-1]``)."""
    if select(x) != "triton":
        return False
    from . import triton

    return x.shape[-1] <= triton.MAX_NORM_COLS


def _spec_args(spec: MaskSpec | None, device: torch.device) -> tuple:
    if spec is None:
        return None, 0, 0, 0, 1.0, False
    if torch.compiler.is_compiling() or isinstance(spec.seed, torch.Tensor):
        from . import ops

        spec = ops.traced_state(spec, device)
    return spec.state, spec.seed, spec.offset, spec.threshold, spec.scale, True


def norm_forward(x, residual, weight, bias, rowscale, spec, eps, is_rms, residual_dtype):
    """Fused ``h = dropout(x * rowscale) + residual``, ``y = norm(h)`` on 2-D tensors: ``(y, h, mean, rstd)``."""
    from . import triton

    state, seed, offset, threshold, scale, dropout = _spec_args(spec, x.device)
    return triton.dropout_add_norm_fwd(
        x, residual, weight, bias, rowscale, state, seed, offset, threshold, scale, eps, is_rms, dropout, x.dtype,
        residual_dtype,
    )


def norm_backward(dy, h, weight, has_bias, rowscale, mean, rstd, dh, spec, is_rms, x_dtype, residual_dtype):
    """Backward of :func:`norm_forward`, the dropout mask regenerated: ``(dx, dresidual, dweight, dbias)``."""
    from . import triton

    state, seed, offset, threshold, scale, dropout = _spec_args(spec, dy.device)
    return triton.dropout_add_norm_bwd(
        dy, h, weight, has_bias, rowscale, mean, rstd, dh, state, seed, offset, threshold, scale, is_rms, dropout,
        x_dtype, residual_dtype,
    )
