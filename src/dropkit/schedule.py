r"""Dropout rates over training: a scheduler for every dropout layer of a model, presets and the widening rule.

- :class:`DropoutScheduler` sets the drop probability of every dropout layer of a model at each ``step()``
  (call it per iteration or per epoch: a step is whatever you count). Each layer has a target rate
  :math:`\bar p` (its own ``p`` when the scheduler is built, or one you give) and the schedule scales it by a
  factor :math:`f(t) \in [0, 1]`, :math:`p(t) = \bar p\, f(t)`:

  ==============  ==================================================================================
  ``constant``    :math:`f = 1`
  ``linear``      :math:`f = f_0 + (f_1 - f_0) \min(t, T) / T` (``start_factor``, ``end_factor``,
                  ``total_steps``); the default ramps 0 → :math:`\bar p` (the DropBlock warm-up)
  ``early``       :math:`f = 1` for :math:`t < S` (``cutoff``), then 0 — early dropout (Liu et al. 2023);
                  ``early_mode="linear"`` decreases it linearly 1 → 0 over the first :math:`S` steps
  ``late``        :math:`f = 0` for :math:`t < S`, then 1 — late dropout (Liu et al. 2023)
  ``curriculum``  :math:`f = 1 - e^{-\gamma t}` — curriculum dropout (Morerio et al. 2017): the keep
                  probability :math:`\theta(t) = (1 - \bar\theta) e^{-\gamma t} + \bar\theta` falls from 1 to
                  :math:`\bar\theta = 1 - \bar p`
  callable        :math:`f = \text{schedule}(t)`
  ==============  ==================================================================================

- :func:`apply_presets` gives the classic rates of Srivastava et al. 2014: about 0.2 on the input, 0.5 on
  hidden units.
- :func:`widen` gives the layer width :math:`\lceil n / (1 - p) \rceil` that keeps :math:`n` units active on
  average under dropout at rate :math:`p` (the same paper's rule for sizing dropout networks).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping
from fractions import Fraction

from torch import nn

from . import _validate
from . import nn as dnn
from .mc import _is_stochastic

__all__ = ["DropoutScheduler", "SCHEDULES", "dropout_layers", "apply_presets", "widen"]

SCHEDULES = ("constant", "linear", "early", "late", "curriculum")
_RATE_ATTRIBUTES = ("p", "drop_prob")  # dropkit / torch / torchvision use p; timm's DropPath and DropBlock drop_prob


def _rate_attribute(module: nn.Module) -> str | None:
    """The name of the settable float rate of a dropout layer, or ``None`` (learned or absent rates)."""
    if not _is_stochastic(module):
        return None
    for name in _RATE_ATTRIBUTES:
        if isinstance(getattr(type(module), name, None), property):
            return None  # a derived rate (Concrete dropout's learned p) is not set from outside
        if isinstance(getattr(module, name, None), (float, int)) and not isinstance(getattr(module, name), bool):
            return name
    return None


def dropout_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return ``(path, module)`` for every layer of ``model`` whose drop rate can be set, in ``named_modules`` order.

    These are torch's dropout modules and dropkit's (and any subclass), DropConnect, and DropPath / DropBlock /
    StochasticDepth layers by class name (rate attribute ``p``, or timm's ``drop_prob``). Learned rates
    (:class:`dropkit.nn.ConcreteDropout`) and rates held as plain floats by other modules
    (``nn.MultiheadAttention(dropout=...)``) are not included.

    Example:
        >>> model = nn.Sequential(nn.Dropout(0.2), nn.Linear(3, 3), nn.Dropout(0.5))
        >>> [path for path, _ in dropout_layers(model)]
        ['0', '2']
    """
    _validate.module("dropout_layers", model, "model")
    return [(path, m) for path, m in model.named_modules() if _rate_attribute(m) is not None]


def _get_rate(module: nn.Module) -> float:
    return float(getattr(module, _rate_attribute(module)))  # type: ignore[arg-type]


def _set_rate(module: nn.Module, p: float) -> None:
    setattr(module, _rate_attribute(module), float(p))  # type: ignore[arg-type]


