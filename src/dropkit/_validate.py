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


def module(op: str, value: object) -> None:
    """Check that ``value`` is a ``torch.nn.Module``."""
    if not isinstance(value, torch.nn.Module):
        raise _fail(op, "module", "a torch.nn.Module", type(value).__name__, TypeError)


def parameter_names(op: str, value: object, available: list[str]) -> list[str]:
    """Return ``value`` as a non-empty list of names, each one of ``available`` (a module's parameter names)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise _fail(op, "weights", "a non-empty list of parameter names", value, TypeError)
    for name in value:
        if not isinstance(name, str) or name not in available:
            raise _fail(op, "weights", "names of the module's parameters (" + ", ".join(available) + ")", name)
    return list(value)
