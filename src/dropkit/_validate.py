"""Argument validation for every public dropkit entry point, and all of its error messages.

Messages follow one format, ``"<op>: <argument> must be <expectation>, but got <value!r>."``.
Bad values raise ``ValueError``, bad types ``TypeError``; range checks are written so NaN fails.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings

import torch

__all__ = ["ShapeError", "probability", "real", "tensor_input", "seed_source", "choice", "warn", "shard", "rank"]

_SEED_LIMIT = 2**64
#: Source directories whose frames a warning skips (see :func:`warn`): dropkit's and torch's.
_INSIDE = (os.path.dirname(__file__) + os.sep, os.path.dirname(torch.__file__) + os.sep)


class ShapeError(ValueError, RuntimeError):
    """An input of the wrong rank or shape.

    A ``ValueError`` as dropkit's style asks, and a ``RuntimeError`` too, because that is what torch
    raises for the same input (``F.dropout1d`` on a 4-D tensor), so code written against torch keeps working.
    """


def _fail(op: str, name: str, expectation: str, value: object, exc: type[Exception] = ValueError) -> Exception:
    return exc(f"{op}: {name} must be {expectation}, but got {value!r}.")


def real(op: str, name: str, value: object) -> float:
    """Return ``value`` as a float, or raise ``TypeError`` if it is not a real number (bools are refused)."""
    if type(value) is float:  # the common case, first: this runs on every op call
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _fail(op, name, "a real number", value, TypeError)
    return float(value)


def probability(op: str, p: object, keep: object = None, *, default: float = 0.5, allow_one: bool = True) -> float:
    """Return the drop probability from ``p`` or its keep-probability spelling ``keep``.

    Args:
        op: Name of the calling op, for messages.
        p: Drop probability.
        keep: Keep probability (``1 - p``), or ``None``. Mutually exclusive with a non-default ``p``.
        default: The signature's default of ``p``, to tell an explicit ``p`` from the default.
        allow_one: Whether ``p = 1`` (``keep = 0``) is allowed.

    Raises:
        TypeError: If ``p`` or ``keep`` is not a real number.
        ValueError: If it is out of range (NaN included) or both are given.
    """
    upper = "[0, 1]" if allow_one else "[0, 1)"
    if keep is not None:
        keep_value = real(op, "keep", keep)
        if real(op, "p", p) != default:
            raise ValueError(f"{op}: pass either p or keep, not both, but got p={p!r} and keep={keep!r}.")
        if not (0.0 <= keep_value <= 1.0) or (not allow_one and keep_value == 0.0):
            raise _fail(op, "keep", "in [0, 1]" if allow_one else "in (0, 1]", keep)
        return 1.0 - keep_value
    value = real(op, "p", p)
    if not (0.0 <= value <= 1.0) or (not allow_one and value == 1.0):
        raise _fail(op, "p", f"in {upper}", p)
    return value


def nonnegative(op: str, name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite real number ``>= 0``."""
    number = real(op, name, value)
    if not (0.0 <= number < math.inf):
        raise _fail(op, name, "a finite number >= 0", value)
    return number


def tensor_input(op: str, x: object, training: bool, p: float = 1.0, nested: bool = False) -> None:
    """Check that ``x`` is a tensor, and a floating-point or complex one when it will be transformed.

    It is not at ``p = 0`` or when empty: there the input comes back as it is, of any dtype, as in torch. A
    nested tensor that will be transformed is refused unless the op takes them (``nested``: element-wise
    ``dropout``).
    """
    if not isinstance(x, torch.Tensor):
        raise _fail(op, "input", "a torch.Tensor", type(x).__name__, TypeError)
    if training and p > 0.0 and x.numel() > 0:
        if not (x.is_floating_point() or x.is_complex()):
            raise _fail(op, "input", "a floating-point tensor in training", x.dtype, TypeError)
        if x.is_nested and not nested:
            raise ShapeError(f"{op}: nested tensors take element-wise dropout() only; unbind() them for {op}.")


