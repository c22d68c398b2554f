"""The dropout family as Modules: thin shells over :mod:`dropkit.functional`.

Each class subclasses its torch namesake (``isinstance(m, torch.nn.Dropout)`` still holds, so code and
tools that look for torch's classes keep working), validates in ``__init__``, and forwards with
``self.training``. No parameters or buffers: ``state_dict`` is empty, as torch's, so models swap
classes both ways. ``seed=`` gives the module its own generator: a reproducible, advancing sequence of
masks (Keras ``SeedGenerator`` semantics); ``generator=`` shares one the caller owns.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import _validate, rng
from .. import functional as F
from .._overrides import fx_leaf_call

__all__ = [
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "AlphaDropout",
    "FeatureAlphaDropout",
    "GaussianDropout",
    "GaussianNoise",
]


class _SeededMixin:
    """Seed handling and repr extras shared by every dropkit dropout module."""

    # class-level defaults: a torch module whose class is switched to its dropkit twin (``m.__class__ = ...``,
    # or unpickled under a remapped class) has none of these attributes of its own, and works as if built so
    mode = "inverted"
    generator: torch.Generator | None = None
    seed: int | None = None

    def _setup_rng(self, seed: int | None, generator: torch.Generator | None) -> None:
        self.seed = seed
        self.generator = rng._own_generator(self, type(self).__name__, seed, generator)

    def _extras(self) -> str:
        extras = "" if self.mode == "inverted" else f", mode={self.mode!r}"
        return extras + ("" if self.seed is None else f", seed={self.seed}")


class _DropIn(_SeededMixin):
    """Constructor and forward of a dropkit twin of a torch dropout class: same arguments, extras keyword-only."""

    p: float
    inplace: bool
    training: bool
    _modes: tuple[str, ...] = ("inverted", "classic")
    _applies_inplace = True  #: torch's alpha modules store ``inplace`` and never pass it on: their twins neither

    @staticmethod
    def _functional(input: torch.Tensor, p: float, training: bool, inplace: bool, **kwargs) -> torch.Tensor:
        raise NotImplementedError

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        mode: str = "inverted",
        keep: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        name = type(self).__name__
        p = _validate.probability(name, p, keep)
        mode = _validate.choice(name, "mode", mode, self._modes)
        super().__init__(p, inplace)  # type: ignore[call-arg]
        self.mode = mode
        self._setup_rng(seed, generator)

    def _options(self) -> dict:
        """Keyword arguments of the functional call beyond ``(p, training, inplace, generator)``."""
        return {"mode": self.mode} if len(self._modes) > 1 else {}

    def forward(self, input: torch.Tensor, *, training: bool | None = None) -> torch.Tensor:
        """Apply dropout in training mode or with ``training=True`` (Keras' call argument); else eval behaviour."""
        if (leaf := fx_leaf_call(self, input, training=training)) is not None:  # torch.fx: one call_module node
            return leaf
        training = self.training if training is None else training
        inplace = self.inplace and self._applies_inplace
        return self._functional(input, self.p, training, inplace, generator=self.generator, **self._options())

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}" + self._extras()


class _NoiseShaped(_DropIn):
    """A twin whose functional takes Keras' ``noise_shape`` (element-wise dropout and alpha dropout)."""

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        mode: str = "inverted",
        keep: float | None = None,
        noise_shape: tuple[int | None, ...] | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(p, inplace, mode=mode, keep=keep, seed=seed, generator=generator)
        self.noise_shape = _validate.noise_shape_arg(type(self).__name__, noise_shape, least=1)

    noise_shape: tuple[int | None, ...] | None = None  # the default of a torch module switched to this class

    def _options(self) -> dict:
        return {**super()._options(), "noise_shape": self.noise_shape}

    def extra_repr(self) -> str:
        """Describe the hyperparameters, as torch's module does (plus dropkit's extras)."""
        return super().extra_repr() + ("" if self.noise_shape is None else f", noise_shape={self.noise_shape}")


