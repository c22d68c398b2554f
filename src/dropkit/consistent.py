r"""Consistent (frozen) dropout masks: replay the same masks across calls and batches, from seeds alone.

Every dropkit mask is a pure function of ``(seed, element index)``, so freezing a mask needs no stored
tensor: it is enough to give each *site* — each place in a forward pass that draws a mask — the same seed
every time. :class:`frozen_masks` does that for a whole model: inside it, the :math:`k`-th draw made directly
by the :math:`c`-th call of the module at path ``path`` (counted from the outermost forward) uses the seed

.. math:: s_{\text{site}} = \mathrm{BLAKE2b}_{63}(\text{seed},\ \text{path},\ c,\ k),

so two forwards of the same model on inputs of the same shape draw identical masks, while different sites
(different layers, or one dropout module applied at two places) stay independent. This is the consistent
MC dropout of BatchBALD (Kirsch et al. 2019) and what pytorch #2649 asks for: sample :math:`j` of the
posterior is ``frozen_masks(model, seed=j)``, the same thinned network for every pool batch.

``batch_shared=True`` goes one step further: each mask depends only on the position within the non-batch
dimensions, one mask of shape :math:`(1, *)` broadcast over the rows, so every row of every batch — of any
size, in any order — sees the same thinned network (BatchBALD's requirement when the pool is scored in
chunks). Without it, row :math:`n` of a batch gets the mask of row :math:`n`, whatever the batch size.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable

import torch
from torch import nn

from . import _validate
from . import functional as F
from . import nn as dnn
from .mc import _is_stochastic

__all__ = ["frozen_masks", "site_seed"]

_lock = threading.RLock()
#: torch's dropout classes → the dropkit op with the same semantics (dropkit's subclasses map the same way).
_OPS: tuple[tuple[type[nn.Module], Callable], ...] = (
    (nn.Dropout, F.dropout),
    (nn.Dropout1d, F.dropout1d),
    (nn.Dropout2d, F.dropout2d),
    (nn.Dropout3d, F.dropout3d),
    (nn.AlphaDropout, F.alpha_dropout),
    (nn.FeatureAlphaDropout, F.feature_alpha_dropout),
    (dnn.GaussianDropout, F.gaussian_dropout),
)
_MULTIPLICATIVE = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.gaussian_dropout)  # y = x · mask


def site_seed(seed: int, path: str = "", call: int = 0, draw: int = 0) -> int:
    """Return the 63-bit seed :class:`frozen_masks` gives a site: a hash of ``(seed, path, call, draw)``.

    Example:
        >>> site_seed(0, "encoder.dropout") == site_seed(0, "encoder.dropout")
        True
        >>> site_seed(0, "a") != site_seed(0, "b") != site_seed(1, "b")
        True
    """
    digest = hashlib.blake2b(f"{seed}\x00{path}\x00{call}\x00{draw}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _op_of(module: nn.Module) -> Callable | None:
    for cls, op in _OPS:
        if isinstance(module, cls):
            return op
    return None


class frozen_masks(contextlib.ContextDecorator):  # noqa: N801 - used like a function, as contextlib's helpers are
    """Context manager (and decorator): every dropout mask drawn inside it is a fixed function of a seed.

    With a ``model``, each site of the model gets its own fixed seed (module docstring), so repeated forwards
    on inputs of the same shape replay the same masks; draws outside the model's forward (a functional call in
    your own code) and all draws when ``model`` is ``None`` use one seed, :func:`site_seed` ``(seed)``. On exit,
    fresh masks resume: the generators the masks came from were not advanced inside.

    What it covers: every dropkit op and module (all draw their seed in one place), and torch's dropout modules
    in the model (their forward runs on the dropkit twin while the block is open). torch's *functional*
    dropout called inside a forward (Hugging Face attention) is covered inside :class:`dropkit.mc.mc_dropout`,
    which routes it to dropkit. An explicit ``seed=`` passed to an op still wins. The switch is process-wide
    while the block is open (as :class:`dropkit.mc.mc_dropout`'s).

    ``batch_shared=True`` (needs ``model``) makes the masks of dropout, dropout1d/2d/3d and Gaussian dropout
    layers (torch's or dropkit's) one row broadcast over the batch, computed as ``x * op(ones(1, *), ...)``.
    DropConnect layers already share one weight mask across the batch unless ``per_sample=True``. Other
    stochastic layers (alpha dropout, DropPath, per-sample DropConnect, ...) keep per-row masks and are named
    in a ``UserWarning``.

    Args:
        model: The model whose sites get separate seeds, or ``None``. Default: ``None``.
        seed: Base seed, an int in ``[0, 2^64)``: one posterior sample per seed. Default: ``0``.
        batch_shared: One mask per site for every row and batch size (needs ``model``). Default: ``False``.

    Raises:
        ValueError: If ``seed`` is out of range, or ``batch_shared`` is set without a model.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))
        >>> x = torch.randn(3, 4)
        >>> with frozen_masks(model, seed=7):
        ...     torch.equal(model(x), model(x))
        True
        >>> torch.equal(model(x), model(x))
        False
    """

    def __init__(self, model: nn.Module | None = None, seed: int = 0, *, batch_shared: bool = False) -> None:
        op = "frozen_masks"
        if model is not None:
            _validate.module(op, model, "model")
        _validate.seed_source(op, seed, None)
        if batch_shared:
            _validate.required(op, "model", model, "a torch.nn.Module", "for batch_shared=True")
        self.model = model
        self.seed = int(seed)
        self.batch_shared = bool(batch_shared)
        self._entered: list[tuple[object, list, list[tuple[nn.Module, object]]]] = []

    # -- seeds of the current site ---------------------------------------------------------------------------
    def _next_seed(self, draws: int | None = None) -> int:  # noqa: ARG002 - functional._seed's hint, unused here
        if not self._frames:
            return site_seed(self.seed)
        frame = self._frames[-1]
        frame[2] += 1
        return site_seed(self.seed, frame[0], frame[1], frame[2] - 1)

    def _push(self, module: nn.Module, path: str) -> None:
        if not self._frames:
            self._calls.clear()  # an outermost forward: count calls afresh
        call = self._calls.get(path, 0)
        self._calls[path] = call + 1
        self._frames.append([path, call, 0])

    def _pop(self, *_: object) -> None:
        self._frames.pop()

    # -- torch's dropout modules, and batch-shared masks -------------------------------------------------------
    def _frozen_forward(self, module: nn.Module, op: Callable, original: Callable) -> Callable:
        shared = self.batch_shared and op in _MULTIPLICATIVE

        def forward(input: torch.Tensor) -> torch.Tensor:
            if not (module.training or F._forced_training):
                return original(input)
            kwargs = {"mode": module.mode} if op in _MULTIPLICATIVE[:4] and hasattr(module, "mode") else {}
            inplace = getattr(module, "inplace", False)
            if not shared or input.dim() < 2:
                return op(input, module.p, True, inplace, **kwargs)
            ones = torch.ones((1, *input.shape[1:]), dtype=input.dtype, device=input.device)
            mask = op(ones, module.p, True, False, **kwargs)
            return input.mul_(mask) if inplace else input * mask

        return forward

    def __enter__(self) -> nn.Module | None:
        self._frames: list[list] = []
        self._calls: dict[str, int] = {}
        hooks, overridden = [], []
        if self.model is not None:
            per_row = []
            for path, module in self.model.named_modules():
                hooks.append(module.register_forward_pre_hook(lambda m, _args, path=path: self._push(m, path)))
                hooks.append(module.register_forward_hook(self._pop, always_call=True))
                op = _op_of(module)
                if op is not None:
                    overridden.append((module, module.__dict__.get("forward")))
                    module.forward = self._frozen_forward(module, op, module.forward)
                    if self.batch_shared and op not in _MULTIPLICATIVE:
                        per_row.append(path)
                elif self.batch_shared and _is_stochastic(module) and getattr(module, "per_sample", True):
                    per_row.append(path)
            if per_row:
                _validate.warn_here(
                    f"frozen_masks: batch_shared covers dropout, dropout1d/2d/3d, Gaussian dropout and per-batch "
                    f"DropConnect; these layers keep per-row masks: {per_row!r}."
                )
        with _lock:
            previous = F._seed_override
            F._seed_override = self._next_seed
        self._entered.append((previous, hooks, overridden))
        return self.model

    def __exit__(self, *exc_info: object) -> None:
        previous, hooks, overridden = self._entered.pop()
        with _lock:
            F._seed_override = previous
        for hook in hooks:
            hook.remove()
        for module, forward in overridden:
            if forward is None:
                del module.forward
            else:
                module.forward = forward
