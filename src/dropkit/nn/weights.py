r"""Weight-level dropout: DropConnect layers and a DropConnect wrapper for any module.

DropConnect (Wan et al. 2013) zeroes weights rather than activations: in training a layer computes with
:math:`\tilde W = (M \odot W) / (1 - p)`, :math:`M_{ij} \sim \mathrm{Bernoulli}(1 - p)` fresh per forward, and in
eval with :math:`W` itself. The masks come from dropkit's seeded core, so ``seed=`` / ``generator=`` /
``torch.manual_seed`` reproduce them and backward regenerates them instead of storing them.

- :class:`DropConnectLinear`, :class:`DropConnectConv1d`, :class:`DropConnectConv2d` subclass their torch
  namesakes: same constructor (plus keyword-only ``p``, ``drop_bias``, ``per_sample``, ``keep``, ``seed``,
  ``generator``), same parameters and ``state_dict`` keys, so a plain ``nn.Linear`` checkpoint loads into them and
  ``isinstance(layer, nn.Linear)`` holds.
- :class:`DropConnect` wraps any module and masks the parameters it names (``weights=("weight",)``).

All are switched on by :func:`dropkit.mc.mc_dropout` (matched by class name), which gives MC DropConnect.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vmap

from .. import _validate
from .. import functional as F
from .._overrides import fx_leaf_call
from .dropout import _SeededMixin

__all__ = ["DropConnect", "DropConnectLinear", "DropConnectConv1d", "DropConnectConv2d"]


class _DropConnectMixin(_SeededMixin):
    """Hyperparameters shared by the DropConnect layers."""

    p: float
    drop_bias: bool
    per_sample: bool

    def _setup(
        self,
        p: float,
        drop_bias: bool,
        per_sample: bool,
        keep: float | None,
        seed: int | None,
        generator: torch.Generator | None,
    ) -> None:
        self.p = _validate.probability(type(self).__name__, p, keep)
        self.drop_bias = bool(drop_bias)
        self.per_sample = bool(per_sample)
        self._setup_rng(seed, generator)

    @property
    def shares_mask_across_batch(self) -> bool:
        """Whether one forward uses one mask for every row of the batch (``per_sample=False``).

        :func:`dropkit.mc.predict` reads it: stacking MC samples in the batch would give them all one mask.
        """
        return not self.per_sample

    def _dropconnect_repr(self) -> str:
        extras = f", p={self.p}"
        extras += ", drop_bias=True" if self.drop_bias else ""
        extras += ", per_sample=True" if self.per_sample else ""
        return extras + ("" if self.seed is None else f", seed={self.seed}")


class DropConnectLinear(_DropConnectMixin, nn.Linear):
    """``nn.Linear`` with DropConnect on its weight. See :func:`dropkit.functional.drop_connect_linear`.

    Args:
        in_features: Size of each input sample.
        out_features: Size of each output sample.
        bias: Learn an additive bias. Default: ``True``.
        device: Device of the parameters. Default: ``None``.
        dtype: Dtype of the parameters. Default: ``None``.
        p: Probability of zeroing a weight (keyword-only). Default: ``0.5``.
        drop_bias: Drop bias entries too (keyword-only). Default: ``False``.
        per_sample: One weight mask per batch row (keyword-only). Default: ``False``.
        keep: Keep probability, an alternative to ``p`` (keyword-only). Default: ``None``.
        seed: Seed of the module's own generator (keyword-only). Default: ``None``.
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Example:
        >>> layer = DropConnectLinear(4, 2, p=0.3)
        >>> layer(torch.ones(5, 4)).shape
        torch.Size([5, 2])
        >>> plain = nn.Linear(4, 2)
        >>> layer.load_state_dict(plain.state_dict())
        <All keys matched successfully>
        >>> torch.equal(layer.eval()(torch.ones(1, 4)), plain(torch.ones(1, 4)))
        True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        p: float = 0.5,
        drop_bias: bool = False,
        per_sample: bool = False,
        keep: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(in_features, out_features, bias, device, dtype)
        self._setup(p, drop_bias, per_sample, keep, seed, generator)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Apply the linear map with a fresh weight mask in training; the plain weights in eval."""
        if (leaf := fx_leaf_call(self, input)) is not None:  # torch.fx: one call_module node
            return leaf
        return F.drop_connect_linear(
            input, self.weight, self.bias, p=self.p, training=self.training, drop_bias=self.drop_bias,
            per_sample=self.per_sample, generator=self.generator,
        )  # fmt: skip

    def extra_repr(self) -> str:
        """Describe the layer as ``nn.Linear`` does, plus the DropConnect settings."""
        return super().extra_repr() + self._dropconnect_repr()


class _DropConnectConvNd(_DropConnectMixin):
    _functional = staticmethod(F.drop_connect_conv2d)
    padding_mode: str
    _reversed_padding_repeated_twice: list[int]

    def _init(self, p, drop_bias, per_sample, keep, seed, generator) -> None:
        self._setup(p, drop_bias, per_sample, keep, seed, generator)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Convolve with a fresh kernel mask in training; the plain kernel in eval."""
        if (leaf := fx_leaf_call(self, input)) is not None:  # torch.fx: one call_module node
            return leaf
        padding = self.padding  # type: ignore[attr-defined]
        if self.padding_mode != "zeros":  # as torch's _conv_forward: pad explicitly, then convolve unpadded
            input = nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return self._functional(
            input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups,  # type: ignore
            p=self.p, training=self.training, drop_bias=self.drop_bias, per_sample=self.per_sample,  # type: ignore
            generator=self.generator,
        )  # fmt: skip

    def extra_repr(self) -> str:
        """Describe the layer as torch's conv does, plus the DropConnect settings."""
        return super().extra_repr() + self._dropconnect_repr()  # type: ignore[misc]