class Dropout(_NoiseShaped, nn.Dropout):
    """Zero elements with probability ``p`` in training. See :func:`dropkit.functional.dropout`.

    Drop-in for ``torch.nn.Dropout`` (and an instance of it).

    Args:
        p: Probability of zeroing an element. Default: ``0.5``.
        inplace: Modify the input in place. Default: ``False``.
        mode: ``"inverted"`` or ``"classic"`` (keyword-only). Default: ``"inverted"``.
        keep: Keep probability, an alternative to ``p`` (keyword-only). Default: ``None``.
        noise_shape: Shape of the mask, broadcast over the input (Keras' ``noise_shape``; keyword-only):
            ``None`` entries take the input's size, ``1`` shares one draw along that dimension. Default: ``None``.
        seed: Seed of the module's own generator: reproducible, advancing masks (keyword-only).
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Example:
        >>> m = Dropout(p=0.5, seed=0)
        >>> m(torch.ones(2, 3)).shape
        torch.Size([2, 3])
        >>> m.eval()(torch.ones(3))
        tensor([1., 1., 1.])
    """

    _functional = staticmethod(F.dropout)


class Dropout1d(_DropIn, nn.Dropout1d):
    """Zero whole channels of :math:`(N, C, L)` / :math:`(C, L)` inputs. See :func:`dropkit.functional.dropout1d`.

    Args:
        p: Probability of zeroing a channel. Default: ``0.5``.
        inplace: Modify the input in place. Default: ``False``.
        mode: ``"inverted"`` or ``"classic"`` (keyword-only). Default: ``"inverted"``.
        keep: Keep probability, an alternative to ``p`` (keyword-only). Default: ``None``.
        seed: Seed of the module's own generator: reproducible, advancing masks (keyword-only).
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Example:
        >>> m = Dropout1d(p=0.2)
        >>> m
        Dropout1d(p=0.2, inplace=False)
        >>> m(torch.ones(2, 4, 3)).shape
        torch.Size([2, 4, 3])
    """

    _functional = staticmethod(F.dropout1d)


class Dropout2d(_DropIn, nn.Dropout2d):
    """Zero whole channels of :math:`(N, C, H, W)` inputs. See :func:`dropkit.functional.dropout2d`.

    Args:
        p: Probability of zeroing a channel. Default: ``0.5``.
        inplace: Modify the input in place. Default: ``False``.
        mode: ``"inverted"`` or ``"classic"`` (keyword-only). Default: ``"inverted"``.
        keep: Keep probability, an alternative to ``p`` (keyword-only). Default: ``None``.
        seed: Seed of the module's own generator: reproducible, advancing masks (keyword-only).
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Example:
        >>> m = Dropout2d(p=0.2)
        >>> m(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """

    _functional = staticmethod(F.dropout2d)


class Dropout3d(_DropIn, nn.Dropout3d):
    """Zero whole channels of :math:`(N, C, D, H, W)` / :math:`(C, D, H, W)` inputs.

    See :func:`dropkit.functional.dropout3d`.

    Args:
        p: Probability of zeroing a channel. Default: ``0.5``.
        inplace: Modify the input in place. Default: ``False``.
        mode: ``"inverted"`` or ``"classic"`` (keyword-only). Default: ``"inverted"``.
        keep: Keep probability, an alternative to ``p`` (keyword-only). Default: ``None``.
        seed: Seed of the module's own generator: reproducible, advancing masks (keyword-only).
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Example:
        >>> Dropout3d(p=0.2)(torch.ones(2, 4, 2, 2, 2)).shape
        torch.Size([2, 4, 2, 2, 2])
    """

    _functional = staticmethod(F.dropout3d)


class AlphaDropout(_NoiseShaped, nn.AlphaDropout):
    """Alpha dropout for SELU networks. See :func:`dropkit.functional.alpha_dropout`.

    Args:
        p: Probability of zeroing an element. Default: ``0.5``.
        inplace: Stored and shown, not applied: torch's module ignores it too (its forward never passes it on),
            so a swapped model keeps its input. Default: ``False``.
        keep: Keep probability, an alternative to ``p`` (keyword-only). Default: ``None``.
        noise_shape: Shape of the mask, broadcast over the input (Keras' ``AlphaDropout`` ``noise_shape``;
            keyword-only), as for :class:`Dropout`. Default: ``None``.
        seed: Seed of the module's own generator: reproducible, advancing masks (keyword-only).
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Example:
        >>> m = AlphaDropout(p=0.2)
        >>> m(torch.ones(2, 3)).shape
        torch.Size([2, 3])
        >>> m.eval()(torch.ones(2, 3))  # identity in eval
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """

    _functional = staticmethod(F.alpha_dropout)
    _modes = ("inverted",)
    _applies_inplace = False


