r"""Model surgery: find, swap, re-rate and convert the dropout layers of any torch model.

- :func:`find_dropout` lists every dropout site (module path, class, ``p``, mode).
- :func:`swap_dropout` turns ``torch.nn.Dropout*`` / ``AlphaDropout`` modules into their dropkit twins, in place
  (same ``p`` and ``inplace``; eval outputs unchanged, training masks now seeded and mask-free).
- :func:`set_p` sets the rate everywhere or per module-path pattern.
- :func:`fold_classic` turns classic dropout into inverted dropout by folding the test-time scaling
  :math:`(1-p)` into the weights of the Linear/Conv layer that follows it — the seed texts' "multiply the
  weights by p at test time" done once, exactly: :math:`W (1-p) x = (W (1-p)) x`. Training behaviour is
  kept too, since inverted dropout on the folded weights gives :math:`W(1-p)\, m x / (1-p) = W m x`.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from . import _validate
from . import nn as dnn

__all__ = ["DropoutSite", "find_dropout", "swap_dropout", "set_p", "fold_classic"]

#: torch class -> dropkit twin (dropkit's subclass torch's, so exact type is checked).
TWINS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Dropout: dnn.Dropout,
    nn.Dropout1d: dnn.Dropout1d,
    nn.Dropout2d: dnn.Dropout2d,
    nn.Dropout3d: dnn.Dropout3d,
    nn.AlphaDropout: dnn.AlphaDropout,
    nn.FeatureAlphaDropout: dnn.FeatureAlphaDropout,
}
_RATED = tuple(TWINS) + (
    dnn.GaussianDropout,
    dnn.DropPath,
    dnn.StochasticDepth,
    dnn.DropBlock1d,
    dnn.DropBlock2d,
    dnn.DropBlock3d,
    dnn.DropConnectLinear,
    dnn.DropConnectConv1d,
    dnn.DropConnectConv2d,
    dnn.DropConnect,
)
_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Bilinear)


@dataclass(frozen=True)
class DropoutSite:
    """One dropout module of a model."""

    path: str  #: dotted module path, as in ``model.named_modules()``
    cls: str  #: class name, with its module (``torch.nn.modules.dropout.Dropout``, ``dropkit.nn.dropout.Dropout``)
    p: float  #: drop probability
    mode: str  #: ``"inverted"`` or ``"classic"``


def _is_dropout(module: nn.Module) -> bool:
    return isinstance(module, _RATED)


def find_dropout(model: nn.Module) -> list[DropoutSite]:
    """Return every dropout module of ``model`` in ``named_modules`` order.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.3))
        >>> [(s.path, s.p, s.mode) for s in find_dropout(model)]
        [('1', 0.3, 'inverted')]
    """
    return [
        DropoutSite(name, f"{type(m).__module__}.{type(m).__qualname__}", float(m.p), _scaling(m))
        for name, m in model.named_modules()
        if _is_dropout(m)
    ]


def _scaling(module: nn.Module) -> str:
    """The module's scaling mode (``inverted`` or ``classic``; StochasticDepth's ``mode`` is its noise shape)."""
    mode = getattr(module, "mode", "inverted")
    return mode if mode in ("inverted", "classic") else "inverted"


def swap_dropout(model: nn.Module) -> nn.Module:
    """Turn every torch dropout module of ``model`` into its dropkit twin, in place; return ``model``.

    Each module keeps its identity and changes class (``module.__class__ = twin``; every twin subclasses its
    torch class and holds no state of its own beyond class-level defaults: no seed, no generator, inverted
    mode). So ``p``, ``inplace``, the train/eval flag, hooks, extra attributes and every reference to the
    module carry over, a module shared by two paths stays one module, and a model that is itself a dropout
    layer is swapped too. Eval outputs are unchanged. Subclasses of torch's classes that are not torch's own
    (including dropkit's) are left alone.

    Example:
        >>> model = swap_dropout(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.3)))
        >>> type(model[1]).__module__, model[1].p
        ('dropkit.nn.dropout', 0.3)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"swap_dropout: model must be a torch.nn.Module, but got {type(model).__name__!r}.")
    for module in model.modules():
        twin = TWINS.get(type(module))
        if twin is not None:
            module.__class__ = twin
    return model


