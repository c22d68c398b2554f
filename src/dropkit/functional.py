r"""The dropout family as functions: validation, the train/eval rule, seeds, then one kernel dispatch.

Every op here is a masked affine map of its input whose mask is a pure function of
``(seed, offset, element index)`` (:mod:`dropkit.rng`); backward regenerates the mask, so nothing of
the input's size is kept for backward. Drop-in for the torch namesakes: same positional signatures,
defaults, shapes and eval behaviour; extras are keyword-only:

- ``mode="inverted"`` (train: kept units × 1/(1-p); eval: identity) or ``mode="classic"`` (train: no
  scaling; eval: × (1-p), the "scale the weights at test time" of Srivastava et al. 2014);
- ``keep=`` the keep probability, an alternative spelling of ``p = 1 - keep``;
- ``seed=`` an int: the mask is a pure function of it (same seed, same mask);
- ``generator=`` a ``torch.Generator`` to draw the seed from (default: torch's global CPU generator,
  so ``torch.manual_seed`` reproduces masks and ``torch.utils.checkpoint`` recomputes them).

One rule everywhere: a dropped element is exactly its fill value (0 for dropout) whatever its input,
NaN and inf included; ``p = 1`` gives exact zeros and zero gradients; eval (and ``p = 0``) returns the
input itself.
"""

from __future__ import annotations

import functools
import math

import torch

from . import _validate, kernels, rng
from .kernels import MaskSpec

__all__ = [
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "feature_alpha_dropout",
    "gaussian_dropout",
    "gaussian_noise",
]

MODES = ("inverted", "classic")
SELU_ALPHA_PRIME = 1.7580993408473766  #: -λα of SELU (Klambauer et al. 2017): the value a dropped unit takes.