class FeatureAlphaDropout(_DropIn, nn.FeatureAlphaDropout):
    """Channel-wise alpha dropout. See :func:`dropkit.functional.feature_alpha_dropout`.

    Args:
        p: Probability of zeroing a channel. Default: ``0.5``.
        inplace: Stored and shown, not applied: torch's module ignores it too (its forward never passes it on),
            so a swapped model keeps its input. Default: ``False``.
        keep: Keep probability, an alternative to ``p`` (keyword-only). Default: ``None``.
        seed: Seed of the module's own generator: reproducible, advancing masks (keyword-only).
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Example:
        >>> FeatureAlphaDropout(p=0.2)(torch.ones(2, 4, 3)).shape
        torch.Size([2, 4, 3])
    """

    _functional = staticmethod(F.feature_alpha_dropout)
    _modes = ("inverted",)
    _applies_inplace = False


class GaussianDropout(_SeededMixin, nn.Module):
    """Multiplicative Gaussian noise with the variance of dropout at rate ``p``.

    See :func:`dropkit.functional.gaussian_dropout`.

    Args:
        p: Drop rate the noise matches, ``0 <= p < 1``. Default: ``0.5``.
        inplace: Modify the input in place. Default: ``False``.
        keep: Keep probability, an alternative to ``p`` (keyword-only). Default: ``None``.
        seed: Seed of the module's own generator (keyword-only). Default: ``None``.
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Example:
        >>> GaussianDropout(0.2).eval()(torch.ones(2))
        tensor([1., 1.])
    """

    def __init__(
        self,
        p: float = 0.5,
        inplace: bool = False,
        *,
        keep: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.p = _validate.probability("GaussianDropout", p, keep, allow_one=False)
        self.inplace = inplace
        self._setup_rng(seed, generator)

    def forward(self, input: torch.Tensor, *, training: bool | None = None) -> torch.Tensor:
        """Apply the noise in training (or with ``training=True``); identity in eval."""
        if (leaf := fx_leaf_call(self, input, training=training)) is not None:  # torch.fx: one call_module node
            return leaf
        training = self.training if training is None else training
        return F.gaussian_dropout(input, self.p, training, self.inplace, generator=self.generator)

    def extra_repr(self) -> str:
        """Describe the hyperparameters, as torch's dropout modules do."""
        return f"p={self.p}, inplace={self.inplace}" + self._extras()


class GaussianNoise(_SeededMixin, nn.Module):
    """Additive zero-mean Gaussian noise in training. See :func:`dropkit.functional.gaussian_noise`.

    Args:
        stddev: Standard deviation of the noise, a finite number ``>= 0``.
        inplace: Modify the input in place. Default: ``False``.
        seed: Seed of the module's own generator (keyword-only). Default: ``None``.
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Example:
        >>> GaussianNoise(0.1).eval()(torch.ones(2))
        tensor([1., 1.])
    """

    def __init__(
        self,
        stddev: float,
        inplace: bool = False,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.stddev = _validate.nonnegative("GaussianNoise", "stddev", stddev)
        self.inplace = inplace
        self._setup_rng(seed, generator)

    def forward(self, input: torch.Tensor, *, training: bool | None = None) -> torch.Tensor:
        """Apply the noise in training (or with ``training=True``); identity in eval."""
        if (leaf := fx_leaf_call(self, input, training=training)) is not None:  # torch.fx: one call_module node
            return leaf
        training = self.training if training is None else training
        return F.gaussian_noise(input, self.stddev, training, self.inplace, generator=self.generator)

    def extra_repr(self) -> str:
        """Describe the hyperparameters."""
        return f"stddev={self.stddev}, inplace={self.inplace}" + self._extras()