class DropoutScheduler:
    r"""Set the drop probability of every dropout layer of a model, step by step.

    Works like torch's learning-rate schedulers: building it applies the rate of step 0, each :meth:`step`
    advances the counter by one and applies the new rate; :meth:`state_dict` / :meth:`load_state_dict` save and
    resume it. The layers are those of :func:`dropout_layers`; each has a target rate :math:`\bar p` and gets
    :math:`p(t) = \bar p\, f(t)` (module docstring: the schedules and their maths).

    Args:
        model: Any ``nn.Module`` with at least one dropout layer.
        schedule: ``"constant"``, ``"linear"``, ``"early"``, ``"late"``, ``"curriculum"``, or a callable mapping the
            step ``t`` (an int ``>= 0``) to a factor in ``[0, 1]``. Default: ``"constant"``.
        p: Target rates :math:`\bar p`: ``None`` (each layer's rate when the scheduler is built), one rate for
            every layer, or ``{pattern: rate}`` with ``fnmatch`` patterns over module paths (first match wins;
            unmatched layers keep their own rate). Default: ``None``.
        total_steps: :math:`T` of ``"linear"`` (required there), and of ``"curriculum"`` when ``gamma`` is not
            given. Default: ``None``.
        cutoff: :math:`S` of ``"early"`` and ``"late"`` (required there): the step at which dropout turns off
            (early) or on (late). Default: ``None``.
        gamma: :math:`\gamma > 0` of ``"curriculum"``. Default: ``10 / total_steps``, so the rate is within
            :math:`e^{-10}` of :math:`\bar p` at the end.
        start_factor: :math:`f_0` of ``"linear"``. Default: ``0.0``.
        end_factor: :math:`f_1` of ``"linear"``. Default: ``1.0``.
        early_mode: ``"standard"`` (constant, then 0) or ``"linear"`` (linear decrease to 0) for ``"early"``.
            Default: ``"standard"``.

    Raises:
        ValueError: If the model has no dropout layer, a rate or factor is out of range, the schedule is unknown,
            or the step counts it needs are missing.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
        >>> sched = DropoutScheduler(model, "early", cutoff=2)
        >>> [model[1].p, sched.step(), sched.step(), sched.step()]
        [0.5, {'1': 0.5}, {'1': 0.0}, {'1': 0.0}]

    References:
        Liu et al., "Dropout Reduces Underfitting", ICML 2023, https://arxiv.org/abs/2303.01500;
        Morerio et al., "Curriculum Dropout", ICCV 2017, https://arxiv.org/abs/1703.06229.
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: str | Callable[[int], float] = "constant",
        p: float | Mapping[str, float] | None = None,
        *,
        total_steps: int | None = None,
        cutoff: int | None = None,
        gamma: float | None = None,
        start_factor: float = 0.0,
        end_factor: float = 1.0,
        early_mode: str = "standard",
    ) -> None:
        op = "DropoutScheduler"
        _validate.module(op, model, "model")
        self.model = model
        self.layers = dropout_layers(model)
        _validate.contains(op, model, bool(self.layers), "a dropout layer")
        if not callable(schedule):
            _validate.choice(op, "schedule", schedule, SCHEDULES)
        self.schedule = schedule
        self.total_steps = None if total_steps is None else _validate.count(op, "total_steps", total_steps, 1)
        self.cutoff = None if cutoff is None else _validate.count(op, "cutoff", cutoff, 0)
        self.start_factor = _validate.unit(op, "start_factor", start_factor)
        self.end_factor = _validate.unit(op, "end_factor", end_factor)
        self.early_mode = _validate.choice(op, "early_mode", early_mode, ("standard", "linear"))
        if schedule == "linear":
            _validate.required(op, "total_steps", self.total_steps, "an int >= 1", "for the linear schedule")
        if schedule in ("early", "late"):
            _validate.required(op, "cutoff", self.cutoff, "an int >= 0", f"for the {schedule} schedule")
        if schedule == "curriculum":
            if gamma is None:
                _validate.required(op, "total_steps", self.total_steps, "an int >= 1", "for curriculum without gamma")
            gamma = 10.0 / self.total_steps if gamma is None else gamma  # type: ignore[operator]
        self.gamma = None if gamma is None else _validate.positive(op, "gamma", gamma)
        self.base_p = self._targets(p)
        self.last_step = 0
        self._apply()

    def _targets(self, p: float | Mapping[str, float] | None) -> dict[str, float]:
        op = "DropoutScheduler"
        own = {path: _get_rate(m) for path, m in self.layers}
        if p is None:
            return own
        rules = list(p.items()) if isinstance(p, Mapping) else [("*", p)]
        checked = [(pattern, _validate.probability(op, rate)) for pattern, rate in rules]
        for path in own:
            for pattern, rate in checked:
                if fnmatch.fnmatchcase(path, pattern):
                    own[path] = rate
                    break
        for path, module in self.layers:  # Gaussian dropout's variance p / (1 - p) is infinite at p = 1, as in set_p
            if isinstance(module, dnn.GaussianDropout):
                own[path] = _validate.probability(op, own[path], allow_one=False)
        return own

    def factor(self, step: int | None = None) -> float:
        """Return the factor :math:`f(t)` of ``step`` (default: the current step)."""
        t = self.last_step if step is None else step
        schedule = self.schedule
        if callable(schedule):
            return _validate.unit("DropoutScheduler", f"schedule({t})", schedule(t))
        if schedule == "constant":
            return 1.0
        if schedule == "linear":
            frac = min(t, self.total_steps) / self.total_steps  # type: ignore[operator]
            return self.start_factor + (self.end_factor - self.start_factor) * frac
        if schedule == "early":
            if t >= self.cutoff:  # type: ignore[operator]
                return 0.0
            if self.early_mode == "linear" and self.cutoff > 1:  # type: ignore[operator]
                return 1.0 - t / (self.cutoff - 1)  # type: ignore[operator]  # np.linspace(1, 0, S)
            return 1.0
        if schedule == "late":
            return 0.0 if t < self.cutoff else 1.0  # type: ignore[operator]
        return 1.0 - math.exp(-self.gamma * t)  # type: ignore[operator]  # curriculum

    def get_p(self) -> dict[str, float]:
        """Return the rate each layer has at the current step, ``{path: p}``."""
        f = self.factor()
        return {path: self.base_p[path] * f for path, _ in self.layers}

    def _apply(self) -> dict[str, float]:
        rates = self.get_p()
        for path, module in self.layers:
            _set_rate(module, rates[path])
        return rates

    def step(self) -> dict[str, float]:
        """Advance one step (iteration or epoch) and set the new rates; return them, ``{path: p}``."""
        self.last_step += 1
        return self._apply()

    def state_dict(self) -> dict:
        """Return the counter and the target rates (the schedule itself is the constructor's)."""
        return {"last_step": self.last_step, "base_p": dict(self.base_p)}

    def load_state_dict(self, state: Mapping) -> None:
        """Resume from :meth:`state_dict`: restore the counter and target rates, and set the rates they give."""
        base = dict(state["base_p"])
        _validate.same_keys("DropoutScheduler", "state['base_p']", base, [path for path, _ in self.layers])
        self.last_step = _validate.count("DropoutScheduler", "last_step", state["last_step"], 0)
        self.base_p = base
        self._apply()

    def __repr__(self) -> str:
        name = getattr(self.schedule, "__name__", self.schedule)
        return f"DropoutScheduler(schedule={name!r}, last_step={self.last_step}, layers={len(self.layers)})"


def apply_presets(model: nn.Module, input_p: float = 0.2, hidden_p: float = 0.5) -> dict[str, float]:
    """Set the classic rates: ``input_p`` on dropout applied to the model's input, ``hidden_p`` on every other.

    A dropout layer counts as *input* dropout when it comes, in ``named_modules()`` (registration) order,
    before the first module that owns parameters: in ``Sequential(Dropout, Linear, ReLU, Dropout, Linear)``
    the first dropout is the input's, the second a hidden one. Srivastava et al. 2014 found about 0.2 best
    for inputs and 0.5 for hidden units across tasks. Layers are those of :func:`dropout_layers`.

    Args:
        model: Any ``nn.Module``.
        input_p: Rate of input dropout. Default: ``0.2``.
        hidden_p: Rate of hidden dropout. Default: ``0.5``.

    Returns:
        ``{path: p}`` of every layer set.

    Raises:
        ValueError: If a rate is outside ``[0, 1]`` or the model has no dropout layer.

    Example:
        >>> model = nn.Sequential(nn.Dropout(), nn.Linear(4, 4), nn.ReLU(), nn.Dropout(0.1), nn.Linear(4, 2))
        >>> apply_presets(model)
        {'0': 0.2, '3': 0.5}

    References:
        Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting", JMLR 2014.
    """
    op = "apply_presets"
    input_p = _validate.unit(op, "input_p", input_p)
    hidden_p = _validate.unit(op, "hidden_p", hidden_p)
    layers = dict(dropout_layers(model))
    _validate.contains(op, model, bool(layers), "a dropout layer")
    rates, seen_weights = {}, False
    for path, module in model.named_modules():
        if path in layers:
            rates[path] = hidden_p if seen_weights else input_p
            _set_rate(module, rates[path])
        elif next(module.parameters(recurse=False), None) is not None:
            seen_weights = True
    return rates


def widen(n: int, p: float) -> int:
    r"""Return :math:`\lceil n / (1 - p) \rceil`: the width that keeps :math:`n` units active on average at rate ``p``.

    Srivastava et al. 2014 (§A.2): if a layer of :math:`n` units works without dropout, a dropout network
    should have at least :math:`n / (1 - p)` units there. Computed exactly on the decimal value of ``p``
    (``widen(70, 0.3)`` is 100, not 101).

    Args:
        n: Units without dropout, an int ``>= 0``.
        p: Drop probability, ``0 <= p < 1``.

    Returns:
        The widened unit count, an int.

    Example:
        >>> widen(100, 0.5), widen(70, 0.3), widen(64, 0.2)
        (200, 100, 80)
    """
    n = _validate.count("widen", "n", n, 0)
    p = _validate.probability("widen", p, allow_one=False)
    return math.ceil(Fraction(n) / (1 - Fraction(repr(p))))
