"""Structured dropout as Modules: stochastic depth, DropPath, DropBlock, and a linear ramp of DropBlock's rate.

Thin shells over :mod:`dropkit.functional` (validate in ``__init__``, ``extra_repr``, forward with
``self.training``), with torchvision's (``StochasticDepth``, ``DropBlock2d/3d``) and timm's (``DropPath``)
constructor arguments. ``seed=`` gives a module its own generator (a reproducible, advancing sequence of
masks), ``generator=`` shares one the caller owns. :func:`dropkit.mc.mc_dropout` switches these modules on.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .. import _validate
from .. import functional as F
from .._overrides import fx_leaf_call
from .dropout import _SeededMixin

__all__ = ["StochasticDepth", "DropPath", "DropBlock1d", "DropBlock2d", "DropBlock3d", "DropBlockScheduler"]


def _seed_extra(module: _SeededMixin) -> str:
    return "" if module.seed is None else f", seed={module.seed}"


class StochasticDepth(_SeededMixin, nn.Module):
    """Randomly drop whole samples (or the whole batch) of a residual branch.

    See :func:`dropkit.functional.stochastic_depth`.

    Drop-in for ``torchvision.ops.StochasticDepth``.

    Args:
        p: Probability of zeroing a sample (``mode="row"``) or the batch (``mode="batch"``).
        mode: ``"row"`` or ``"batch"``. Default: ``"row"``.
        seed: Seed of the module's own generator: reproducible, advancing masks (keyword-only).
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Example:
        >>> m = StochasticDepth(0.2, "row")
        >>> m
        StochasticDepth(p=0.2, mode=row)
        >>> m.eval()(torch.ones(2, 3)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self, p: float, mode: str = "row", *, seed: int | None = None, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.p = _validate.probability(name, p)
        self.mode = _validate.choice(name, "mode", mode, F.STOCHASTIC_DEPTH_MODES)
        self._setup_rng(seed, generator)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Drop samples in training; identity in eval."""
        if (leaf := fx_leaf_call(self, input)) is not None:  # torch.fx: one call_module node
            return leaf
        return F.stochastic_depth(input, self.p, self.mode, self.training, generator=self.generator)

    def extra_repr(self) -> str:
        """Describe the hyperparameters as torchvision's repr does."""
        return f"p={self.p}, mode={self.mode}" + _seed_extra(self)


class DropPath(_SeededMixin, nn.Module):
    """Drop paths (stochastic depth) per sample. See :func:`dropkit.functional.drop_path`.

    Drop-in for timm's ``DropPath`` with the rate spelled ``p`` (``DropPath(0.1)`` works as in timm).

    Args:
        p: Probability of dropping a sample's path. Default: ``0.0``.
        scale_by_keep: Scale kept samples by ``1 / (1 - p)``. Default: ``True``.
        drop_prob: timm's name for ``p`` (keyword-only), so ``DropPath(drop_prob=0.1)`` works. Default: ``None``.
        seed: Seed of the module's own generator: reproducible, advancing masks (keyword-only).
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Example:
        >>> m = DropPath(0.1)
        >>> m
        DropPath(p=0.1)
        >>> m(torch.ones(4, 3)).shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        p: float = 0.0,
        scale_by_keep: bool = True,
        *,
        drop_prob: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.p = _validate.probability(name, _validate.alias(name, "p", p, "drop_prob", drop_prob, 0.0), default=0.0)
        self.scale_by_keep = _validate.flag(name, "scale_by_keep", scale_by_keep)
        self._setup_rng(seed, generator)

    @property
    def drop_prob(self) -> float:
        """The rate under timm's name: an alias of :attr:`p`."""
        return self.p

    @drop_prob.setter
    def drop_prob(self, value: float) -> None:
        self.p = value

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Drop paths in training; identity in eval."""
        if (leaf := fx_leaf_call(self, input)) is not None:  # torch.fx: one call_module node
            return leaf
        return F.drop_path(input, self.p, self.training, self.scale_by_keep, generator=self.generator)

    def extra_repr(self) -> str:
        """Describe the hyperparameters."""
        return f"p={self.p}" + ("" if self.scale_by_keep else ", scale_by_keep=False") + _seed_extra(self)


class _DropBlockNd(_SeededMixin, nn.Module):
    """Constructor, forward and repr shared by DropBlock1d/2d/3d (torchvision's arguments, extras keyword-only)."""

    _op = "drop_block2d"

    def __init__(
        self,
        p: float,
        block_size: int,
        inplace: bool = False,
        eps: float = 1e-06,
        *,
        couple_channels: bool = False,
        scale_by_keep: bool = True,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.p = _validate.probability(name, p)
        self.block_size = _validate.positive_int(name, "block_size", block_size)
        self.inplace = _validate.flag(name, "inplace", inplace)
        self.eps = _validate.nonnegative(name, "eps", eps)
        self.couple_channels = _validate.flag(name, "couple_channels", couple_channels)
        self.scale_by_keep = _validate.flag(name, "scale_by_keep", scale_by_keep)
        self._setup_rng(seed, generator)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Drop blocks in training; identity in eval."""
        if (leaf := fx_leaf_call(self, input)) is not None:  # torch.fx: one call_module node
            return leaf
        return getattr(F, self._op)(
            input,
            self.p,
            self.block_size,
            self.inplace,
            self.eps,
            self.training,
            couple_channels=self.couple_channels,
            scale_by_keep=self.scale_by_keep,
            generator=self.generator,
        )

    def extra_repr(self) -> str:
        """Describe the hyperparameters as torchvision's repr does, then the extras that differ from the defaults."""
        extras = f"p={self.p}, block_size={self.block_size}, inplace={self.inplace}"
        if self.eps != 1e-06:
            extras += f", eps={self.eps}"
        if self.couple_channels:
            extras += ", couple_channels=True"
        if not self.scale_by_keep:
            extras += ", scale_by_keep=False"
        return extras + _seed_extra(self)


class DropBlock1d(_DropBlockNd):
    """Drop contiguous segments of :math:`(N, C, L)` inputs. See :func:`dropkit.functional.drop_block1d`.

    Args:
        p: Probability of an element being dropped.
        block_size: Length of the dropped segments.
        inplace: Modify the input in place. Default: ``False``.
        eps: Added to the normalisation's denominator. Default: ``1e-06``.
        couple_channels: Share the block mask across channels (keyword-only). Default: ``False``.
        scale_by_keep: Renormalise kept elements (keyword-only). Default: ``True``.
        seed: Seed of the module's own generator (keyword-only). Default: ``None``.
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Example:
        >>> DropBlock1d(0.1, 3)(torch.ones(2, 4, 16)).shape
        torch.Size([2, 4, 16])
    """

    _op = "drop_block1d"


class DropBlock2d(_DropBlockNd):
    """Drop square blocks of :math:`(N, C, H, W)` feature maps. See :func:`dropkit.functional.drop_block2d`.

    Drop-in for ``torchvision.ops.DropBlock2d``.

    Args:
        p: Probability of an element being dropped.
        block_size: Side of the dropped squares.
        inplace: Modify the input in place. Default: ``False``.
        eps: Added to the normalisation's denominator. Default: ``1e-06``.
        couple_channels: Share the block mask across channels (keyword-only). Default: ``False``.
        scale_by_keep: Renormalise kept elements (keyword-only). Default: ``True``.
        seed: Seed of the module's own generator (keyword-only). Default: ``None``.
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Example:
        >>> m = DropBlock2d(0.1, 3)
        >>> m
        DropBlock2d(p=0.1, block_size=3, inplace=False)
        >>> m(torch.ones(2, 4, 8, 8)).shape
        torch.Size([2, 4, 8, 8])
    """

    _op = "drop_block2d"


class DropBlock3d(_DropBlockNd):
    """Drop cubes of :math:`(N, C, D, H, W)` volumes. See :func:`dropkit.functional.drop_block3d`.

    Drop-in for ``torchvision.ops.DropBlock3d``.

    Args:
        p: Probability of an element being dropped.
        block_size: Side of the dropped cubes.
        inplace: Modify the input in place. Default: ``False``.
        eps: Added to the normalisation's denominator. Default: ``1e-06``.
        couple_channels: Share the block mask across channels (keyword-only). Default: ``False``.
        scale_by_keep: Renormalise kept elements (keyword-only). Default: ``True``.
        seed: Seed of the module's own generator (keyword-only). Default: ``None``.
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Example:
        >>> DropBlock3d(0.1, 3)(torch.ones(1, 2, 4, 4, 4)).shape
        torch.Size([1, 2, 4, 4, 4])
    """

    _op = "drop_block3d"


class DropBlockScheduler:
    r"""Ramp the rate ``p`` of every DropBlock module of a model linearly from ``start`` to ``stop`` over ``steps``.

    DropBlock's authors found a fixed rate hurts early training and ramp the drop rate up linearly from 0
    (Ghiasi et al. 2018, §3). The scheduler sets :math:`p_t = \text{start} + (\text{stop} - \text{start})
    \cdot \min(t, T - 1) / (T - 1)` on every target module at construction (:math:`t = 0`) and after each
    :meth:`step` (like torch's LR schedulers: call ``step()`` after each optimiser step, or each epoch); it
    stays at ``stop`` after :math:`T - 1` steps. ``state_dict`` / ``load_state_dict`` resume the ramp.

    Args:
        model: A DropBlock module, or any model containing some.
        start: Rate at step 0, ``0 <= start <= 1``. Default: ``0.0``.
        stop: Rate from step ``steps - 1`` on, ``0 <= stop <= 1``.
        steps: Length of the ramp :math:`T`, an int ``>= 1`` (``1``: ``stop`` at once).
        types: Module classes to schedule (keyword-only). Default: dropkit's ``DropBlock1d/2d/3d``; add
            :class:`DropPath` or :class:`StochasticDepth` to ramp those too.

    Raises:
        ValueError: If a rate is outside ``[0, 1]``, ``steps < 1``, or ``model`` contains no module of ``types``.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), DropBlock2d(0.0, 3))
        >>> scheduler = DropBlockScheduler(model, start=0.0, stop=0.2, steps=3)
        >>> [model[1].p] + [scheduler.step() for _ in range(3)]
        [0.0, 0.1, 0.2, 0.2]
    """

    def __init__(
        self,
        model: nn.Module,
        start: float = 0.0,
        stop: float = 0.1,
        steps: int = 1,
        *,
        types: tuple[type[nn.Module], ...] = (DropBlock1d, DropBlock2d, DropBlock3d),
    ) -> None:
        name = type(self).__name__
        if not isinstance(model, nn.Module):
            raise TypeError(f"{name}: model must be a torch.nn.Module, but got {type(model).__name__!r}.")
        self.start = _validate.probability(name, start, default=0.0)
        self.stop = _validate.probability(name, stop, default=0.1)
        self.steps = _validate.positive_int(name, "steps", steps)
        self.modules = [m for m in model.modules() if isinstance(m, tuple(types))]
        if not self.modules:
            kinds = ", ".join(t.__name__ for t in types)
            raise ValueError(f"{name}: model must contain a module of type {kinds}, but got {type(model).__name__}.")
        self.last_step = 0
        self._apply()

    def get_p(self) -> float:
        """Return the rate of the current step."""
        t = min(self.last_step, self.steps - 1)
        if self.steps == 1:
            return self.stop
        return self.start + (self.stop - self.start) * t / (self.steps - 1)

    def _apply(self) -> float:
        p = self.get_p()
        for module in self.modules:
            module.p = p
        return p

    def step(self) -> float:
        """Advance one step, set the new rate on every target module and return it."""
        self.last_step += 1
        return self._apply()

    def state_dict(self) -> dict[str, int]:
        """Return the scheduler's position (the hyperparameters live in the constructor call)."""
        return {"last_step": self.last_step}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume from :meth:`state_dict` and set the rate of that step."""
        self.last_step = int(state["last_step"])
        self._apply()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(start={self.start}, stop={self.stop}, steps={self.steps}, "
            f"last_step={self.last_step}, modules={len(self.modules)})"
        )