class DropConnectConv1d(_DropConnectConvNd, nn.Conv1d):
    """``nn.Conv1d`` with DropConnect on its kernel. See :func:`dropkit.functional.drop_connect_conv1d`.

    Args:
        in_channels: Number of input channels.
        out_channels: Number of output channels.
        kernel_size: Size of the kernel.
        stride: Stride. Default: ``1``.
        padding: Padding (int, tuple, ``"same"`` or ``"valid"``). Default: ``0``.
        dilation: Spacing of kernel elements. Default: ``1``.
        groups: Blocked connections from input to output channels. Default: ``1``.
        bias: Learn an additive bias. Default: ``True``.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``. Default: ``"zeros"``.
        device: Device of the parameters. Default: ``None``.
        dtype: Dtype of the parameters. Default: ``None``.
        p: Probability of zeroing a kernel weight (keyword-only). Default: ``0.5``.
        drop_bias: Drop bias entries too (keyword-only). Default: ``False``.
        per_sample: One kernel mask per sample, run as one grouped convolution (keyword-only). Default: ``False``.
        keep: Keep probability, an alternative to ``p`` (keyword-only). Default: ``None``.
        seed: Seed of the module's own generator (keyword-only). Default: ``None``.
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Example:
        >>> DropConnectConv1d(3, 4, 3, p=0.2)(torch.ones(2, 3, 8)).shape
        torch.Size([2, 4, 6])
    """

    _functional = staticmethod(F.drop_connect_conv1d)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        p: float = 0.5,
        drop_bias: bool = False,
        per_sample: bool = False,
        keep: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        nn.Conv1d.__init__(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            device, dtype,
        )  # fmt: skip
        self._init(p, drop_bias, per_sample, keep, seed, generator)


class DropConnectConv2d(_DropConnectConvNd, nn.Conv2d):
    """``nn.Conv2d`` with DropConnect on its kernel. See :func:`dropkit.functional.drop_connect_conv2d`.

    Args:
        in_channels: Number of input channels.
        out_channels: Number of output channels.
        kernel_size: Size of the kernel.
        stride: Stride. Default: ``1``.
        padding: Padding (int, tuple, ``"same"`` or ``"valid"``). Default: ``0``.
        dilation: Spacing of kernel elements. Default: ``1``.
        groups: Blocked connections from input to output channels. Default: ``1``.
        bias: Learn an additive bias. Default: ``True``.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``. Default: ``"zeros"``.
        device: Device of the parameters. Default: ``None``.
        dtype: Dtype of the parameters. Default: ``None``.
        p: Probability of zeroing a kernel weight (keyword-only). Default: ``0.5``.
        drop_bias: Drop bias entries too (keyword-only). Default: ``False``.
        per_sample: One kernel mask per sample, run as one grouped convolution (keyword-only). Default: ``False``.
        keep: Keep probability, an alternative to ``p`` (keyword-only). Default: ``None``.
        seed: Seed of the module's own generator (keyword-only). Default: ``None``.
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Example:
        >>> DropConnectConv2d(3, 4, 3, padding=1, p=0.2)(torch.ones(2, 3, 5, 5)).shape
        torch.Size([2, 4, 5, 5])
    """

    _functional = staticmethod(F.drop_connect_conv2d)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        p: float = 0.5,
        drop_bias: bool = False,
        per_sample: bool = False,
        keep: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        nn.Conv2d.__init__(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            device, dtype,
        )  # fmt: skip
        self._init(p, drop_bias, per_sample, keep, seed, generator)


