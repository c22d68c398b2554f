"""How dropkit's ops and modules meet ``__torch_function__`` and ``torch.fx``, as torch's own dropout does.

- :func:`overridable` (on every public functional op): an argument that overrides ``__torch_function__`` (a
  ``torch.fx.Proxy`` while ``torch.fx.symbolic_trace`` runs, a tensor subclass) or an active
  ``TorchFunctionMode`` takes the call, through torch's protocol (``has_torch_function`` /
  ``handle_torch_function``, what ``torch.nn.functional.dropout`` does). Symbolic tracing records one
  ``call_function`` node of the op.
- :func:`fx_leaf_call` (first in every module's ``forward``): under ``torch.fx`` symbolic tracing a dropkit
  module records one ``call_module`` node instead of being traced through. FX's default tracer treats only classes
  from ``torch.nn`` as leaves, so this is what torch's ``nn.Dropout`` gets there: the graph calls the module,
  ``GraphModule.train()`` / ``.eval()`` switch it, and its rate, seed and generator stay in it. A dropkit module
  traced as the root runs its forward, which records its functional op (torch records ``F.dropout`` so).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch.fx import Proxy
from torch.overrides import handle_torch_function, has_torch_function
from torch.utils import _pytree as pytree

F = TypeVar("F", bound=Callable[..., object])


def overridable(op: F) -> F:
    """Wrap a functional op so that ``__torch_function__`` overrides among its arguments take the call.

    Not while dynamo compiles: it traces the op's body itself (a tensor subclass included), as before.
    """

    @functools.wraps(op)
    def public(*args, **kwargs):
        relevant = (*args, *kwargs.values())
        if has_torch_function(relevant) and not torch.compiler.is_compiling():
            return handle_torch_function(public, relevant, *args, **kwargs)
        return op(*args, **kwargs)

    return public  # type: ignore[return-value]


#: What FX's tracers are asked about in place of a dropkit module: a layer of ``torch.nn``.
_TORCH_LAYER = torch.nn.Identity()


def fx_leaf_call(module: torch.nn.Module, *args, **kwargs) -> Proxy | None:
    """Under ``torch.fx`` symbolic tracing, record ``module(*args, **kwargs)`` as one ``call_module`` node.

    Returns the node's proxy when an argument holds a ``torch.fx.Proxy``, ``module`` is not the tracer's root,
    and the tracer would keep a ``torch.nn`` layer at the module's path as a leaf (FX's default tracer does,
    and tracers that extend its rule; one that traces through every module traces through this one too) or
    says so of ``module`` itself; ``None`` otherwise, and the forward runs. Called first thing in every dropkit
    module's ``forward``: a check, not a wrapper, so that FX still reads the forward's own signature when the
    module is the root.
    """
    proxy = _find_proxy(args, kwargs)
    if proxy is None:
        return None
    tracer = proxy.tracer
    path = tracer.path_of_module(module)
    if not path:  # the root: traced through, as FX traces a root torch module
        return None
    if not (tracer.is_leaf_module(_TORCH_LAYER, path) or tracer.is_leaf_module(module, path)):
        return None
    return tracer.create_proxy("call_module", path, args, kwargs)


def _find_proxy(args: tuple, kwargs: dict) -> Proxy | None:
    """The first ``torch.fx.Proxy`` among the arguments, looking into lists, tuples and dicts of them."""
    nested = False
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, Proxy):
            return arg
        nested = nested or isinstance(arg, (list, tuple, dict))
    if nested:  # rare (a wrapped module taking a list): the full walk only then
        for leaf in pytree.tree_leaves((args, kwargs)):
            if isinstance(leaf, Proxy):
                return leaf
    return None