def set_p(model: nn.Module, p: float | Mapping[str, float]) -> list[str]:
    """Set the drop probability of dropout modules; return the paths changed.

    Args:
        model: Any ``nn.Module``.
        p: One rate for every dropout module, or ``{pattern: rate}`` with ``fnmatch`` patterns over module
            paths (``"encoder.*"``, ``"*.attention.*"``); the first matching pattern wins.

    Raises:
        ValueError: If a rate is outside ``[0, 1]`` (``[0, 1)`` for Gaussian dropout) or a pattern matches no
            dropout module.

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1), nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1)))
        >>> set_p(model, {"2.*": 0.3, "*": 0.2})  # the first matching pattern wins
        ['1', '2.1']
        >>> [s.p for s in find_dropout(model)]
        [0.2, 0.3]
    """
    rules = list(p.items()) if isinstance(p, Mapping) else [("*", p)]
    checked = [(pattern, _validate.probability("set_p", rate)) for pattern, rate in rules]
    changed, used = [], set()
    for site in find_dropout(model):
        for pattern, rate in checked:
            if fnmatch.fnmatchcase(site.path, pattern):
                module = model.get_submodule(site.path)
                if isinstance(module, dnn.GaussianDropout):
                    rate = _validate.probability("set_p", rate, allow_one=False)
                module.p = rate
                changed.append(site.path)
                used.add(pattern)
                break
    unused = [pattern for pattern, _ in checked if pattern not in used]
    if isinstance(p, Mapping) and unused:
        raise ValueError(f"set_p: every pattern must match a dropout module, but got no match for {unused!r}.")
    return changed


@torch.no_grad()
def fold_classic(model: nn.Module) -> list[str]:
    """Fold the test-time scaling of classic dropout into the next layer's weights; return the paths folded.

    For each ``mode="classic"`` dropkit dropout directly followed, inside an ``nn.Sequential``, by a Linear,
    Conv or Bilinear layer, that layer's ``weight`` is multiplied by :math:`1 - p` (bias untouched) and the
    dropout switches to ``mode="inverted"``. Eval outputs are equal before and after (up to float rounding of
    the product), and training draws the same distribution. Classic dropout with no such successor is left
    as it is (and not listed); so is one whose successor's weight, or the dropout itself, is used elsewhere in
    the model (a layer shared by two paths, tied weights), where folding would change the other use: a
    ``UserWarning`` names those.

    Example:
        >>> model = nn.Sequential(dnn.Dropout(0.5, mode="classic"), nn.Linear(3, 2)).eval()
        >>> x = torch.ones(1, 3)
        >>> before = model(x)
        >>> fold_classic(model)
        ['0']
        >>> torch.allclose(model(x), before), model[0].mode
        (True, 'inverted')
    """
    uses = Counter(id(t) for _, t in model.named_parameters(remove_duplicate=False))
    uses.update(id(m) for _, m in model.named_modules(remove_duplicate=False))
    folded, shared = [], []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module._modules.items())  # a child listed twice stays twice, unlike named_children()
        for (child_name, child), (_, successor) in zip(children, children[1:], strict=False):
            if getattr(child, "mode", None) == "classic" and isinstance(successor, _FOLDABLE):
                path = f"{name}.{child_name}" if name else child_name
                if uses[id(successor.weight)] > 1 or uses[id(child)] > 1:
                    shared.append(path)
                    continue
                successor.weight.mul_(1.0 - child.p)
                child.mode = "inverted"
                folded.append(path)
    if shared:
        _validate.warn(
            f"fold_classic: left classic dropout at {shared!r} as it is: the next layer's weight or the dropout "
            "itself is used elsewhere in the model, where folding would change the other use."
        )
    return folded