class DropConnect(_DropConnectMixin, nn.Module):
    r"""DropConnect on the named parameters of any module: a fresh mask on each, per forward.

    In training the wrapped module runs (through ``torch.func.functional_call``) with each parameter in
    ``weights`` replaced by :math:`(M \odot W)/(1-p)`, the bias too when ``drop_bias`` (one seed per forward,
    independent masks per parameter); the module's own parameters are not modified, so gradients flow to
    them through the masks, and optimisers, ``state_dict`` (keys ``module.<name>``) and ``.to()`` see the
    usual parameters. In eval it is the wrapped module itself.

    ``per_sample=True`` draws one mask per row of the first positional input and evaluates the rows with
    ``torch.func.vmap`` (each row runs as a batch of one): :math:`N` copies of the masked parameters, and the
    module must be vmap-compatible and treat rows independently (attention without batch statistics, ...).
    A plain ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` (zero padding) goes through the dedicated per-sample
    ops instead, with the same masks: chunked, and without :math:`N` weight copies kept for backward.

    Args:
        module: The module to wrap.
        p: Probability of zeroing a weight. Must satisfy ``0 <= p <= 1``. Default: ``0.5``.
        weights: Name, or names, of the parameters to mask (dotted paths allowed: ``"0.weight"``).
            Default: ``("weight",)``.
        drop_bias: Mask the parameter ``bias`` too, when the module has one (keyword-only). Default: ``False``.
        per_sample: One mask per batch row (keyword-only). Default: ``False``.
        keep: Keep probability, an alternative to ``p`` (keyword-only). Default: ``None``.
        seed: Seed of the module's own generator (keyword-only). Default: ``None``.
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Raises:
        ValueError: If ``module`` has no parameter of a name in ``weights``.
        TypeError: If ``module`` is not a ``torch.nn.Module``.

    Example:
        >>> layer = DropConnect(nn.Bilinear(3, 3, 2), p=0.5)
        >>> layer(torch.ones(4, 3), torch.ones(4, 3)).shape
        torch.Size([4, 2])
        >>> DropConnect(nn.ReLU())
        Traceback (most recent call last):
        ...
        ValueError: DropConnect: module must have a parameter named 'weight', but got ReLU with parameters [].

    References:
        Wan et al., "Regularization of Neural Networks using DropConnect", ICML 2013.
    """

    def __init__(
        self,
        module: nn.Module,
        p: float = 0.5,
        weights: str | tuple[str, ...] = ("weight",),
        *,
        drop_bias: bool = False,
        per_sample: bool = False,
        keep: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _validate.module("DropConnect", module)
        names = _validate.parameter_names("DropConnect", module, weights)
        if drop_bias and "bias" in dict(module.named_parameters()) and "bias" not in names:
            names = names + ("bias",)
        self.module = module
        self.weights = names
        self._setup(p, drop_bias, per_sample, keep, seed, generator)

    def _masked(self, seed: int, samples: int | None) -> dict[str, torch.Tensor]:
        masked, offset = {}, 0
        for name in self.weights:
            w = F._masked_weight(self.module.get_parameter(name), seed, offset, self.p, samples)
            masked[name] = w
            offset += w.numel()
        return masked

    def forward(self, *args, **kwargs):
        """Run the module with freshly masked parameters in training; the module itself in eval."""
        if (leaf := fx_leaf_call(self, *args, **kwargs)) is not None:  # torch.fx: one call_module node
            return leaf
        if not (self.training or F._forced_training) or self.p == 0.0:
            return self.module(*args, **kwargs)
        seed = F._seed(None, self.generator)
        if not self.per_sample:
            return functional_call(self.module, self._masked(seed, None), args, kwargs)
        _validate.batched("DropConnect", "the first positional input (per_sample)", args[0] if args else None)
        x, rest = args[0], args[1:]
        fast = self._fast_per_sample(x, seed) if not rest and not kwargs else None
        if fast is not None:
            return fast
        masked = self._masked(seed, x.shape[0])

        def one(params: dict[str, torch.Tensor], row: torch.Tensor) -> torch.Tensor:
            return functional_call(self.module, params, (row.unsqueeze(0), *rest), kwargs).squeeze(0)

        return vmap(one)(masked, x)

    def _fast_per_sample(self, x: torch.Tensor, seed: int) -> torch.Tensor | None:
        """Per-sample masks of a plain Linear / Conv1d / Conv2d through the dedicated ops (the very same masks)."""
        m = self.module
        if self.weights not in (("weight",), ("weight", "bias")):
            return None
        common = dict(p=self.p, training=True, drop_bias=len(self.weights) == 2, per_sample=True, seed=seed)
        if type(m) is nn.Linear:
            return F.drop_connect_linear(x, m.weight, m.bias, **common)
        convs = {nn.Conv1d: F.drop_connect_conv1d, nn.Conv2d: F.drop_connect_conv2d}
        if type(m) in convs and m.padding_mode == "zeros":
            return convs[type(m)](x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups, **common)
        return None

    def extra_repr(self) -> str:
        """Describe the masked parameters and the DropConnect settings."""
        return f"weights={self.weights!r}" + self._dropconnect_repr()
