r"""Concrete dropout: a wrapper that learns the dropout probability of a layer's input.

Gal, Hron and Kendall ("Concrete Dropout", NeurIPS 2017) replace the Bernoulli mask by its Concrete
relaxation (:func:`dropkit.functional.concrete_dropout`) so that :math:`p` is trained by gradient descent,
and add to the loss the KL term of the variational objective, per wrapped layer:

.. math::

    \mathcal R = \underbrace{\lambda_w \frac{\sum W^2}{1 - p}}_{\text{weight term}}
        + \underbrace{\lambda_d \, K \big(p \log p + (1 - p)\log(1 - p)\big)}_{\text{entropy term}}

with :math:`K` the number of input features dropped (one sample's numel), :math:`\lambda_w` =
``weight_regularizer`` :math:`= l^2 / (\tau N)` and :math:`\lambda_d` = ``dropout_regularizer``
:math:`= 2 / (\tau N)` for :math:`N` training points, prior length-scale :math:`l` and model precision
:math:`\tau`: the more data, the smaller both terms and the lower the learned :math:`p`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _validate, rng
from .. import functional as F
from .._overrides import fx_leaf_call
from .dropout import _SeededMixin

__all__ = ["ConcreteDropout", "concrete_regularization"]


def _logit(op: str, name: str, value: float) -> float:
    value = _validate.open_unit(op, name, value)
    return math.log(value) - math.log(1.0 - value)


class ConcreteDropout(_SeededMixin, nn.Module):
    r"""Wrap a layer; learn the dropout probability of its input with Concrete dropout.

    In training, ``forward(x)`` is ``module(concrete_dropout(x, p_logit, temperature))`` (extra arguments go to
    the module unchanged); in eval it is ``module(x)``. The learnable ``p_logit`` (one element) starts at the
    logit of a value drawn uniformly in ``[init_min, init_max]``. Add :meth:`regularization` (or
    :func:`concrete_regularization` of the whole model) to the loss, as the reference adds it to the layer's
    losses, or :math:`p` only ever grows to cut the noise. :func:`dropkit.mc.mc_dropout` switches it on.

    The weight term covers the wrapped module's parameters named ``weight`` or ending in ``.weight`` (the
    kernel, as the authors' Keras wrapper; their PyTorch notebook sums the bias too).

    Args:
        module: The layer whose input is dropped.
        weight_regularizer: :math:`\lambda_w`, ``l**2 / N`` in the paper's experiments. Default: ``1e-6``.
        dropout_regularizer: :math:`\lambda_d`, ``2 / N`` in the paper's experiments. Default: ``1e-5``.
        init_min: Lower end of the initial :math:`p`, in ``(0, 1)``. Default: ``0.1``.
        init_max: Upper end of the initial :math:`p`, in ``[init_min, 1)``. Default: ``0.1``.
        temperature: Temperature of the relaxation. Default: ``0.1``.
        seed: Seed of the module's own generator (keyword-only). Default: ``None``.
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Raises:
        ValueError: If a regulariser is negative, ``init_min``/``init_max`` are outside ``(0, 1)`` or out of order,
            or ``temperature`` is not ``> 0``.

    Example:
        >>> layer = ConcreteDropout(nn.Linear(4, 2), init_min=0.2, init_max=0.2)
        >>> round(layer.p, 4)
        0.2
        >>> layer(torch.ones(3, 4)).shape
        torch.Size([3, 2])
        >>> float(layer.regularization().detach()) < 0  # the entropy term dominates at these defaults
        True

    References:
        Gal, Hron and Kendall, "Concrete Dropout", NeurIPS 2017, https://arxiv.org/abs/1705.07832
        (code: https://github.com/yaringal/ConcreteDropout).
    """

    def __init__(
        self,
        module: nn.Module,
        weight_regularizer: float = 1e-6,
        dropout_regularizer: float = 1e-5,
        init_min: float = 0.1,
        init_max: float = 0.1,
        temperature: float = 0.1,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        op = "ConcreteDropout"
        _validate.module(op, module)
        self.module = module
        self.weight_regularizer = _validate.nonnegative(op, "weight_regularizer", weight_regularizer)
        self.dropout_regularizer = _validate.nonnegative(op, "dropout_regularizer", dropout_regularizer)
        low, high = _logit(op, "init_min", init_min), _logit(op, "init_max", init_max)
        _validate.not_below(op, "init_max", init_max, "init_min", init_min)
        self.temperature = _validate.positive(op, "temperature", temperature)
        self._setup_rng(seed, generator)
        u = float(rng.uniform(1, F._seed(None, self.generator), device="cpu"))  # on the CPU under torch.device("meta")
        self.p_logit = nn.Parameter(torch.tensor([low + (high - low) * u]))
        self.input_dim: int | None = getattr(module, "in_features", None)

    @property
    def p(self) -> float:
        r"""The current drop probability :math:`\sigma(\text{p\_logit})`, as a float."""
        return float(torch.sigmoid(self.p_logit.detach()))

    def forward(self, input: torch.Tensor, *args, **kwargs):
        """Drop the input with the relaxed mask in training, then run the module; the module alone in eval."""
        if (leaf := fx_leaf_call(self, input, *args, **kwargs)) is not None:  # torch.fx: one call_module node
            return leaf
        if self.training or F._forced_training:
            self.input_dim = math.prod(input.shape[1:]) if input.dim() > 1 else input.numel()  # an empty batch too
            input = F.concrete_dropout(input, self.p_logit, self.temperature, True, generator=self.generator)
        return self.module(input, *args, **kwargs)

    def regularization(self) -> torch.Tensor:
        r"""Return :math:`\lambda_w \sum W^2/(1-p) + \lambda_d K (p\log p + (1-p)\log(1-p))` as a scalar tensor.

        :math:`K` is the numel of one input sample, recorded at the last training forward (the module's
        ``in_features`` before any).

        Raises:
            ValueError: If :math:`K` is unknown (no training forward yet and no ``in_features``).
        """
        _validate.required(
            "ConcreteDropout", "input_dim", self.input_dim, "known", "for the entropy term (run one training forward)"
        )
        p = torch.sigmoid(self.p_logit).sum()
        squares = sum(
            (w.pow(2).sum() for name, w in self.module.named_parameters() if name.split(".")[-1] == "weight"),
            torch.zeros((), device=p.device, dtype=p.dtype),
        )
        weight_term = self.weight_regularizer * squares / (1.0 - p)
        entropy_term = self.dropout_regularizer * self.input_dim * (p * torch.log(p) + (1.0 - p) * torch.log(1.0 - p))
        return weight_term + entropy_term

    def extra_repr(self) -> str:
        """Describe the regularisers, the temperature and the current ``p``."""
        return (
            f"p={self.p:.4g}, weight_regularizer={self.weight_regularizer:g}, "
            f"dropout_regularizer={self.dropout_regularizer:g}, temperature={self.temperature:g}"
            + ("" if self.seed is None else f", seed={self.seed}")
        )


def concrete_regularization(model: nn.Module) -> torch.Tensor:
    """Return the sum of :meth:`ConcreteDropout.regularization` over every Concrete dropout layer of ``model``.

    Add it to the data loss (the reference's ``sum(model.losses)``).

    Raises:
        ValueError: If ``model`` has no :class:`ConcreteDropout` layer.

    Example:
        >>> model = nn.Sequential(ConcreteDropout(nn.Linear(3, 8)), nn.ReLU(), ConcreteDropout(nn.Linear(8, 1)))
        >>> concrete_regularization(model).shape
        torch.Size([])
    """
    _validate.module("concrete_regularization", model, "model")
    terms = [m.regularization() for m in model.modules() if isinstance(m, ConcreteDropout)]
    _validate.contains("concrete_regularization", model, bool(terms), "a ConcreteDropout layer")
    return torch.stack(terms).sum()