def seed_source(op: str, seed: object, generator: object, device_generator: bool = True) -> None:
    """Check ``seed`` (an int in ``[0, 2^64)``) and ``generator``; at most one may be set.

    ``generator`` is a ``torch.Generator`` or, for ops whose masks run on the shared kernels
    (``device_generator=True``), a :class:`dropkit.rng.DeviceGenerator`.
    """
    if seed is None and generator is None:  # the common case, first: this runs on every op call
        return
    from . import rng

    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise _fail(op, "seed", "an int", seed, TypeError)
        if not (0 <= int(seed) < _SEED_LIMIT):
            raise _fail(op, "seed", "in [0, 2**64)", seed)
    allowed = (torch.Generator, rng.DeviceGenerator) if device_generator else (torch.Generator,)
    if generator is not None and not isinstance(generator, allowed):
        expected = "a torch.Generator or a dropkit.rng.DeviceGenerator" if device_generator else "a torch.Generator"
        raise _fail(op, "generator", expected, type(generator).__name__, TypeError)
    if seed is not None and generator is not None:
        raise ValueError(f"{op}: pass either seed or generator, not both.")


def choice(op: str, name: str, value: object, allowed: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``allowed``."""
    if value not in allowed:
        raise _fail(op, name, "one of " + ", ".join(repr(a) for a in allowed), value)
    return value  # type: ignore[return-value]


def min_dim(op: str, x: torch.Tensor, ndim: int, layout: str) -> None:
    """Raise ``ShapeError`` if ``x`` has fewer than ``ndim`` dimensions."""
    if x.dim() < ndim:
        plural = "s" if ndim > 1 else ""
        torch_words = " Feature dropout requires at least 2 dimensions in the input." if ndim == 2 else ""
        raise ShapeError(
            f"{op}: input must have at least {ndim} dimension{plural} {layout}, but got a {x.dim()}-D input."
            f"{torch_words} Use dropout() for per-element dropout."
        )


def warn(message: str) -> None:
    """Emit a ``UserWarning`` attributed to the user's line: the first caller outside dropkit and torch.

    Between the two lie the op's helpers, its ``__torch_function__`` wrapper, torch's override machinery (a
    mode, a tensor subclass) and, for a module, torch's ``Module.__call__``: their number varies.
    """
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_INSIDE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level + 1)


def matching(op: str, name: str, tensor: object, shape: tuple[int, ...], like: torch.Tensor) -> None:
    """Check that the optional ``tensor`` has ``shape`` and ``like``'s device (``None`` passes)."""
    if tensor is None:
        return
    if not isinstance(tensor, torch.Tensor):
        raise _fail(op, name, "a torch.Tensor or None", type(tensor).__name__, TypeError)
    if tuple(tensor.shape) != tuple(shape):
        raise ShapeError(f"{op}: {name} must have shape {tuple(shape)}, but got {tuple(tensor.shape)}.")
    if tensor.device != like.device:
        raise ValueError(f"{op}: {name} must be on {like.device}, like the input, but got {tensor.device}.")


# --- weight-level, learned and scheduled dropout (issue 4, items 3-7) -----------------------------------------------


def count(op: str, name: str, value: object, minimum: int = 0) -> int:
    """Return ``value`` if it is an int ``>= minimum`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(op, name, "an int", value, TypeError)
    if int(value) < minimum:
        raise _fail(op, name, f"an int >= {minimum}", value)
    return int(value)


def positive(op: str, name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite real number ``> 0``."""
    number = real(op, name, value)
    if not (0.0 < number < math.inf):
        raise _fail(op, name, "a finite number > 0", value)
    return number


def open_unit(op: str, name: str, value: object) -> float:
    """Return ``value`` as a float if it lies in the open interval ``(0, 1)``."""
    number = real(op, name, value)
    if not (0.0 < number < 1.0):
        raise _fail(op, name, "in (0, 1)", value)
    return number


def module(op: str, value: object, name: str = "module") -> None:
    """Check that ``value`` (the argument ``name``) is a ``torch.nn.Module``."""
    if not isinstance(value, torch.nn.Module):
        raise _fail(op, name, "a torch.nn.Module", type(value).__name__, TypeError)


def parameter_names(op: str, module: torch.nn.Module, names: object) -> tuple[str, ...]:
    """Return ``names`` (a str or a sequence of str) as a tuple after checking each names a parameter of ``module``."""
    names = (names,) if isinstance(names, str) else names
    if not isinstance(names, (tuple, list)) or not names or not all(isinstance(n, str) for n in names):
        raise _fail(op, "weights", "a non-empty sequence of parameter names", names, TypeError)
    owned = dict(module.named_parameters())
    for name in names:
        if name not in owned:
            raise ValueError(
                f"{op}: module must have a parameter named {name!r}, but got {type(module).__name__} with "
                f"parameters {sorted(owned)!r}."
            )
    return tuple(names)


def tensor_pair(op: str, a: object, b: object) -> None:
    """Check that ``a`` and ``b`` are floating-point tensors of the same shape."""
    for name, value in (("logits1", a), ("logits2", b)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            shown = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            raise _fail(op, name, "a floating-point torch.Tensor", shown, TypeError)
    if a.shape != b.shape:  # type: ignore[union-attr]
        raise _fail(op, "logits2", f"of the same shape as logits1 {tuple(a.shape)}", tuple(b.shape))  # type: ignore


def unit(op: str, name: str, value: object) -> float:
    """Return ``value`` as a float if it lies in ``[0, 1]`` (NaN fails)."""
    number = real(op, name, value)
    if not (0.0 <= number <= 1.0):
        raise _fail(op, name, "in [0, 1]", value)
    return number


def not_below(op: str, name: str, value: object, other_name: str, other: object) -> None:
    """Raise ``ValueError`` unless ``value >= other`` (``name`` must be ``>= other_name``)."""
    if not value >= other:  # type: ignore[operator]
        raise _fail(op, name, f">= {other_name} ({other!r})", value)


def required(op: str, name: str, value: object, expectation: str, context: str) -> None:
    """Raise ``ValueError`` if an argument that ``context`` needs is ``None``."""
    if value is None:
        raise _fail(op, name, f"{expectation} {context}", None)


def contains(op: str, model: object, found: bool, what: str) -> None:
    """Raise ``ValueError`` if ``model`` holds no ``what`` (``found`` is false)."""
    if not found:
        raise ValueError(f"{op}: model must contain {what}, but got {type(model).__name__} with none.")


def same_keys(op: str, name: str, got: object, expected: object) -> None:
    """Raise ``ValueError`` if the sorted keys ``got`` differ from ``expected``."""
    if sorted(got) != sorted(expected):  # type: ignore[call-overload]
        raise _fail(op, name, f"the keys {sorted(expected)!r}", sorted(got))  # type: ignore[call-overload]


def batched(op: str, name: str, value: object) -> None:
    """Raise ``TypeError`` unless ``value`` is a tensor with at least one dimension."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        shown = "a 0-D tensor" if isinstance(value, torch.Tensor) else type(value).__name__
        raise _fail(op, name, "a batched torch.Tensor (N, *)", shown, TypeError)


def warn_here(message: str) -> None:
    """Emit a ``UserWarning`` attributed to the line that called the caller (a ``with`` statement, a constructor)."""
    warnings.warn(message, UserWarning, stacklevel=3)


def bool_mask(op: str, name: str, value: object) -> None:
    """Raise ``TypeError`` unless ``value`` is a bool tensor."""
    if not isinstance(value, torch.Tensor) or value.dtype != torch.bool:
        shown = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
        raise _fail(op, name, "a bool torch.Tensor", shown, TypeError)


# ---------------------------------------------------------------------------------------------------------------
# structured dropout (stochastic depth, DropPath, DropBlock): issue 4, items 1-2


def flag(op: str, name: str, value: object) -> bool:
    """Return ``value`` if it is a bool (or a numpy/torch bool scalar), else raise ``TypeError``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype == torch.bool:
        value = bool(value.item())
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool", "bool_"):  # numpy's bool (1.x, 2.x)
        value = bool(value)
    if not isinstance(value, bool):
        raise _fail(op, name, "a bool", value, TypeError)
    return value


def positive_int(op: str, name: str, value: object) -> int:
    """Return ``value`` as an int if it is an integer ``>= 1`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _fail(op, name, "an int", value, TypeError)
    if int(value) < 1:
        raise _fail(op, name, "an int >= 1", value)
    return int(value)


def exact_rank(op: str, x: torch.Tensor, ndim: int, layout: str, hint: str = "") -> None:
    """Raise ``ShapeError`` unless ``x`` has exactly ``ndim`` dimensions (``layout`` names them)."""
    if x.dim() != ndim:
        raise ShapeError(f"{op}: input must be a {ndim}-D tensor {layout}, but got a {x.dim()}-D input.{hint}")


def has_batch_dim(op: str, x: torch.Tensor, hint: str = "") -> None:
    """Raise ``ShapeError`` if ``x`` has no batch dimension (a 0-D tensor)."""
    if x.dim() < 1:
        raise ShapeError(f"{op}: input must have a batch dimension (N, *), but got a 0-D input.{hint}")


def depths(op: str, value: object) -> tuple[tuple[int, ...], bool]:
    """Return ``(depths, staged)``: an int gives one stage (``staged=False``), a sequence one int ``>= 0`` per stage."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if int(value) < 0:
            raise _fail(op, "depths", "an int >= 0 or a sequence of them", value)
        return (int(value),), False
    if isinstance(value, torch.Size) or isinstance(value, (list, tuple)):
        items = tuple(value)
        if all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and int(d) >= 0 for d in items):
            return tuple(int(d) for d in items), True
        raise _fail(op, "depths", "an int >= 0 or a sequence of them", value)
    raise _fail(op, "depths", "an int or a sequence of ints", value, TypeError)


def same_shape(op: str, name: str, got: torch.Size, expected: torch.Size) -> None:
    """Raise ``ValueError`` if a computed tensor's shape differs from the one required."""
    if tuple(got) != tuple(expected):
        raise ValueError(f"{op}: {name} must have shape {tuple(expected)}, but got {tuple(got)}.")


def callable_(op: str, name: str, value: object) -> None:
    """Raise ``TypeError`` if ``value`` is not callable."""
    if not callable(value):
        raise _fail(op, name, "callable", type(value).__name__, TypeError)


def alias(op: str, name: str, value: object, other: str, other_value: object, default: object) -> object:
    """Return ``other_value`` when the alternative spelling ``other`` is used, else ``value``; not both."""
    if other_value is None:
        return value
    if value != default:
        raise ValueError(f"{op}: pass either {name} or {other}, not both.")
    return other_value


# --- recurrent dropout (nn.recurrent): LSTM / GRU rates, WeightDrop, zoneout ---------------------------------------


def rate(op: str, name: str, value: object) -> float:
    """Return ``value`` as a float if it is a real number in ``[0, 1]`` (NaN fails); name the argument otherwise."""
    number = real(op, name, value)
    if not (0.0 <= number <= 1.0):
        raise _fail(op, name, "in [0, 1]", value)
    return number


def recurrent_mode(op: str, mode: str, recurrent_dropout: float) -> None:
    """Refuse ``mode='classic'`` with recurrent dropout: test-time scaling of the fed-back state has no exact eval."""
    if mode != "inverted" and recurrent_dropout > 0:
        raise ValueError(
            f"{op}: mode must be 'inverted' when recurrent_dropout > 0, but got {mode!r}. Scaling the fed-back "
            "state by (1 - p) at test time does not give the expected training output of a recurrence; use "
            "mode='inverted' (or recurrent_dropout=0)."
        )


def weight_names(op: str, value: object, available: list[str]) -> list[str]:
    """Return ``value`` as a non-empty list of names, each one of ``available`` (a module's parameter names)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise _fail(op, "weights", "a non-empty list of parameter names", value, TypeError)
    for name in value:
        if not isinstance(name, str) or name not in available:
            raise _fail(op, "weights", "names of the module's parameters (" + ", ".join(available) + ")", name)
    return list(value)


# --- the RNG contract: shards, ranks, checkpointable state (issue 9) ---------------------------------------------


def shard(op: str, dim: object, start: object, size: object) -> tuple[int, int, int]:
    """Return ``(dim, start, size)`` of a shard declaration: ints, ``start >= 0``, ``size >= 1``."""
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise _fail(op, "dim", "an int", dim, TypeError)
    return int(dim), count(op, "start", start), count(op, "size", size, 1)


def shard_fits(op: str, shape: tuple[int, ...], dim: int, start: int, size: int) -> int:
    """Return ``dim`` made non-negative for an input of ``shape``; raise if the shard does not fit ``size``."""
    if not -len(shape) <= dim < max(len(shape), 1):
        raise ShapeError(
            f"{op}: shard dim must be in [{-len(shape)}, {len(shape) - 1}] for a {len(shape)}-D input, but got {dim}."
        )
    dim = dim % len(shape)
    if start + shape[dim] > size:
        raise ShapeError(
            f"{op}: shard [start, start + n) must lie in [0, size) along dim {dim}, but got start={start}, "
            f"n={shape[dim]}, size={size}."
        )
    return dim


def rank(op: str, name: str, value: object) -> int:
    """Return a process rank: an int ``>= 0``."""
    return count(op, name, value)


def state_keys(op: str, expected: list[str], state_dict: object) -> None:
    """Raise ``TypeError`` unless ``state_dict`` is a dict, ``KeyError`` naming the first missing key."""
    if not isinstance(state_dict, dict):
        raise _fail(op, "state_dict", "a dict", type(state_dict).__name__, TypeError)
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise KeyError(f"{op}: state_dict must hold the keys {expected!r}, but got no {missing[0]!r}.")


def noise_shape(op: str, value: object, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Return Keras' ``noise_shape`` resolved against the input ``shape``: ``None`` entries take the input's size.

    Every entry must be ``None``, ``1`` or the input's size along that dimension (the mask broadcasts).
    """
    value = noise_shape_arg(op, value)
    if len(value) != len(shape):
        raise ShapeError(
            f"{op}: noise_shape must have one entry per input dimension ({len(shape)}), but got {tuple(value)!r} "
            f"for an input of shape {tuple(shape)}."
        )
    resolved = []
    for i, (entry, size) in enumerate(zip(value, shape, strict=True)):
        if entry is None:
            entry = size
        if int(entry) not in (1, size):  # an int >= 0 already (noise_shape_arg)
            raise ShapeError(
                f"{op}: noise_shape[{i}] must be None, 1 or the input's size {size}, but got {entry!r} "
                f"(noise_shape {tuple(value)!r}, input shape {tuple(shape)})."
            )
        resolved.append(int(entry))
    return tuple(resolved)


def noise_shape_arg(op: str, value: object, least: int = 0) -> tuple[int | None, ...] | None:
    """Return ``noise_shape`` as a tuple (``None`` passes); its entries are checked against the input later.

    ``least``: the smallest int entry, ``0`` for a call (``x.shape`` of an empty ``x`` matches), ``1`` for a module's
    constructor, as Keras' layers refuse a zero there.
    """
    if value is None:
        return None
    if not isinstance(value, (tuple, list, torch.Size)):
        raise _fail(op, "noise_shape", "a tuple of ints (or None entries) or None", value, TypeError)
    for i, entry in enumerate(value):  # what no input can match is refused at once (a module: at construction)
        if entry is not None and (isinstance(entry, bool) or not isinstance(entry, numbers.Integral) or entry < least):
            raise ShapeError(
                f"{op}: noise_shape[{i}] must be None or an int >= {least} (1 or the input's size along that "
                f"dimension), but got {entry!r} (noise_shape {tuple(value)!r})."
            )
    return tuple(value)
