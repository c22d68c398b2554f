"""Argument validation for every public dropkit entry point, and all of its error messages.

Messages follow one format, ``"<op>: <argument> must be <expectation>, but got <value!r>."``.
Bad values raise ``ValueError``, bad types ``TypeError``; range checks are written so NaN fails.
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch

__all__ = ["ShapeError", "probability", "real", "tensor_input", "seed_source", "choice", "warn"]

_SEED_LIMIT = 2**64


class ShapeError(ValueError, RuntimeError):
    """An input of the wrong rank or shape.

    A ``ValueError`` as dropkit's style asks, and a ``RuntimeError`` too, because that is what torch
    raises for the same input (``F.dropout1d`` on a 4-D tensor), so code written against torch keeps working.
    """


def _fail(op: str, name: str, expectation: str, value: object, exc: type[Exception] = ValueError) -> Exception:
    return exc(f"{op}: {name} must be {expectation}, but got {value!r}.")


def real(op: str, name: str, value: object) -> float:
    """Return ``value`` as a float, or raise ``TypeError`` if it is not a real number (bools are refused)."""
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


def tensor_input(op: str, x: object, training: bool) -> None:
    """Check that ``x`` is a tensor, and a floating-point or complex one when it will be transformed."""
    if not isinstance(x, torch.Tensor):
        raise _fail(op, "input", "a torch.Tensor", type(x).__name__, TypeError)
    if training and not (x.is_floating_point() or x.is_complex()):
        raise _fail(op, "input", "a floating-point tensor in training", x.dtype, TypeError)


def seed_source(op: str, seed: object, generator: object) -> None:
    """Check ``seed`` (an int in ``[0, 2^64)``) and ``generator`` (a ``torch.Generator``); at most one may be set."""
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise _fail(op, "seed", "an int", seed, TypeError)
        if not (0 <= int(seed) < _SEED_LIMIT):
            raise _fail(op, "seed", "in [0, 2**64)", seed)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise _fail(op, "generator", "a torch.Generator", type(generator).__name__, TypeError)
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
    """Emit a ``UserWarning`` attributed to the caller of the public function."""
    warnings.warn(message, UserWarning, stacklevel=4)


# ---------------------------------------------------------------------------------------------------------------
# structured dropout (stochastic depth, DropPath, DropBlock): issue 4, items 1-2


def flag(op: str, name: str, value: object) -> bool:
    """Return ``value`` if it is a bool (or a numpy/torch bool scalar), else raise ``TypeError``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype == torch.bool:
        value = bool(value.item())
    if type(value).__name__ == "bool_":  # numpy's bool
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


def batched(op: str, x: torch.Tensor, hint: str = "") -> None:
    """Raise ``ShapeError`` if ``x`` has no batch dimension (a 0-D tensor)."""
    if x.dim() < 1:
        raise ShapeError(f"{op}: input must have a batch dimension (N, *), but got a 0-D input.{hint}")


def block_fits(op: str, block_size: int, spatial: tuple[int, ...]) -> None:
    """Raise ``ValueError`` if a ``block_size`` block does not fit in the spatial dimensions ``spatial``."""
    smallest = min(spatial)
    if block_size > smallest:
        raise ValueError(
            f"{op}: block_size must be <= the smallest spatial dimension of the input ({smallest}, of spatial "
            f"shape {tuple(spatial)}), but got {block_size}."
        )


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