class _MaskedAffineFn(torch.autograd.Function):
    """``y = keep ? x·scale + bias : fill`` with the keep mask regenerated from its seed in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, spec: MaskSpec, inplace: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.spec = spec
        if inplace:
            ctx.mark_dirty(x)
            return kernels.apply(x, spec, out=x)
        return kernels.apply(x, spec)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        # itself a masked linear map: through this Function when a graph of the backward is being built
        # (double backward), straight to the kernel otherwise
        if torch.is_grad_enabled():
            return _MaskedAffineFn.apply(grad, ctx.spec.linear(), False), None, None
        return kernels.apply(grad, ctx.spec.linear()), None, None


class _GaussianDropoutFn(torch.autograd.Function):
    """``y = x · (1 + σ z)``, ``z ~ N(0, 1)`` from the seed, regenerated in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, seed: int, sigma: float, inplace: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.seed, ctx.sigma = seed, sigma
        y = _times_noise(x, seed, sigma)
        if inplace:
            ctx.mark_dirty(x)
            return x.copy_(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        return _times_noise(grad, ctx.seed, ctx.sigma), None, None, None


def _times_noise(x: torch.Tensor, seed: int, sigma: float) -> torch.Tensor:
    noise = rng.normal(x.shape, seed, device=x.device).mul_(sigma).add_(1.0)
    opmath = torch.float32 if x.dtype in (torch.float16, torch.bfloat16, torch.float32) else x.dtype
    return (x.to(opmath) * noise.to(opmath)).to(x.dtype)


_forced_training = False


def _force_training(on: bool) -> None:
    """Make every op here run as in training whatever ``training=`` says (:func:`dropkit.mc.mc_dropout` uses it)."""
    global _forced_training
    _forced_training = on


@functools.lru_cache(maxsize=1024)
def _threshold(p: float) -> int:
    return rng.keep_threshold(p)


def _seed(seed: int | None, generator: torch.Generator | None) -> int:
    return int(seed) if seed is not None else rng.draw_seed(generator)


def _checked(
    op: str, p: float, keep: float | None, seed: int | None, generator: torch.Generator | None, allow_one: bool = True
) -> float:
    """Validate the arguments shared by every op; return the drop probability."""
    p = _validate.probability(op, p, keep, allow_one=allow_one)
    _validate.seed_source(op, seed, generator)
    return p


def _masked(
    op: str,
    input: torch.Tensor,
    p: float,
    training: bool,
    inplace: bool,
    mode: str,
    seed: int | None,
    generator: torch.Generator | None,
    mask_dims: int,
) -> torch.Tensor:
    """Shared body of dropout and dropout1d/2d/3d: the mask covers the leading ``mask_dims`` dimensions."""
    _validate.choice(op, "mode", mode, MODES)
    training = bool(training) or _forced_training
    classic_eval = not training and mode == "classic" and p > 0
    _validate.tensor_input(op, input, training or classic_eval)
    if classic_eval:  # test-time weight scaling: E[train output] = (1 - p) x
        return input.mul_(1.0 - p) if inplace else input * (1.0 - p)
    if not training or p == 0.0 or input.numel() == 0:
        return input
    scale = 0.0 if p == 1.0 else (1.0 / (1.0 - p) if mode == "inverted" else 1.0)
    spec = MaskSpec(_seed(seed, generator), 0, _threshold(p), scale, mask_dims=mask_dims)
    return _MaskedAffineFn.apply(input, spec, bool(inplace))


def dropout(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    mode: str = "inverted",
    keep: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Zero each element independently with probability ``p``.

    In training, element :math:`x_i` becomes :math:`m_i x_i / (1 - p)` (``mode="inverted"``) or
    :math:`m_i x_i` (``mode="classic"``) with :math:`m_i \sim \mathrm{Bernoulli}(1 - p)`; in eval it is
    :math:`x_i` (inverted) or :math:`(1 - p) x_i` (classic). Either way :math:`E[\text{train}] = \text{eval}`.
    The mask is regenerated in backward from its seed: nothing of ``input``'s size is kept.

    Args:
        input: Tensor of any shape.
        p: Probability of zeroing an element. Must satisfy ``0 <= p <= 1``. Default: ``0.5``.
        training: Apply dropout if ``True``; eval behaviour otherwise. Default: ``True``.
        inplace: Modify ``input`` in place. Default: ``False``.
        mode: ``"inverted"`` or ``"classic"``. Default: ``"inverted"``.
        keep: Keep probability, an alternative to ``p`` (``p = 1 - keep``). Default: ``None``.
        seed: Explicit 64-bit seed; the same seed gives the same mask. Default: ``None``.
        generator: Generator to draw the seed from. Default: torch's global CPU generator.

    Shape:
        - Input: :math:`(*)`.
        - Output: same as input.

    Returns:
        Tensor with the same shape, dtype and device as ``input`` (``input`` itself in eval).

    Raises:
        ValueError: If ``p`` (or ``keep``) is outside ``[0, 1]``, or ``mode`` is unknown.
        TypeError: If ``input`` is not floating point in training.

    Example:
        >>> dropout(torch.tensor([2.0, 4.0, 6.0, 8.0]), p=0.5, seed=0)
        tensor([4., 0., 0., 0.])
        >>> dropout(torch.tensor([2.0, 4.0, 6.0, 8.0]), p=0.5, training=False, mode="classic")
        tensor([1., 2., 3., 4.])

    References:
        Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting", JMLR 2014.
    """
    p = _checked("dropout", p, keep, seed, generator)
    return _masked("dropout", input, p, training, inplace, mode, seed, generator, mask_dims=-1)


def _channel_dims(op: str, input: torch.Tensor) -> int:
    """Return how many leading dimensions a channel mask covers for dropout1d/2d/3d, with torch's rules."""
    ndim = input.dim() if isinstance(input, torch.Tensor) else 0
    if op == "dropout1d":
        if ndim not in (2, 3):
            raise _validate.ShapeError(
                f"dropout1d: Expected 2D or 3D input, but received a {ndim}D input. dropout1d zeroes whole channels "
                "of (N, C, L) or (C, L) inputs; use dropout() for per-element dropout."
            )
        return ndim - 1
    if op == "dropout2d":
        if ndim not in (3, 4):
            _validate.warn(
                f"dropout2d: Received a {ndim}-D input to dropout2d; expected (N, C, H, W) or, as torch does, "
                "(N, C, L). Channel-wise dropout is applied over the first two dimensions; use dropout() for "
                "per-element dropout."
            )
        if ndim == 3:
            _validate.warn(
                "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout behavior is "
                "desired: the input is read as (N, C, L), as torch does. Use dropout1d() to say so explicitly."
            )
        _validate.min_dim(op, input, 2, "(N, C, *)")
        return 2
    if ndim not in (4, 5):
        _validate.warn(
            f"dropout3d: Received a {ndim}-D input to dropout3d; expected (N, C, D, H, W) or (C, D, H, W). "
            "The input is read as unbatched, as torch does; use dropout() for per-element dropout."
        )
    _validate.min_dim(op, input, 1, "(C, *)")
    return 2 if ndim == 5 else 1


def _channel_doc(op: str, layout: str) -> str:
    return f"""Zero whole channels of {layout} inputs with probability ``p`` (spatial dropout).

    Each channel :math:`(n, c)` gets one Bernoulli(1 - p) draw shared by all its positions; kept channels
    are scaled as in :func:`dropout` (``mode`` applies). Adjacent positions of a feature map are strongly
    correlated, so per-element dropout barely regularises convolutional features; dropping channels does.
    Drop-in for ``torch.nn.functional.{op}`` (the same input-rank rules and warnings); an unbatched input
    gets the mask its batched form (batch of one) would get.

    Args:
        input: Input tensor, {layout}.
        p: Probability of zeroing a channel. Must satisfy ``0 <= p <= 1``. Default: ``0.5``.
        training: Apply dropout if ``True``. Default: ``True``.
        inplace: Modify ``input`` in place. Default: ``False``.
        mode: ``"inverted"`` or ``"classic"``. Default: ``"inverted"``.
        keep: Keep probability, an alternative to ``p``. Default: ``None``.
        seed: Explicit 64-bit seed. Default: ``None``.
        generator: Generator to draw the seed from. Default: torch's global CPU generator.

    Returns:
        Tensor with the same shape, dtype and device as ``input``.

    Raises:
        ValueError: If ``p`` is outside ``[0, 1]`` or the input rank is unsupported.

    References:
        Tompson et al., "Efficient Object Localization Using Convolutional Networks", CVPR 2015,
        https://arxiv.org/abs/1411.4280
    """


def _channel_op(op: str, layout: str):
    def channel_dropout(
        input: torch.Tensor,
        p: float = 0.5,
        training: bool = True,
        inplace: bool = False,
        *,
        mode: str = "inverted",
        keep: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        p = _checked(op, p, keep, seed, generator)
        _validate.tensor_input(op, input, False)
        return _masked(op, input, p, training, inplace, mode, seed, generator, mask_dims=_channel_dims(op, input))

    channel_dropout.__name__ = channel_dropout.__qualname__ = op
    channel_dropout.__doc__ = _channel_doc(op, layout)
    return channel_dropout


dropout1d = _channel_op("dropout1d", ":math:`(N, C, L)` or :math:`(C, L)`")
dropout2d = _channel_op("dropout2d", ":math:`(N, C, H, W)` (or :math:`(N, C, L)`, as torch reads 3-D input)")
dropout3d = _channel_op("dropout3d", ":math:`(N, C, D, H, W)` or :math:`(C, D, H, W)`")


def _alpha(
    op: str,
    input: torch.Tensor,
    p: float,
    training: bool,
    inplace: bool,
    keep: float | None,
    seed: int | None,
    generator: torch.Generator | None,
    mask_dims: int,
) -> torch.Tensor:
    p = _checked(op, p, keep, seed, generator)
    training = bool(training) or _forced_training
    _validate.tensor_input(op, input, training)
    if mask_dims == 2:
        _validate.min_dim(op, input, 2, "(N, C, *)")
    if not training or p == 0.0 or input.numel() == 0:
        return input
    if p == 1.0:
        spec = MaskSpec(_seed(seed, generator), 0, _threshold(p), 0.0, mask_dims=mask_dims)
    else:
        a = 1.0 / math.sqrt((SELU_ALPHA_PRIME**2 * p + 1.0) * (1.0 - p))
        bias, fill = SELU_ALPHA_PRIME * a * p, SELU_ALPHA_PRIME * a * (p - 1.0)
        spec = MaskSpec(_seed(seed, generator), 0, _threshold(p), a, bias, fill, mask_dims)
    return _MaskedAffineFn.apply(input, spec, bool(inplace))


def alpha_dropout(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = False,
    inplace: bool = False,
    *,
    keep: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Alpha dropout for self-normalising (SELU) networks: keeps zero mean and unit variance.

    A dropped unit is set to SELU's saturation value :math:`\alpha' = -\lambda\alpha` and the result is
    mapped affinely so the mean and variance of a standardised input are preserved:
    :math:`y = a\,(m x + (1 - m)\alpha') + b` with :math:`a = ((1-p)(1 + p\alpha'^2))^{-1/2}`,
    :math:`b = -a\alpha' p`. ``training`` defaults to ``False`` as in ``torch.nn.functional.alpha_dropout``.

    Args:
        input: Tensor of any shape.
        p: Probability of dropping an element. Must satisfy ``0 <= p <= 1``. Default: ``0.5``.
        training: Apply alpha dropout if ``True``. Default: ``False`` (as torch).
        inplace: Modify ``input`` in place. Default: ``False``.
        keep: Keep probability, an alternative to ``p``. Default: ``None``.
        seed: Explicit 64-bit seed. Default: ``None``.
        generator: Generator to draw the seed from. Default: torch's global CPU generator.

    Returns:
        Tensor with the same shape, dtype and device as ``input``; exact zeros when ``p = 1``.

    Example:
        >>> alpha_dropout(torch.zeros(3), p=0.5, training=False)
        tensor([0., 0., 0.])

    References:
        Klambauer et al., "Self-Normalizing Neural Networks", NeurIPS 2017, https://arxiv.org/abs/1706.02515
    """
    return _alpha("alpha_dropout", input, p, training, inplace, keep, seed, generator, mask_dims=-1)


def feature_alpha_dropout(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = False,
    inplace: bool = False,
    *,
    keep: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Alpha dropout of whole channels: one draw per :math:`(n, c)` of an :math:`(N, C, *)` input.

    See :func:`alpha_dropout` for the affine correction. ``training`` defaults to ``False`` as in torch.

    Args:
        input: Tensor of shape :math:`(N, C, *)`.
        p: Probability of dropping a channel. Must satisfy ``0 <= p <= 1``. Default: ``0.5``.
        training: Apply alpha dropout if ``True``. Default: ``False`` (as torch).
        inplace: Modify ``input`` in place. Default: ``False``.
        keep: Keep probability, an alternative to ``p``. Default: ``None``.
        seed: Explicit 64-bit seed. Default: ``None``.
        generator: Generator to draw the seed from. Default: torch's global CPU generator.

    Returns:
        Tensor with the same shape, dtype and device as ``input``.

    Raises:
        ValueError: If ``input`` has fewer than 2 dimensions in training.
    """
    return _alpha("feature_alpha_dropout", input, p, training, inplace, keep, seed, generator, mask_dims=2)


def gaussian_dropout(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    keep: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Multiply each element by :math:`1 + \sigma z`, :math:`z \sim N(0, 1)`, :math:`\sigma^2 = p / (1 - p)`.

    The Gaussian counterpart of inverted dropout with the same mean and variance of the multiplier
    (Srivastava et al. 2014, §10; Keras ``GaussianDropout``). Identity in eval. ``p = 1`` would need an
    infinite variance and is rejected.

    Args:
        input: Tensor of any shape.
        p: Drop rate the noise matches. Must satisfy ``0 <= p < 1``. Default: ``0.5``.
        training: Apply the noise if ``True``. Default: ``True``.
        inplace: Modify ``input`` in place. Default: ``False``.
        keep: Keep probability, an alternative to ``p``; must be ``> 0``. Default: ``None``.
        seed: Explicit 64-bit seed. Default: ``None``.
        generator: Generator to draw the seed from. Default: torch's global CPU generator.

    Returns:
        Tensor with the same shape, dtype and device as ``input``.

    Raises:
        ValueError: If ``p`` is outside ``[0, 1)``.

    Example:
        >>> gaussian_dropout(torch.ones(3), p=0.5, training=False)
        tensor([1., 1., 1.])
    """
    p = _checked("gaussian_dropout", p, keep, seed, generator, allow_one=False)
    training = bool(training) or _forced_training
    _validate.tensor_input("gaussian_dropout", input, training)
    if not training or p == 0.0 or input.numel() == 0:
        return input
    return _GaussianDropoutFn.apply(input, _seed(seed, generator), math.sqrt(p / (1.0 - p)), bool(inplace))


def gaussian_noise(
    input: torch.Tensor,
    stddev: float,
    training: bool = True,
    inplace: bool = False,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Add zero-mean Gaussian noise :math:`\sigma z`, :math:`z \sim N(0, 1)`, in training (Keras ``GaussianNoise``).

    Args:
        input: Tensor of any shape.
        stddev: Standard deviation :math:`\sigma` of the noise, a finite number ``>= 0``.
        training: Add the noise if ``True``; identity otherwise. Default: ``True``.
        inplace: Modify ``input`` in place. Default: ``False``.
        seed: Explicit 64-bit seed. Default: ``None``.
        generator: Generator to draw the seed from. Default: torch's global CPU generator.

    Returns:
        Tensor with the same shape, dtype and device as ``input``.

    Example:
        >>> gaussian_noise(torch.ones(2), 0.1, training=False)
        tensor([1., 1.])
    """
    stddev = _validate.nonnegative("gaussian_noise", "stddev", stddev)
    _validate.seed_source("gaussian_noise", seed, generator)
    training = bool(training) or _forced_training
    _validate.tensor_input("gaussian_noise", input, training)
    if not training or stddev == 0.0 or input.numel() == 0:
        return input
    noise = rng.normal(input.shape, _seed(seed, generator), device=input.device).mul_(stddev).to(input.dtype)
    return input.add_(noise) if inplace else input + noise


# --- recurrent: zoneout (issue 5; modules in dropkit.nn.recurrent) -------------------------------------------------

__all__ += ["zoneout"]


def zoneout(
    input: torch.Tensor,
    previous: torch.Tensor,
    p: float = 0.1,
    training: bool = True,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Zoneout: each unit keeps its previous value with probability ``p`` instead of taking the update.

    In training, :math:`y = d \odot \text{previous} + (1 - d) \odot \text{input}` with
    :math:`d_i \sim \mathrm{Bernoulli}(p)` drawn independently per element (and per call, so per time step when
    called once per step); in eval the expectation :math:`y = p\,\text{previous} + (1 - p)\,\text{input}`.
    Gradients flow to ``input`` where the update was taken and to ``previous`` where it was kept.

    Args:
        input: The new state :math:`\tilde h_t`, any shape.
        previous: The previous state :math:`h_{t-1}`, broadcastable to ``input``'s shape.
        p: Probability of keeping the previous value (the zoneout rate). Must satisfy ``0 <= p <= 1``.
            Default: ``0.1``.
        training: Stochastic if ``True``; the expectation otherwise. Default: ``True``.
        seed: Explicit 64-bit seed. Default: ``None``.
        generator: Generator to draw the seed from. Default: torch's global CPU generator.

    Shape:
        - Input: :math:`(*)`; previous: broadcastable to it.
        - Output: same as input.

    Returns:
        Tensor with the shape, dtype and device of ``input``.

    Raises:
        ValueError: If ``p`` is outside ``[0, 1]``.
        TypeError: If ``input`` or ``previous`` is not a floating-point tensor.

    Example:
        >>> zoneout(torch.ones(4), torch.zeros(4), p=0.5, seed=0)
        tensor([1., 0., 0., 0.])
        >>> zoneout(torch.ones(2), torch.zeros(2), p=0.25, training=False)
        tensor([0.7500, 0.7500])

    References:
        Krueger et al., "Zoneout: Regularizing RNNs by Randomly Preserving Hidden Activations", ICLR 2017,
        https://arxiv.org/abs/1606.01305
    """
    p = _validate.rate("zoneout", "p", p)
    _validate.seed_source("zoneout", seed, generator)
    _validate.tensor_input("zoneout", input, True)
    if not isinstance(previous, torch.Tensor) or not previous.is_floating_point():
        name = previous.dtype if isinstance(previous, torch.Tensor) else type(previous).__name__
        raise TypeError(f"zoneout: previous must be a floating-point torch.Tensor, but got {name!r}.")
    if not (bool(training) or _forced_training):
        return input if p == 0.0 else torch.lerp(input, previous.to(input.dtype).expand_as(input), p)
    if p == 0.0 or input.numel() == 0:
        return input
    spec = MaskSpec(_seed(seed, generator), 0, _threshold(p), 1.0)
    update = kernels.keep_mask(spec, tuple(input.shape), input.device)
    return torch.where(update, input, previous.to(input.dtype))
