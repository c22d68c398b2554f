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

Differentiation: reverse mode (double backward included), forward mode (``torch.autograd.forward_ad``) and
``torch.func`` (``grad``, ``jvp``, ``jacrev``, ``jacfwd``, ``vmap`` with ``randomness="same"`` / ``"different"``)
for the dropout, alpha, Gaussian, bias-dropout-add, DropPath and DropConnect ops, and DropBlock but for
``vmap(randomness="different")``. A call nothing can differentiate (inference)
skips the autograd Function and runs the kernel directly.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.autograd.forward_ad as _forward_ad
from torch._functorch.pyfunctorch import coerce_cinterpreter as _coerce_interpreter
from torch._functorch.utils import unwrap_dead_wrappers as _unwrap_dead_wrappers

from . import _validate, kernels, rng
from ._overrides import overridable
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
    "bias_dropout_add",
    "dropout_add_layer_norm",
    "dropout_add_rms_norm",
]

MODES = ("inverted", "classic")
SELU_ALPHA_PRIME = 1.7580993408473766  #: -λα of SELU (Klambauer et al. 2017): the value a dropped unit takes.


class _MaskedAffineFn(torch.autograd.Function):
    """``y = keep ? x·scale + bias : fill`` with the keep mask regenerated from its seed in backward."""

    @staticmethod
    def forward(x: torch.Tensor, spec: MaskSpec, inplace: bool) -> torch.Tensor:  # type: ignore[override]
        if inplace:
            kernels.apply(x, spec, out=x)
            return x  # x itself (dynamo checks that a dirty input is what forward returns)
        return kernels.apply(x, spec)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:  # separate: torch.func transforms need it
        x, ctx.spec, ctx.inplace = inputs
        if ctx.inplace:
            ctx.mark_dirty(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        # itself a masked linear map: differentiable (and vmappable) when a graph of the backward is being built
        # (double backward, torch.func), straight to the kernel otherwise
        if torch.is_grad_enabled():
            return _apply_mask(grad, ctx.spec.linear(), lift=False), None, None
        return kernels.apply(grad, ctx.spec.linear()), None, None


class _MaskedAffineTransformFn(_MaskedAffineFn):
    """:class:`_MaskedAffineFn` with forward-mode AD and a ``torch.vmap`` rule.

    For ``torch.func`` transforms and ``torch.autograd.forward_ad``; a separate class because dynamo cannot trace
    a Function with a custom ``jvp``. Its last input, ``lift``, is the call's (see :func:`_apply_mask`): the vmap
    rule re-dispatches with it, so an op's own call may batch its input at each enclosing vmap level, and a
    backward's or jvp's never does.
    """

    @staticmethod
    def forward(x: torch.Tensor, spec: MaskSpec, inplace: bool, lift: bool) -> torch.Tensor:  # type: ignore[override]
        return _MaskedAffineFn.forward(x, spec, inplace)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
        _MaskedAffineFn.setup_context(ctx, inputs[:3], output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        return (*_MaskedAffineFn.backward(ctx, grad), None)

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor, *_: None) -> torch.Tensor:  # type: ignore[override]
        # the same masked linear map, through the dispatch so that a vmapped tangent gets each slice's mask; an
        # in-place call edits its tangent in place too
        y = _apply_mask(tangent, ctx.spec.linear(), lift=False)
        return tangent.copy_(y) if ctx.inplace else y

    @staticmethod
    def vmap(
        info, in_dims: tuple, x: torch.Tensor, spec: MaskSpec, inplace: bool, lift: bool
    ) -> tuple[torch.Tensor, int]:
        if info.randomness == "different" and spec.state is not None:
            raise NotImplementedError(
                "dropkit: a DeviceGenerator under torch.vmap(randomness='different') would give the slices "
                "overlapping masks (it advanced by one slice's mask); pass seed= or a torch.Generator, or use "
                "randomness='same'."
            )

        def call(t: torch.Tensor, mask_dims: int, shift: int) -> torch.Tensor:
            shard = tuple((d + shift, start, size) for d, start, size in spec.shard) if spec.shard else None
            return _apply_mask(t, dataclasses.replace(spec, mask_dims=mask_dims, shard=shard), inplace, lift)

        return _vmap_rule(info, in_dims[0], x, spec.mask_dims, inplace, call)


def _vmap_rule(info, in_dim: int, x: torch.Tensor, dims: int, inplace: bool, call) -> tuple[torch.Tensor, int]:
    """The ``torch.vmap`` rule of the masked and Gaussian Functions: draws over the leading ``dims`` dimensions.

    Their draw covers the leading ``dims`` dimensions of the input (``-1``: all) and broadcasts over the rest.
    ``randomness="different"`` draws each slice its own values: those of one call on the whole batch (B leads
    the draw's flat index). Otherwise (``"same"``, and the vmapped backward of ``torch.func.jacrev``) every slice
    gets the one draw: B goes after the drawn dimensions, where it broadcasts. ``call(t, dims, shift)`` runs the
    op on ``t`` through its dispatch, so enclosing vmaps apply their own rule; ``shift`` is how far the op's
    original dimensions moved. In place, the input object itself is returned, as ``mark_dirty`` requires.
    """
    batched = x.movedim(in_dim, 0)  # (B, *shape)
    k = batched.dim() - 1 if dims < 0 else dims
    if info.randomness == "different":
        y = call(batched, -1 if dims < 0 else k + 1, 1)
    else:
        y = call(batched.movedim(0, k), k, 0).movedim(k, 0)
    return (x, in_dim) if inplace else (y, 0)


def _vmap_lift(input: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Batch ``input`` at the innermost ``torch.vmap`` level if it draws ``randomness="different"`` and does not.

    Such an input (built inside the vmapped function, or a weight) would otherwise get one draw for every slice.
    Lifted, it is expanded to the batch, so that each slice draws its own values, as torch's random ops do for
    unbatched tensors (``vmap(lambda _: model(x), randomness="different")(torch.arange(T))``: T MC samples). An
    in-place call there raises, as torch's does: the slices' results cannot all be written into one tensor.
    """
    top = torch._C._functorch.peek_interpreter_stack()
    if top is None or top.key() != torch._C._functorch.TransformType.Vmap:
        return input
    vmap = _coerce_interpreter(top)
    if vmap.randomness() != "different" or torch._C._functorch.maybe_get_level(input) == top.level():
        return input
    if inplace:
        raise RuntimeError(
            "dropkit: an in-place random op on a tensor that torch.vmap(randomness='different') does not batch "
            "would need one result per slice in one tensor (torch's in-place dropout raises here too); "
            "use inplace=False or randomness='same'."
        )
    expanded = input.unsqueeze(0).expand(vmap.batch_size(), *input.shape)
    return torch._C._functorch._add_batch_dim(expanded, 0, top.level())


def _apply_mask(input: torch.Tensor, spec: MaskSpec, inplace: bool = False, lift: bool = True) -> torch.Tensor:
    """Return ``input`` under ``spec`` (written into ``input`` when ``inplace``), differentiable when needed.

    ``lift``: an op's own call, where :func:`_vmap_lift` may batch the input (its vmap rule re-dispatches with it, so
    each enclosing vmap level may); ``False`` for the re-dispatches inside the Functions' backward and jvp, which
    must reuse the forward's masks, not decide afresh.

    Through an autograd Function when ``torch.compile``, a ``torch.func`` transform, forward-mode AD or autograd
    may see the call; straight to the kernel otherwise: inference skips the Function's bookkeeping, about a third
    of a mid-size CPU call's time (an in-place call then bumps the version counter itself).
    """
    inplace = bool(inplace)
    if inplace:
        _check_inplace(input)
    if _transforming():
        return _MaskedAffineTransformFn.apply(_vmap_lift(input, inplace) if lift else input, spec, inplace, lift)
    if _autograd_sees(input):
        return _function(_MaskedAffineFn, input, spec, inplace)
    if inplace:
        kernels.apply(input, spec, out=input)
        torch.autograd.graph.increment_version(input)  # the kernel's raw write does not
        return input
    return kernels.apply(input, spec)


def _function(fn: type[torch.autograd.Function], *args: object) -> torch.Tensor:
    """``fn.apply(*args)``, in eager mode without torch's per-call ``inspect.signature``.

    torch's Python ``Function.apply`` binds default arguments through ``inspect.signature`` on every call of a
    Function that defines ``setup_context`` (ours do, for torch.func): about 30 µs, 40 % of a dropout call on a
    small tensor that requires grad. Every argument is passed here, so the C++ ``apply`` beneath it is called
    directly, after the one step of the Python layer that applies outside transforms (unwrapping tensors left
    by finished torch.func transforms). While torch traces, dynamo sees the plain ``fn.apply``.
    """
    if torch.compiler.is_compiling():
        return fn.apply(*args)
    return super(torch.autograd.Function, fn).apply(*_unwrap_dead_wrappers(args))  # type: ignore[misc]


def _check_inplace(input: torch.Tensor) -> None:
    """Refuse what torch refuses of an in-place op, before anything is written, with torch's own message.

    Editing an inference tensor outside inference mode; under autograd, a leaf that requires grad, a view of one,
    and views autograd cannot rebase (made under ``no_grad``, in inference mode, or one of several outputs such as
    ``unbind``'s). The autograd Functions' own check (``mark_dirty``) comes after their forward has written the
    mask into the tensor. For the autograd cases torch's check is run on ``input.mul_(1)``, which raises before
    writing (and where it would not, writes ``x * 1``, which is ``x`` bit for bit). Not while torch traces: the
    traced graph's in-place ops are checked by torch when it runs.
    """
    if torch.compiler.is_compiling():
        return
    if input.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(
            "Inplace update to inference tensor outside InferenceMode is not allowed. You can make a clone to get "
            "a normal tensor before doing inplace update. See https://github.com/pytorch/rfcs/pull/17 for more details."
        )
    if input.requires_grad and torch.is_grad_enabled():
        if input.is_leaf or (input._is_view() and (input._base.is_leaf or _rebase_refused(input))):
            input.mul_(1)


def _rebase_refused(view: torch.Tensor) -> bool:
    meta = torch._C._autograd._get_creation_meta(view)
    return meta != torch._C._autograd.CreationMeta.DEFAULT


def _autograd_sees(input: torch.Tensor) -> bool:
    """Whether an op on ``input`` needs its autograd Function (outside torch.func): traced, or differentiated."""
    return torch.compiler.is_compiling() or (input.requires_grad and torch.is_grad_enabled())


def _transforming() -> bool:
    """Whether forward-mode AD or a ``torch.func`` transform may see the call (never while torch traces)."""
    return not torch.compiler.is_compiling() and (
        _forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active()
    )


class _GaussianFn(torch.autograd.Function):
    """``y = x · (1 + σ z)`` (``multiply``) or ``y = x + σ z``, ``z ~ N(0, 1)`` from the seed (again in backward).

    ``z`` covers the leading ``noise_dims`` dimensions of ``x`` (``-1``: all) and broadcasts over the others.
    """

    @staticmethod
    def forward(x, seed: int, sigma: float, multiply: bool, inplace: bool, noise_dims: int):  # type: ignore[override]
        y = _gaussian(x, seed, sigma, multiply, noise_dims)
        if inplace:
            x.copy_(y)
            return x  # x itself: dynamo checks that a dirty input is what forward returns (not copy_'s result)
        return y

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
        x, ctx.seed, ctx.sigma, ctx.multiply, ctx.inplace, ctx.noise_dims = inputs
        if ctx.inplace:
            ctx.mark_dirty(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        if ctx.multiply:  # the same multiplication; through the dispatch when a graph of it is being built
            args = (grad, ctx.seed, ctx.sigma, True)
            if torch.is_grad_enabled():
                grad = _noise(*args, False, ctx.noise_dims, lift=False)
            else:
                grad = _gaussian(*args, ctx.noise_dims)
        return grad, None, None, None, None, None


class _GaussianTransformFn(_GaussianFn):
    """:class:`_GaussianFn` with forward-mode AD and a ``torch.vmap`` rule (see :class:`_MaskedAffineTransformFn`)."""

    @staticmethod
    def forward(x, seed: int, sigma: float, multiply: bool, inplace: bool, noise_dims: int, lift: bool):  # type: ignore[override]
        return _GaussianFn.forward(x, seed, sigma, multiply, inplace, noise_dims)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
        _GaussianFn.setup_context(ctx, inputs[:6], output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        return (*_GaussianFn.backward(ctx, grad), None)

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor, *_: None) -> torch.Tensor:  # type: ignore[override]
        if not ctx.multiply:  # additive noise: the tangent passes through
            if not ctx.inplace:
                return tangent.clone()
            torch.autograd.graph.increment_version(tangent)  # in place: autograd checks the tangent was written
            return tangent
        y = _noise(tangent, ctx.seed, ctx.sigma, True, False, ctx.noise_dims, lift=False)
        return tangent.copy_(y) if ctx.inplace else y

    @staticmethod
    def vmap(
        info, in_dims: tuple, x, seed: int, sigma: float, multiply: bool, inplace: bool, noise_dims: int, lift: bool
    ):
        def call(t: torch.Tensor, dims: int, shift: int) -> torch.Tensor:
            return _noise(t, seed, sigma, multiply, inplace, dims, lift)

        return _vmap_rule(info, in_dims[0], x, noise_dims, inplace, call)


def _gaussian(x: torch.Tensor, seed: int, sigma: float, multiply: bool, noise_dims: int = -1) -> torch.Tensor:
    """``x · (1 + σ z)`` (computed in float32 or wider) or ``x + σ z``, ``z ~ N(0, 1)`` drawn from ``seed``.

    ``z`` covers the leading ``noise_dims`` dimensions of ``x`` (``-1``: all) and broadcasts over the rest.
    """
    noise = _gaussian_noise(x, seed, sigma, noise_dims)
    if not multiply:
        return x + noise.to(x.dtype)
    opmath = torch.float32 if x.dtype in (torch.float16, torch.bfloat16, torch.float32) else x.dtype
    y = x.to(opmath) * (noise + 1.0).to(opmath)
    # no no-op .to() at the end: torch 2.11's dynamo gives an autograd.Function whose forward returns one a zero
    # gradient (seen for GaussianDropout under torch.compile; tests/test_compile.py)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def _gaussian_noise(x: torch.Tensor, seed: int, sigma: float, noise_dims: int = -1) -> torch.Tensor:
    """``σ z`` in float32, shaped to broadcast over ``x`` (see :func:`_gaussian`); a plain tensor under torch.func."""
    k = x.dim() if noise_dims < 0 else noise_dims
    with kernels.plain_draws(x):
        noise = rng.normal(x.shape[:k], seed, device=x.device).mul_(sigma)
    return noise.reshape(x.shape[:k] + (1,) * (x.dim() - k))


def _noise(
    input: torch.Tensor, seed: int, sigma: float, multiply: bool, inplace: bool, noise_dims: int = -1, lift: bool = True
) -> torch.Tensor:
    """The dispatch of :class:`_GaussianFn`, as :func:`_apply_mask` for the masked ops (``lift`` likewise)."""
    if inplace:
        _check_inplace(input)
    if _transforming():
        x = _vmap_lift(input, inplace) if lift else input
        return _GaussianTransformFn.apply(x, seed, sigma, multiply, inplace, noise_dims, lift)
    if not multiply:  # x + σz: torch's own add, which autograd differentiates (and checks in place) as any add
        noise = _gaussian_noise(input, seed, sigma, noise_dims).to(input.dtype)
        return input.add_(noise) if inplace else input + noise
    if _autograd_sees(input):
        return _function(_GaussianFn, input, seed, sigma, multiply, inplace, noise_dims)
    y = _gaussian(input, seed, sigma, multiply, noise_dims)
    return input.copy_(y) if inplace else y


_forced_training = False


def _force_training(on: bool) -> None:
    """Make every op here run as in training whatever ``training=`` says (:func:`dropkit.mc.mc_dropout` uses it)."""
    global _forced_training
    _forced_training = on


_thresholds: dict[float, int] = {}


def _training(op: str, training: object) -> bool:
    """``training`` (a bool, as torch's ops demand: ``None`` or ``1`` is a ``TypeError``), or on under MC dropout."""
    if training is not True and training is not False:
        training = _validate.flag(op, "training", training)
    return training or _forced_training


def _threshold(p: float) -> int:
    threshold = _thresholds.get(p)
    if threshold is None:
        threshold = _thresholds[p] = rng.keep_threshold(p)
    return threshold


# a constant of the graph while torch traces (numpy inside): what torch.compiler.assume_constant_result sets,
# without importing torch._dynamo (and with it Triton) when dropkit is imported
_threshold._dynamo_marked_constant = True  # type: ignore[attr-defined]


_seed_override = None  # set by dropkit.consistent.frozen_masks: a callable giving the seed of the current site
# set by dropkit.mc.predict: (input, mask dims) -> (seed, first row) placing this mask in the stream of MC samples (its
# rows are rows first.. of the T * N stacked rows of all samples), or None
_sample_hook = None


def _seed(seed: int | None, generator: torch.Generator | None, draws: int | None = None, regions=None) -> int:
    """Return the call's seed: ``seed`` itself, or one drawn from ``generator`` (torch's CPU generator if ``None``).

    ``draws``: how many random values the call draws from it when they follow the input's rows (one per row,
    or per element), ``None`` for draws that do not (a weight's mask, one value for the whole call). MC
    prediction reads it to tell masks its stacked samples could share (:func:`dropkit.mc._per_chunk`).

    Drawn seeds go through :func:`dropkit.rng.draw_seed_mixed`: replayed when ``torch.utils.checkpoint``
    recomputes, rank-mixed under :func:`dropkit.rng.parallel`, and a 0-d int64 tensor drawn by a custom op
    while torch traces (the same value eager draws). ``regions``: the checkpoint regions, if the caller has them.
    """
    if seed is None and _seed_override is not None:  # frozen masks: one fixed seed per call site; MC's streams
        return rng.replayed(lambda: _seed_override(draws), regions)  # a recomputed region keeps its forward's sites
    return int(seed) if seed is not None else rng._draw_seed_mixed(generator, regions)


def _spec(
    input: torch.Tensor,
    seed: int | None,
    generator: torch.Generator | rng.DeviceGenerator | None,
    p: float,
    scale: float,
    bias: float = 0.0,
    fill: float = 0.0,
    mask_dims: int = -1,
) -> MaskSpec:
    """Return the mask spec of one call: seeded from ``seed``, a torch generator, or a device generator."""
    threshold, traced_p = _keep_threshold(input, p)
    k = input.dim() if mask_dims < 0 else mask_dims
    if seed is None and _sample_hook is not None and not isinstance(generator, rng.DeviceGenerator):
        draw = _sample_hook(input, k)  # MC samples stacked in the batch: this chunk's rows of one (seed, tensor)
        if draw is not None:  # from row draw[1] of the T * N stacked rows: a run of global indices, an offset
            offset = draw[1] * math.prod(input.shape[1:k]) if k > 0 else 0
            return MaskSpec(draw[0], offset, threshold, scale, bias, fill, mask_dims, p=traced_p)
    shards: dict[int, tuple[int, int, int]] = {}
    # global element indices of a shard (dropkit.rng.shard; inner wins per dim), as the forward saw them when
    # torch.utils.checkpoint recomputes after the block has closed
    regions = None if torch.compiler.is_compiling() else rng._checkpoint_regions()
    for part in rng.replayed(rng.current_shards, regions):
        dim = _validate.shard_fits("shard", tuple(input.shape), part.dim, part.start, part.size)
        shards[dim] = (dim, part.start, part.size)
    shard = tuple(shards[d] for d in sorted(shards)) or None
    if isinstance(generator, rng.DeviceGenerator):
        shape = list(input.shape[:mask_dims] if mask_dims >= 0 else input.shape)
        for dim, _, size in shard or ():
            if dim < len(shape):
                shape[dim] = size  # advance past the global tensor's mask
        state = rng.replayed(lambda: rng.mixed_state(generator.draw(math.prod(shape))), regions)
        state = state.to(input.device)
        return MaskSpec(0, 0, threshold, scale, bias, fill, mask_dims, state=state, shard=shard, p=traced_p)
    seed = _seed(seed, generator, math.prod(input.shape[:k]), regions)
    return MaskSpec(seed, 0, threshold, scale, bias, fill, mask_dims, shard=shard, p=traced_p)


def _keep_threshold(input: torch.Tensor, p: float) -> tuple[int, float | None]:
    """``(threshold, None)`` for a spec's drop rate ``p``, or ``(-1, p)`` while torch traces the host path.

    There ``p`` may be symbolic (a schedule changes it, or it follows dynamic shapes): the host op derives the
    threshold.
    """
    if torch.compiler.is_compiling() and kernels.select(input) != "triton":
        return -1, p
    return _threshold(p), None


def _checked(
    op: str, p: float, keep: float | None, seed: int | None, generator: torch.Generator | None
) -> float:
    """Validate the arguments shared by every op; return the drop probability."""
    p = _validate.probability(op, p, keep)
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
    training = _training(op, training)
    if training and p == 1.0 and _integral(input):
        return _zeros(input, inplace)
    classic_eval = not training and mode == "classic" and p > 0
    nested = mask_dims < 0 or classic_eval  # element-wise dropout takes nested tensors (as does its eval scaling)
    _validate.tensor_input(op, input, training or classic_eval, 1.0 if classic_eval else p, nested)
    if classic_eval:  # test-time weight scaling: E[train output] = (1 - p) x
        return input.mul_(1.0 - p) if inplace else input * (1.0 - p)
    if not training or p == 0.0:
        return input
    if input.is_nested:
        return _nested(op, input, p, inplace, mode, seed, generator, mask_dims)
    if input.numel() == 0:
        return input
    scale = 0.0 if p == 1.0 else (1.0 / (1.0 - p) if mode == "inverted" else 1.0)
    spec = _spec(input, seed, generator, p, scale, mask_dims=mask_dims)
    return _apply_mask(input, spec, inplace)


def _integral(input: object) -> bool:
    """An integer or bool tensor: refused in training, except at ``p = 1`` (:func:`_zeros`)."""
    return isinstance(input, torch.Tensor) and not (input.is_floating_point() or input.is_complex() or input.is_nested)


def _zeros(input: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``p = 1`` on an integer or bool tensor: zeros of its dtype, as torch's ``x * 0`` (nothing needs a float)."""
    return input.zero_() if inplace else torch.zeros_like(input)


def _nested(op, input, p, inplace, mode, seed, generator, mask_dims) -> torch.Tensor:
    """Element-wise dropout of a nested tensor (strided or jagged), as torch's ``F.dropout`` takes them.

    Channel ops never get here: :func:`dropkit._validate.tensor_input` refuses nested tensors but for ``dropout``.

    One mask over the components' elements laid end to end (component order, row-major), so a seed gives the
    mask the concatenated components would get; differentiable, and the result has the input's layout.
    """
    if inplace:
        raise ValueError(f"{op}: inplace=True is not supported for nested tensors; use inplace=False.")
    parts = input.unbind()
    flat = torch.cat([part.reshape(-1) for part in parts])
    out = _masked(op, flat, p, True, False, mode, seed, generator, -1).split([part.numel() for part in parts])
    pieces = [o.view_as(part) for o, part in zip(out, parts, strict=True)]
    return torch.nested.as_nested_tensor(pieces, layout=input.layout)


@overridable
def dropout(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    mode: str = "inverted",
    keep: float | None = None,
    noise_shape: tuple[int | None, ...] | None = None,
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
        noise_shape: Shape of the mask, broadcast over ``input`` (Keras' ``noise_shape``): one entry per
            dimension, each ``None`` (the input's size), the input's size, or ``1`` (one draw shared along that
            dimension). ``(N, 1, F)`` on ``(N, T, F)`` input drops the same features at every time step.
            Default: ``None`` (one draw per element).
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
        >>> y = dropout(torch.ones(2, 3, 4), p=0.5, noise_shape=(None, 1, None), seed=0)
        >>> bool((y[:, 0] == y[:, 1]).all() and (y[:, 0] == y[:, 2]).all())
        True

    References:
        Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting", JMLR 2014.
    """
    p = _checked("dropout", p, keep, seed, generator)

    def masked(t: torch.Tensor, mask_dims: int) -> torch.Tensor:
        return _masked("dropout", t, p, training, inplace, mode, seed, generator, mask_dims=mask_dims)

    return _noise_shaped("dropout", input, noise_shape, inplace, masked)


def _noise_shaped(op: str, input: torch.Tensor, noise_shape, inplace: bool, masked) -> torch.Tensor:
    """Run ``masked(tensor, mask_dims)`` with the mask Keras' ``noise_shape`` describes (``None``: element-wise).

    The mask covers the dimensions with their own draws; moving the shared ones last makes it a channel mask
    over the leading dimensions, whose flat index is the flat index into ``noise_shape``.
    """
    if noise_shape is None:
        return masked(input, -1)
    _validate.tensor_input(op, input, False)
    shape = tuple(input.shape)
    noise = _validate.noise_shape(op, noise_shape, shape)
    own = [d for d in range(len(shape)) if noise[d] == shape[d]]
    perm = own + [d for d in range(len(shape)) if noise[d] != shape[d]]
    if len(own) == len(shape):
        return masked(input, -1)
    if perm == sorted(perm):
        return masked(input, len(own))
    view = input.permute(perm)
    y = masked(view, len(own))
    return input if inplace or y is view else y.permute(sorted(range(len(perm)), key=perm.__getitem__))


def _channel_dims(op: str, input: torch.Tensor, drops: bool = True) -> int:
    """Return how many leading dimensions a channel mask covers for dropout1d/2d/3d, with torch's rules.

    As in torch, a rank too small for a channel mask is an error only when a mask is drawn (``drops``: training
    with ``0 < p < 1``); in eval, at ``p = 0`` and at ``p = 1`` any rank passes (dropout1d's rank check and the
    warnings apply always, as torch's do).
    """
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
        if drops:
            _validate.min_dim(op, input, 2, "(N, C, *)")
        return 2
    if ndim not in (4, 5):
        _validate.warn(
            f"dropout3d: Received a {ndim}-D input to dropout3d; expected (N, C, D, H, W) or (C, D, H, W). "
            "The input is read as unbatched, as torch does; use dropout() for per-element dropout."
        )
    if drops:
        _validate.min_dim(op, input, 1, "(C, *)")
    return 2 if ndim == 5 else 1


def _channel_doc(op: str, layout: str, shape: str) -> str:
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

    Example:
        >>> y = {op}(torch.ones({shape}), p=0.5, seed=2)
        >>> y.flatten(2).amax(-1)  # one value per channel: 0 (dropped) or 1 / (1 - p)
        tensor([[2., 0., 2., 0.]])
        >>> bool((y.flatten(2).amin(-1) == y.flatten(2).amax(-1)).all())  # each channel kept or dropped whole
        True

    References:
        Tompson et al., "Efficient Object Localization Using Convolutional Networks", CVPR 2015,
        https://arxiv.org/abs/1411.4280
    """


def _channel_op(op: str, layout: str, shape: str):
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
        drops = _training(op, training) and 0.0 < p < 1.0 and input.numel() > 0
        dims = _channel_dims(op, input, drops)
        return _masked(op, input, p, training, inplace, mode, seed, generator, mask_dims=dims if drops else -1)

    channel_dropout.__name__ = channel_dropout.__qualname__ = op
    channel_dropout.__doc__ = _channel_doc(op, layout, shape)
    return overridable(channel_dropout)


dropout1d = _channel_op("dropout1d", ":math:`(N, C, L)` or :math:`(C, L)`", "1, 4, 3")
dropout2d = _channel_op(
    "dropout2d", ":math:`(N, C, H, W)` (or :math:`(N, C, L)`, as torch reads 3-D input)", "1, 4, 2, 2"
)
dropout3d = _channel_op("dropout3d", ":math:`(N, C, D, H, W)` or :math:`(C, D, H, W)`", "1, 4, 2, 2, 2")


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
    training = _training(op, training)
    if training and p == 1.0 and _integral(input):
        return _zeros(input, inplace)
    _validate.tensor_input(op, input, training, p)
    if not training or p == 0.0 or input.numel() == 0:
        return input
    if p == 1.0:  # every unit dropped: no mask to shape, any rank (as torch)
        spec = _spec(input, seed, generator, p, 0.0)
    else:
        if mask_dims == 2:  # a channel mask needs channels: torch's "at least 2 dimensions", only when drawing one
            _validate.min_dim(op, input, 2, "(N, C, *)")
        a = 1.0 / math.sqrt((SELU_ALPHA_PRIME**2 * p + 1.0) * (1.0 - p))
        bias, fill = SELU_ALPHA_PRIME * a * p, SELU_ALPHA_PRIME * a * (p - 1.0)
        spec = _spec(input, seed, generator, p, a, bias, fill, mask_dims)
    return _apply_mask(input, spec, inplace)


@overridable
def alpha_dropout(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = False,
    inplace: bool = False,
    *,
    keep: float | None = None,
    noise_shape: tuple[int | None, ...] | None = None,
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
        noise_shape: Shape of the mask, broadcast over ``input``, as for :func:`dropout` (Keras' ``AlphaDropout``
            ``noise_shape``). Default: ``None`` (one draw per element).
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

    def masked(t: torch.Tensor, mask_dims: int) -> torch.Tensor:
        return _alpha("alpha_dropout", t, p, training, inplace, keep, seed, generator, mask_dims=mask_dims)

    return _noise_shaped("alpha_dropout", input, noise_shape, inplace, masked)


@overridable
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

    Example:
        >>> y = feature_alpha_dropout(torch.zeros(1, 4, 3), p=0.5, training=True, seed=2)
        >>> y.amin(-1) == y.amax(-1)  # one draw per channel: every position of a channel gets the same value
        tensor([[True, True, True, True]])
        >>> feature_alpha_dropout(torch.ones(2, 3), p=0.5)  # training=False by default, as in torch
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """
    return _alpha("feature_alpha_dropout", input, p, training, inplace, keep, seed, generator, mask_dims=2)


@overridable
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
    p = _validate.probability("gaussian_dropout", p, keep, allow_one=False)
    _validate.seed_source("gaussian_dropout", seed, generator, device_generator=False)
    training = _training("gaussian_dropout", training)
    _validate.tensor_input("gaussian_dropout", input, training)
    if not training or p == 0.0 or input.numel() == 0:
        return input
    return _noise(input, _seed(seed, generator, input.numel()), math.sqrt(p / (1.0 - p)), True, bool(inplace))


@overridable
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
    _validate.seed_source("gaussian_noise", seed, generator, device_generator=False)
    training = _training("gaussian_noise", training)
    _validate.tensor_input("gaussian_noise", input, training)
    if not training or stddev == 0.0 or input.numel() == 0:
        return input
    return _noise(input, _seed(seed, generator, input.numel()), stddev, False, bool(inplace))


# ---------------------------------------------------------------------------------------------------------------
# Fused dropout + residual (+ bias) (+ norm): one kernel on CUDA (dropkit.kernels.triton), composed ops elsewhere.
# The dropout mask of ``x`` is the one ``dropout(x, p, seed=s)`` draws, so fused and composed paths agree.
# ---------------------------------------------------------------------------------------------------------------


class _BiasDropoutAddFn(torch.autograd.Function):
    """``residual + dropout(x + bias)``: the mask regenerated in backward."""

    @staticmethod
    def forward(ctx, x, bias, residual, spec):  # type: ignore[override]
        ctx.spec, ctx.has_bias = spec, bias is not None
        ctx.dtypes = (None if bias is None else bias.dtype, residual.dtype)
        return kernels.apply(x, spec, bias=bias, residual=residual)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        dx = kernels.apply(grad.contiguous(), ctx.spec.linear())
        dbias = dx.reshape(-1, dx.shape[-1]).sum(0).to(ctx.dtypes[0]) if ctx.has_bias else None
        return dx, dbias, grad.to(ctx.dtypes[1]), None


@overridable
def bias_dropout_add(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    p: float,
    training: bool = True,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Return ``residual + dropout(x + bias, p)`` in one pass over memory.

    :math:`y = r + m \odot (x + b) / (1 - p)`, :math:`m \sim \mathrm{Bernoulli}(1 - p)` per element, ``b``
    broadcast over the last dimension; in eval :math:`y = r + x + b`. The transformer's post-projection step
    (Megatron-LM's ``bias_dropout_add``); on CUDA one Triton kernel reads ``x``, ``bias`` and ``residual``
    once and writes ``y``, and backward regenerates the mask (nothing of ``x``'s size is kept).

    Args:
        x: Input of shape :math:`(*, H)`.
        bias: Bias of shape :math:`(H,)` and ``x``'s dtype, or ``None``.
        residual: Tensor of ``x``'s shape and dtype.
        p: Probability of zeroing an element of ``x + bias``. Must satisfy ``0 <= p <= 1``.
        training: Apply dropout if ``True``. Default: ``True``.
        seed: Explicit 64-bit seed. Default: ``None``.
        generator: Generator to draw the seed from. Default: torch's global CPU generator.

    Returns:
        Tensor of ``x``'s shape, dtype and device.

    Raises:
        ValueError: If ``p`` is outside ``[0, 1]`` or the shapes do not match.
        TypeError: If ``bias`` or ``residual`` has another dtype than ``x``.

    Example:
        >>> y = bias_dropout_add(torch.ones(2, 4), torch.ones(4), torch.zeros(2, 4), 0.5, seed=0)
        >>> sorted(set(y.flatten().tolist()))
        [0.0, 4.0]

    References:
        Shoeybi et al., "Megatron-LM", 2019, https://arxiv.org/abs/1909.08053
    """
    op = "bias_dropout_add"
    p = _checked(op, p, None, seed, generator)
    _validate.tensor_input(op, x, True)
    _validate.matching(op, "residual", residual, tuple(x.shape), x)
    _validate.matching(op, "bias", bias, tuple(x.shape[-1:]), x)
    for name, other in (("residual", residual), ("bias", bias)):
        if other is not None and other.dtype != x.dtype:
            raise TypeError(f"{op}: {name} must have the dtype of x ({x.dtype}), but got {other.dtype}.")
    training = _training(op, training)
    if not training or p == 0.0 or x.numel() == 0:
        return residual + (x if bias is None else x + bias)
    spec = _spec(x, seed, generator, p, 0.0 if p == 1.0 else 1.0 / (1.0 - p))
    if _transforming():  # torch.func: composed, the masked op's rules do the rest (same values as the fused path)
        return residual + _apply_mask(x if bias is None else x + bias, spec)
    return _BiasDropoutAddFn.apply(x.contiguous(), bias, residual.contiguous(), spec)


class _DropoutAddNormFn(torch.autograd.Function):
    """The fused kernel pair: ``(y, h)`` forward, the dropout mask regenerated in backward."""

    @staticmethod
    def forward(ctx, x, residual, weight, bias, rowscale, spec, eps, is_rms, residual_dtype):  # type: ignore[override]
        shape, cols = x.shape, x.shape[-1]
        x2 = x.reshape(-1, cols).contiguous()
        r2 = None if residual is None else residual.reshape(-1, cols).contiguous()
        y, h, mean, rstd = kernels.norm_forward(x2, r2, weight, bias, rowscale, spec, eps, is_rms, residual_dtype)
        ctx.save_for_backward(h, weight, rowscale, mean, rstd)
        ctx.spec, ctx.is_rms, ctx.shape = spec, is_rms, shape
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.x_dtype, ctx.residual_dtype = x.dtype, None if residual is None else residual.dtype
        ctx.set_materialize_grads(False)
        return y.view(shape), h.view(shape)

    @staticmethod
    def backward(ctx, dy, dh):  # type: ignore[override]
        h, weight, rowscale, mean, rstd = ctx.saved_tensors
        dy = torch.zeros_like(h, dtype=ctx.x_dtype) if dy is None else dy.reshape(h.shape).contiguous()
        dh = None if dh is None else dh.reshape(h.shape).contiguous()
        dx, dres, dw, db = kernels.norm_backward(
            dy, h, weight, ctx.bias_dtype is not None, rowscale, mean, rstd, dh, ctx.spec, ctx.is_rms, ctx.x_dtype,
            ctx.residual_dtype,
        )
        return (
            dx.view(ctx.shape),
            None if ctx.residual_dtype is None else dres.view(ctx.shape),
            None if weight is None else dw.to(weight.dtype),
            None if ctx.bias_dtype is None else db.to(ctx.bias_dtype),
            None, None, None, None, None,
        )


def _dropout_add_norm(
    op: str,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    p: float,
    eps: float,
    rowscale: torch.Tensor | None,
    prenorm: bool,
    residual_in_fp32: bool,
    training: bool,
    seed: int | None,
    generator: torch.Generator | None,
    is_rms: bool,
):
    p = _checked(op, p, None, seed, generator)
    eps = _validate.nonnegative(op, "eps", eps)
    _validate.tensor_input(op, x, True)
    _validate.min_dim(op, x, 1, "(*, H)")
    cols, rows = x.shape[-1], x.numel() // max(1, x.shape[-1])
    _validate.matching(op, "residual", residual, tuple(x.shape), x)
    _validate.matching(op, "weight", weight, (cols,), x)
    _validate.matching(op, "bias", bias, (cols,), x)
    if rowscale is not None:
        _validate.matching(op, "rowscale", rowscale.reshape(-1), (rows,), x)
        rowscale = rowscale.reshape(-1).contiguous()
    residual_dtype = residual.dtype if residual is not None else (torch.float32 if residual_in_fp32 else x.dtype)
    training = _training(op, training)
    spec = None
    if training and p > 0.0 and x.numel() > 0:
        spec = _spec(x, seed, generator, p, 0.0 if p == 1.0 else 1.0 / (1.0 - p))
    if x.numel() > 0 and kernels.fused_norm(x):
        y, h = _DropoutAddNormFn.apply(x, residual, weight, bias, rowscale, spec, eps, is_rms, residual_dtype)
    else:
        y, h = _dropout_add_norm_composed(x, residual, weight, bias, rowscale, spec, eps, is_rms, residual_dtype)
    return (y, h) if prenorm else y


def _dropout_add_norm_composed(x, residual, weight, bias, rowscale, spec, eps, is_rms, residual_dtype):
    """The same maths from separate ops (CPU, float64, rows beyond the kernel's reach): computed in fp32 or wider."""
    wide = torch.promote_types(x.dtype, torch.float32)
    h = x.to(wide)
    if rowscale is not None:
        h = h * rowscale.to(wide).reshape(x.shape[:-1] + (1,))
    if spec is not None:
        h = _apply_mask(h.contiguous(), spec)
    if residual is not None:
        h = h + residual.to(wide)
    w = None if weight is None else weight.to(wide)
    if is_rms:
        y = torch.nn.functional.rms_norm(h, (x.shape[-1],), w, eps)
        y = y if bias is None else y + bias.to(wide)
    else:
        y = torch.nn.functional.layer_norm(h, (x.shape[-1],), w, None if bias is None else bias.to(wide), eps)
    return y.to(x.dtype), h.to(residual_dtype)


def _norm_doc(name: str, math_line: str, reference: str) -> str:
    return rf"""Return {name} of ``dropout(x * rowscale) + residual`` (and that sum, with ``prenorm=True``).

    Per row of length :math:`H` (the last dimension):

    .. math::

        h = m \odot (x \cdot r) / (1 - p) + \text{{residual}}, \qquad {math_line}

    with :math:`m \sim \mathrm{{Bernoulli}}(1 - p)` per element (the mask ``dropout(x, p, seed=s)`` draws) and
    :math:`r` the optional per-row scale (e.g. a DropPath keep mask over :math:`1 - p_\text{{path}}`). On CUDA
    one Triton kernel reads ``x`` and ``residual`` once and writes ``y`` and ``h``; backward regenerates the
    mask from the seed, so dropout keeps 0 bytes per element. Elsewhere the same maths runs as separate ops.
    Argument names and order follow flash-attn's ``dropout_add_layer_norm`` (``p`` for ``dropout_p``).

    Args:
        x: Input of shape :math:`(*, H)`.
        residual: Tensor of ``x``'s shape, or ``None`` (then :math:`h` is the dropped-out ``x``).
        weight: Scale :math:`w` of shape :math:`(H,)`, or ``None``.
        bias: Shift :math:`b` of shape :math:`(H,)`, or ``None``.
        p: Probability of zeroing an element of ``x``. Must satisfy ``0 <= p <= 1``.
        eps: Added to the variance for stability. Default: ``1e-5``.
        rowscale: Per-row scale of shape :math:`(*)` (``x.shape[:-1]``), or ``None``. Default: ``None``.
        prenorm: Also return :math:`h`, the new residual stream. Default: ``False``.
        residual_in_fp32: With ``residual=None``, keep :math:`h` in float32. Default: ``False``.
        training: Apply dropout if ``True``. Default: ``True``.
        seed: Explicit 64-bit seed. Default: ``None``.
        generator: ``torch.Generator`` or :class:`dropkit.rng.DeviceGenerator` to draw the seed from.

    Returns:
        ``y`` of ``x``'s shape and dtype; with ``prenorm=True`` the pair ``(y, h)``, ``h`` in ``residual``'s
        dtype (float32 with ``residual_in_fp32`` and no residual, else ``x``'s).

    Raises:
        ValueError: If ``p`` is outside ``[0, 1]``, ``eps`` is negative, or a shape does not match.

    References:
        {reference}
        Dao et al., flash-attn ``ops/triton/layer_norm.py``, https://github.com/Dao-AILab/flash-attention
    """


@overridable
def dropout_add_layer_norm(  # noqa: D103 - docstring assigned below, shared with dropout_add_rms_norm
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    p: float,
    eps: float = 1e-5,
    rowscale: torch.Tensor | None = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    *,
    training: bool = True,
    seed: int | None = None,
    generator: torch.Generator | None = None,
):
    return _dropout_add_norm(
        "dropout_add_layer_norm", x, residual, weight, bias, p, eps, rowscale, prenorm, residual_in_fp32, training,
        seed, generator, is_rms=False,
    )


@overridable
def dropout_add_rms_norm(  # noqa: D103 - docstring assigned below
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    p: float,
    eps: float = 1e-5,
    rowscale: torch.Tensor | None = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
    *,
    training: bool = True,
    seed: int | None = None,
    generator: torch.Generator | None = None,
):
    return _dropout_add_norm(
        "dropout_add_rms_norm", x, residual, weight, bias, p, eps, rowscale, prenorm, residual_in_fp32, training,
        seed, generator, is_rms=True,
    )


dropout_add_layer_norm.__doc__ = _norm_doc(
    "the LayerNorm",
    r"y = \frac{h - \mu(h)}{\sqrt{\sigma^2(h) + \epsilon}}\, w + b",
    'Ba et al., "Layer Normalization", 2016, https://arxiv.org/abs/1607.06450',
) + """
    Example:
        >>> x, r, w = torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.ones(8)
        >>> y, h = dropout_add_layer_norm(x, r, w, None, 0.1, prenorm=True, seed=0)
        >>> y.shape, torch.allclose(h, dropout(x, 0.1, seed=0) + r)
        (torch.Size([2, 3, 8]), True)
"""
dropout_add_rms_norm.__doc__ = _norm_doc(
    "the RMSNorm",
    r"y = \frac{h}{\sqrt{\overline{h^2} + \epsilon}}\, w + b",
    'Zhang & Sennrich, "Root Mean Square Layer Normalization", 2019, https://arxiv.org/abs/1910.07467',
) + """
    Example:
        >>> y = dropout_add_rms_norm(torch.randn(4, 8), None, torch.ones(8), None, 0.0)
        >>> y.pow(2).mean(-1).allclose(torch.ones(4), atol=1e-4)
        True
"""


# ---------------------------------------------------------------------------------------------------------------------
# Weight-level and learned dropout (issue 4, items 3-7): DropConnect, Concrete dropout, R-Drop.
# ---------------------------------------------------------------------------------------------------------------------

__all__ += [
    "drop_connect",
    "drop_connect_linear",
    "drop_connect_conv1d",
    "drop_connect_conv2d",
]


def _masked_weight(param: torch.Tensor, seed: int, offset: int, p: float, samples: int | None) -> torch.Tensor:
    """Return ``param`` (or ``samples`` stacked copies of it) under an inverted dropout mask from ``(seed, offset)``."""
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    spec = MaskSpec(seed, offset, _threshold(p), scale)
    if samples is not None:
        param = param.unsqueeze(0).expand(samples, *param.shape).contiguous()
    return _apply_mask(param, spec)


def _drop_connect_params(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    p: float,
    drop_bias: bool,
    samples: int | None,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Masked weight and bias of one DropConnect call: one seed, the bias mask right after the weight's."""
    w = _masked_weight(weight, seed, 0, p, samples)
    if bias is not None and drop_bias:
        bias = _masked_weight(bias, seed, w.numel(), p, samples)
    return w, bias


#: Elements of masked weight copies one per-sample DropConnect chunk materialises (16 MiB in fp32).
PER_SAMPLE_CHUNK = 1 << 22


def _per_sample_chunks(weight: torch.Tensor, seed: int, p: float, n: int, masked_weights: bool = True):
    """Yield ``(start, stop, spec, masked)`` over chunks of samples, ``masked`` the ``(c, *W)`` masked weights.

    Sample ``i``'s mask is the one ``drop_connect(weight, samples=n)`` gives it (offset ``i * weight.numel()``).
    One buffer is reused for every chunk (fresh pages cost more than the masking itself); with
    ``masked_weights=False`` it is yielded unfilled (a scratch buffer).
    """
    numel = weight.numel()
    chunk = min(n, max(1, PER_SAMPLE_CHUNK // max(1, numel)))
    scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
    buffer = weight.new_empty(chunk, *weight.shape)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        masked = buffer[: stop - start]
        spec = MaskSpec(seed, start * numel, _threshold(p), scale)
        if masked_weights:
            masked.copy_(weight.expand_as(masked))
            kernels.apply(masked, spec, out=masked)
        yield start, stop, spec, masked


class _PerSampleLinearFn(torch.autograd.Function):
    """``y[i] = x[i] (M_i ⊙ W)^T / (1-p)`` for every sample ``i``, in chunks, masks regenerated in backward.

    Keeps ``x`` and ``W`` for backward, not the :math:`N` masked copies: memory O(chunk · W), not O(N · W).
    Once differentiable.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, seed: int, p: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.seed, ctx.p = seed, p
        out = x.new_empty(x.shape[0], x.shape[1], weight.shape[0])
        for start, stop, _, masked in _per_sample_chunks(weight, seed, p, x.shape[0]):
            torch.bmm(x[start:stop], masked.transpose(1, 2), out=out[start:stop])
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        dx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        dw = None
        if ctx.needs_input_grad[1]:  # accumulated in float32 for half and bfloat16 weights
            half = weight.dtype in (torch.float16, torch.bfloat16)
            dw = torch.zeros_like(weight, dtype=torch.float32 if half else None)
        for start, stop, spec, buffer in _per_sample_chunks(weight, ctx.seed, ctx.p, x.shape[0], dx is not None):
            g = grad[start:stop]
            if dx is not None:
                torch.bmm(g, buffer, out=dx[start:stop])
            if dw is not None:  # dW = sum_i M_i ⊙ (g_i^T x_i) / (1-p): the summed outer products, masked in place
                if g.shape[1] == 1:  # one row per sample: the outer product is a broadcast multiply
                    torch.mul(g.transpose(1, 2), x[start:stop], out=buffer)
                else:
                    torch.bmm(g.transpose(1, 2), x[start:stop], out=buffer)
                dw += kernels.apply(buffer, spec.linear(), out=buffer).sum(0, dtype=dw.dtype)
        return dx, (dw.to(weight.dtype) if dw is not None else None), None, None


@overridable
def drop_connect(
    weight: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    *,
    samples: int | None = None,
    keep: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Return a DropConnect sample of a weight tensor: each weight zeroed with probability ``p``.

    In training :math:`\tilde W = (M \odot W) / (1 - p)` with :math:`M_{ij} \sim \mathrm{Bernoulli}(1 - p)`
    (inverted scaling, so :math:`E[\tilde W] = W`); in eval (and at ``p = 0``) ``weight`` itself. Use the result
    in place of the weight (``F.linear(x, drop_connect(w, 0.5), b)``); gradients reach ``weight`` through the
    same mask (regenerated from its seed in backward, nothing of the weight's size is kept). With
    ``samples=N`` it returns ``N`` independent samples stacked, shape :math:`(N, *)`, one per input row.

    Args:
        weight: Weight tensor of any shape.
        p: Probability of zeroing a weight. Must satisfy ``0 <= p <= 1``. Default: ``0.5``.
        training: Apply DropConnect if ``True``; return ``weight`` otherwise. Default: ``True``.
        samples: Number of independent masks to stack (per-sample DropConnect), or ``None`` for one. Default:
            ``None``.
        keep: Keep probability, an alternative to ``p``. Default: ``None``.
        seed: Explicit 64-bit seed. Default: ``None``.
        generator: Generator to draw the seed from. Default: torch's global CPU generator.

    Shape:
        - Weight: :math:`(*)`.
        - Output: :math:`(*)`, or :math:`(N, *)` with ``samples=N``.

    Returns:
        The masked weight, same dtype and device as ``weight``.

    Raises:
        ValueError: If ``p`` is outside ``[0, 1]`` or ``samples`` is not an int ``>= 0``.

    Example:
        >>> drop_connect(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), p=0.5, seed=0)
        tensor([[2., 0.],
                [0., 0.]])
        >>> drop_connect(torch.ones(2, 3), p=0.5, samples=4).shape
        torch.Size([4, 2, 3])

    References:
        Wan et al., "Regularization of Neural Networks using DropConnect", ICML 2013.
    """
    op = "drop_connect"
    p = _checked(op, p, keep, seed, generator)
    if samples is not None:
        samples = _validate.count(op, "samples", samples, minimum=0)
    training = _training(op, training)
    _validate.tensor_input(op, weight, training)
    if not training or p == 0.0:
        return weight if samples is None else weight.unsqueeze(0).expand(samples, *weight.shape)
    return _masked_weight(weight, _seed(seed, generator), 0, p, samples)


@overridable
def drop_connect_linear(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    p: float = 0.5,
    training: bool = True,
    drop_bias: bool = False,
    per_sample: bool = False,
    keep: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Linear map with DropConnect on its weights: :math:`y = x \tilde W^\top + b`.

    :math:`\tilde W = (M \odot W)/(1-p)`, :math:`M_{ij} \sim \mathrm{Bernoulli}(1-p)`, a fresh mask per call
    (the bias too when ``drop_bias``, with its own mask). By default one mask serves the whole batch
    (``per_sample=False``, the cheap form used in practice); ``per_sample=True`` draws one weight mask per
    row of the batch, as in Wan et al.'s definition, and evaluates the rows as batched matmuls over chunks of
    samples (:data:`PER_SAMPLE_CHUNK` masked weight elements at a time, regenerated in backward): the FLOPs
    of the dense layer, but as :math:`N` matrix-vector products (memory-bound), plus
    :math:`O(N \cdot \text{out} \cdot \text{in})` mask generation, twice; only ``input`` and ``weight`` are kept
    for backward. The per-sample path is once differentiable. In eval the plain
    weights are used (inverted scaling: :math:`E[\tilde W] = W`, the mean-field network, not the paper's
    Gaussian moment-matching inference).

    Args:
        input: Input of shape :math:`(*, \text{in})`; with ``per_sample`` the first dimension is the batch.
        weight: Weight of shape :math:`(\text{out}, \text{in})`.
        bias: Optional bias of shape :math:`(\text{out})`. Default: ``None``.
        p: Probability of zeroing a weight. Must satisfy ``0 <= p <= 1``. Default: ``0.5``.
        training: Apply DropConnect if ``True``; a plain linear map otherwise. Default: ``True``.
        drop_bias: Drop bias entries too. Default: ``False``.
        per_sample: One weight mask per batch row instead of one per call. Default: ``False``.
        keep: Keep probability, an alternative to ``p``. Default: ``None``.
        seed: Explicit 64-bit seed. Default: ``None``.
        generator: Generator to draw the seed from. Default: torch's global CPU generator.

    Shape:
        - Input: :math:`(*, \text{in})` (:math:`(N, *, \text{in})` or :math:`(\text{in})` with ``per_sample``).
        - Output: :math:`(*, \text{out})`.

    Returns:
        The output tensor, as ``torch.nn.functional.linear`` gives.

    Raises:
        ValueError: If ``p`` is outside ``[0, 1]``.

    Example:
        >>> x, w = torch.ones(1, 3), torch.ones(2, 3)
        >>> drop_connect_linear(x, w, p=0.5, seed=0)
        tensor([[2., 2.]])
        >>> drop_connect_linear(x, w, p=0.5, training=False)
        tensor([[3., 3.]])

    References:
        Wan et al., "Regularization of Neural Networks using DropConnect", ICML 2013.
    """
    op = "drop_connect_linear"
    p = _checked(op, p, keep, seed, generator)
    training = _training(op, training)
    _validate.tensor_input(op, input, training)
    if not training or p == 0.0:
        return torch.nn.functional.linear(input, weight, bias)
    seed = _seed(seed, generator, (1 if input.dim() == 1 else input.shape[0]) if per_sample else None)
    if not per_sample:
        return torch.nn.functional.linear(input, *_drop_connect_params(weight, bias, p, drop_bias, None, seed))
    rows = input.unsqueeze(0) if input.dim() == 1 else input
    n = rows.shape[0]
    if rows.numel() == 0:
        return torch.nn.functional.linear(input, weight, bias)
    by_sample = rows.reshape(n, -1, rows.shape[-1])  # (N, L, in)
    if _transforming():  # torch.func: the N masked copies through the transform-aware op (memory O(N W) there)
        masked = _masked_weight(weight, seed, 0, p, n)  # sample i's mask at offset i * W.numel(), as in the Function
        y = torch.bmm(by_sample, masked.transpose(1, 2))
    else:
        y = _PerSampleLinearFn.apply(by_sample, weight, seed, p)  # (N, L, out)
    b = bias
    if bias is not None and drop_bias:
        b = _masked_weight(bias, seed, n * weight.numel(), p, n)
    if b is not None:
        y = y + (b.unsqueeze(1) if b.dim() == 2 else b)
    y = y.reshape(*rows.shape[:-1], weight.shape[0])
    return y.squeeze(0) if input.dim() == 1 else y


_CONVS = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d}


def _drop_connect_conv(
    op: str,
    nd: int,
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride,
    padding,
    dilation,
    groups: int,
    p: float,
    training: bool,
    drop_bias: bool,
    per_sample: bool,
    keep: float | None,
    seed: int | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    conv = _CONVS[nd]
    p = _checked(op, p, keep, seed, generator)
    training = _training(op, training)
    _validate.tensor_input(op, input, training)
    if not training or p == 0.0:
        return conv(input, weight, bias, stride, padding, dilation, groups)
    seed = _seed(seed, generator, input.shape[0] if per_sample else None)
    if not per_sample:
        w, b = _drop_connect_params(weight, bias, p, drop_bias, None, seed)
        return conv(input, w, b, stride, padding, dilation, groups)
    batched = input.dim() == nd + 2
    rows = input if batched else input.unsqueeze(0)
    n = rows.shape[0]
    if rows.numel() == 0:
        return conv(input, weight, bias, stride, padding, dilation, groups)
    # grouped-convolution trick: the N samples become N·groups groups of one convolution
    w, b = _drop_connect_params(weight, bias, p, drop_bias, n, seed)
    if b is not None:
        b = b.reshape(-1) if b.dim() == 2 else b.repeat(n)
    x = rows.reshape(1, -1, *rows.shape[2:])
    y = conv(x, w.reshape(-1, *w.shape[2:]), b, stride, padding, dilation, groups * n)
    y = y.reshape(n, weight.shape[0], *y.shape[2:])
    return y if batched else y.squeeze(0)


def _drop_connect_conv_doc(nd: int) -> str:
    layout = "(N, C_{in}, L)" if nd == 1 else "(N, C_{in}, H, W)"
    x_shape, w_shape, taps = ("1, 1, 4", "1, 1, 2", 2) if nd == 1 else ("1, 1, 3, 3", "1, 1, 2, 2", 4)
    values, plain = ([2.0] * 3, [2.0] * 3) if nd == 1 else ([2.0] * 4, [4.0] * 4)
    return rf"""Convolution with DropConnect on its kernel: ``conv{nd}d(input, drop_connect(weight), bias, ...)``.

    The first seven arguments are those of ``torch.nn.functional.conv{nd}d``. The kernel
    :math:`\tilde W = (M \odot W)/(1-p)` gets a fresh Bernoulli(1 - p) mask per call, shared by the batch
    (``per_sample=False``), or one mask per sample (``per_sample=True``): the :math:`N` masked kernels run as
    one grouped convolution with :math:`N \cdot \text{{groups}}` groups, costing :math:`N` kernel copies of memory
    and grouped-conv speed (slower than a dense conv on most backends; a loop would be slower still for
    small inputs). The bias gets its own mask when ``drop_bias``. Eval uses the plain kernel.

    Args:
        input: Input of shape :math:`{layout}` or unbatched.
        weight: Kernel, as for ``conv{nd}d``.
        bias: Optional bias :math:`(C_{{out}})`. Default: ``None``.
        stride: As for ``conv{nd}d``. Default: ``1``.
        padding: As for ``conv{nd}d`` (int, tuple, ``"same"`` or ``"valid"``). Default: ``0``.
        dilation: As for ``conv{nd}d``. Default: ``1``.
        groups: As for ``conv{nd}d``. Default: ``1``.
        p: Probability of zeroing a kernel weight. Must satisfy ``0 <= p <= 1``. Default: ``0.5``.
        training: Apply DropConnect if ``True``; a plain convolution otherwise. Default: ``True``.
        drop_bias: Drop bias entries too. Default: ``False``.
        per_sample: One kernel mask per sample instead of one per call. Default: ``False``.
        keep: Keep probability, an alternative to ``p``. Default: ``None``.
        seed: Explicit 64-bit seed. Default: ``None``.
        generator: Generator to draw the seed from. Default: torch's global CPU generator.

    Returns:
        The convolution's output, as ``torch.nn.functional.conv{nd}d`` gives.

    Raises:
        ValueError: If ``p`` is outside ``[0, 1]``.

    Example:
        >>> x, w = torch.ones({x_shape}), torch.ones({w_shape})  # one of the {taps} taps survives, scaled by 2
        >>> drop_connect_conv{nd}d(x, w, p=0.5, seed=0).flatten().tolist()
        {values}
        >>> drop_connect_conv{nd}d(x, w, p=0.5, training=False).flatten().tolist()
        {plain}

    References:
        Wan et al., "Regularization of Neural Networks using DropConnect", ICML 2013.
    """


def _drop_connect_conv_op(nd: int):
    op = f"drop_connect_conv{nd}d"

    def drop_connect_conv(
        input: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None = None,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        *,
        p: float = 0.5,
        training: bool = True,
        drop_bias: bool = False,
        per_sample: bool = False,
        keep: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return _drop_connect_conv(
            op, nd, input, weight, bias, stride, padding, dilation, groups,
            p, training, drop_bias, per_sample, keep, seed, generator,
        )  # fmt: skip

    drop_connect_conv.__name__ = drop_connect_conv.__qualname__ = op
    drop_connect_conv.__doc__ = _drop_connect_conv_doc(nd)
    return overridable(drop_connect_conv)


drop_connect_conv1d = _drop_connect_conv_op(1)
drop_connect_conv2d = _drop_connect_conv_op(2)


__all__ += ["concrete_dropout"]


@overridable
def concrete_dropout(
    input: torch.Tensor,
    p_logit: torch.Tensor | float,
    temperature: float = 0.1,
    training: bool = True,
    *,
    eps: float = 1e-7,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Concrete (relaxed Bernoulli) dropout with a learnable drop probability :math:`p = \sigma(\text{p\_logit})`.

    With :math:`u \sim U(0, 1)` per element (dropkit's seeded generator) the relaxed drop mask is

    .. math::

        z = \sigma\!\Big(\frac{\log(p + \epsilon) - \log(1 - p + \epsilon) + \log(u + \epsilon)
            - \log(1 - u + \epsilon)}{t}\Big), \qquad y = \frac{x \odot (1 - z)}{1 - p}

    exactly as the authors' code, so :math:`y` is differentiable in :math:`p` (and in :math:`x`); as the
    temperature :math:`t \to 0` it becomes inverted Bernoulli dropout. Identity in eval.

    Args:
        input: Tensor of any shape.
        p_logit: Logit of the drop probability: a tensor broadcastable to ``input`` (usually one element, a
            ``Parameter``) or a float.
        temperature: Temperature :math:`t > 0` of the relaxation. Default: ``0.1``.
        training: Apply the relaxed mask if ``True``; identity otherwise. Default: ``True``.
        eps: The :math:`\epsilon` of the logs. Default: ``1e-7`` (Keras' epsilon, as the reference).
        seed: Explicit 64-bit seed of the uniforms. Default: ``None``.
        generator: Generator to draw the seed from. Default: torch's global CPU generator.

    Shape:
        - Input: :math:`(*)`.
        - Output: same as input.

    Returns:
        Tensor with the shape of ``input``.

    Raises:
        ValueError: If ``temperature`` is not a finite number ``> 0``.

    Example:
        >>> y = concrete_dropout(torch.ones(2, 3), torch.tensor(0.0), seed=0)
        >>> y.shape, bool(((y >= 0) & (y <= 2)).all())
        (torch.Size([2, 3]), True)

    References:
        Gal, Hron and Kendall, "Concrete Dropout", NeurIPS 2017, https://arxiv.org/abs/1705.07832
        (code: https://github.com/yaringal/ConcreteDropout).
    """
    op = "concrete_dropout"
    temperature = _validate.positive(op, "temperature", temperature)
    _validate.seed_source(op, seed, generator)
    training = _training(op, training)
    _validate.tensor_input(op, input, training)
    if not training or input.numel() == 0:
        return input
    opmath = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype  # eps underflows in half
    p = torch.sigmoid(torch.as_tensor(p_logit, device=input.device).to(opmath))
    u = rng.uniform(input.shape, _seed(seed, generator, input.numel()), device=input.device).to(opmath)
    drop = torch.sigmoid(
        (torch.log(p + eps) - torch.log(1.0 - p + eps) + torch.log(u + eps) - torch.log(1.0 - u + eps)) / temperature
    )
    return (input.to(opmath) * (1.0 - drop) / (1.0 - p)).to(input.dtype)


# =============================================================================================================
# Structured dropout: stochastic depth, DropPath, DropBlock (issue 4, items 1-2).
#
# Stochastic depth and DropPath are dropout with a per-sample (or per-batch) mask: MaskSpec with mask_dims=1
# (or 0) on the shared masked-affine Function, so backward regenerates the mask and keeps nothing. DropBlock
# draws block seeds ("centres") with the same RNG core, grows them into blocks with a max-pool, and regenerates
# the block mask in backward from its seed as well.
# =============================================================================================================

__all__ += [
    "stochastic_depth",
    "drop_path",
    "drop_path_rates",
    "drop_path_residual",
    "drop_block1d",
    "drop_block2d",
    "drop_block3d",
]

STOCHASTIC_DEPTH_MODES = ("batch", "row")
DEPTH_RULES = ("linear", "stage", "uniform")


def _per_sample(
    op: str,
    input: torch.Tensor,
    p: float,
    training: bool,
    scale: bool,
    seed: int | None,
    generator: torch.Generator | None,
    mask_dims: int,
) -> torch.Tensor:
    """Shared body of stochastic_depth and drop_path: one Bernoulli(1 - p) draw per leading-``mask_dims`` index."""
    training = _training(op, training)
    _validate.tensor_input(op, input, training)
    if mask_dims == 1:
        hint = " Stochastic depth drops whole samples of a batch; use mode='batch' or dropout()."
        _validate.has_batch_dim(op, input, hint)
    if not training or p == 0.0 or input.numel() == 0:
        return input
    factor = 0.0 if p == 1.0 else (1.0 / (1.0 - p) if scale else 1.0)
    seed = _seed(seed, generator, math.prod(input.shape[:mask_dims]))
    spec = MaskSpec(seed, 0, _threshold(p), factor, mask_dims=mask_dims)
    return _apply_mask(input, spec)


@overridable
def stochastic_depth(
    input: torch.Tensor,
    p: float,
    mode: str = "row",
    training: bool = True,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Randomly zero whole samples (``mode="row"``) or the whole batch (``mode="batch"``) of a residual branch.

    Stochastic depth (Huang et al. 2016) skips a residual block's branch at random during training:
    :math:`y = x \cdot m / (1 - p)` with :math:`m \sim \mathrm{Bernoulli}(1 - p)` drawn once per sample (noise
    shape :math:`(N, 1, \ldots, 1)`) or once for the whole input (noise shape :math:`(1, \ldots, 1)`), so
    :math:`E[y] = x`. Identity in eval and when ``p = 0``; ``p = 1`` gives exact zeros. Apply it to the branch
    output before the residual addition: ``x + stochastic_depth(f(x), p, "row", self.training)``.
    Drop-in for ``torchvision.ops.stochastic_depth`` (same arguments and order; ``mode`` defaults to ``"row"``
    here). The mask is regenerated in backward from its seed: nothing of the input's size is kept.

    Args:
        input: Tensor of shape :math:`(N, *)` (any rank ``>= 1``; any rank for ``mode="batch"``).
        p: Probability of zeroing a sample (or the batch). Must satisfy ``0 <= p <= 1``.
        mode: ``"row"`` (one draw per sample) or ``"batch"`` (one draw for the input). Default: ``"row"``.
        training: Apply stochastic depth if ``True``; identity otherwise. Default: ``True``.
        seed: Explicit 64-bit seed; the same seed gives the same mask. Default: ``None``.
        generator: Generator to draw the seed from. Default: torch's global CPU generator.

    Shape:
        - Input: :math:`(N, *)`.
        - Output: same as input.

    Returns:
        Tensor with the same shape, dtype and device as ``input`` (``input`` itself in eval or at ``p = 0``).

    Raises:
        ValueError: If ``p`` is outside ``[0, 1]``, ``mode`` is unknown, or ``mode="row"`` gets a 0-D input.
        TypeError: If ``input`` is not floating point in training.

    Example:
        >>> stochastic_depth(torch.ones(4, 2), p=0.5, mode="row", seed=0)
        tensor([[2., 2.],
                [0., 0.],
                [0., 0.],
                [0., 0.]])
        >>> stochastic_depth(torch.ones(2), p=0.5, training=False)
        tensor([1., 1.])

    References:
        Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016, https://arxiv.org/abs/1603.09382
    """
    op = "stochastic_depth"
    p = _validate.probability(op, p)
    _validate.choice(op, "mode", mode, STOCHASTIC_DEPTH_MODES)
    _validate.seed_source(op, seed, generator)
    return _per_sample(op, input, p, training, True, seed, generator, mask_dims=1 if mode == "row" else 0)


@overridable
def drop_path(
    input: torch.Tensor,
    p: float = 0.0,
    training: bool = False,
    scale_by_keep: bool = True,
    *,
    drop_prob: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Drop paths per sample: zero each sample's residual branch with probability ``p`` (timm's ``drop_path``).

    Each sample :math:`n` of the batch gets one draw :math:`m_n \sim \mathrm{Bernoulli}(1 - p)` and becomes
    :math:`m_n x_n / (1 - p)` (``scale_by_keep=True``) or :math:`m_n x_n` (``scale_by_keep=False``). This is
    stochastic depth in ``"row"`` mode with timm's argument order and defaults — note ``training`` defaults to
    ``False``, as in timm, so pass ``self.training``. ``p = 1`` gives exact zeros. To skip computing the
    dropped samples' branch altogether, see :func:`drop_path_residual`.

    Args:
        input: Branch output of shape :math:`(N, *)`, rank ``>= 1``.
        p: Probability of dropping a sample's path. Must satisfy ``0 <= p <= 1``. Default: ``0.0``.
        training: Apply drop path if ``True``; identity otherwise. Default: ``False`` (as timm).
        scale_by_keep: Scale kept samples by :math:`1/(1-p)`. Default: ``True``.
        drop_prob: timm's name for ``p``, accepted so timm code runs unchanged. Default: ``None``.
        seed: Explicit 64-bit seed; the same seed gives the same mask. Default: ``None``.
        generator: Generator to draw the seed from. Default: torch's global CPU generator.

    Shape:
        - Input: :math:`(N, *)`.
        - Output: same as input.

    Returns:
        Tensor with the same shape, dtype and device as ``input``.

    Raises:
        ValueError: If ``p`` is outside ``[0, 1]`` or ``input`` is 0-D.
        TypeError: If ``input`` is not floating point in training, or ``scale_by_keep`` is not a bool.

    Example:
        >>> drop_path(torch.ones(4, 2), p=0.5, training=True, seed=0)
        tensor([[2., 2.],
                [0., 0.],
                [0., 0.],
                [0., 0.]])
        >>> drop_path(torch.ones(4, 2), p=0.5, training=True, scale_by_keep=False, seed=0)[0]
        tensor([1., 1.])

    References:
        Larsson et al., "FractalNet: Ultra-Deep Neural Networks without Residuals", ICLR 2017;
        Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016; timm ``timm/layers/drop.py``.
    """
    op = "drop_path"
    p = _validate.probability(op, _validate.alias(op, "p", p, "drop_prob", drop_prob, 0.0), default=0.0)
    scale_by_keep = _validate.flag(op, "scale_by_keep", scale_by_keep)
    _validate.seed_source(op, seed, generator)
    return _per_sample(op, input, p, training, scale_by_keep, seed, generator, mask_dims=1)


def drop_path_rates(
    max_rate: float, depths: int | list[int] | tuple[int, ...], *, rule: str = "linear", flat: bool = False
) -> list[float] | list[list[float]]:
    r"""Return the drop-path rate of every block of a staged network: the depth rule of stochastic depth.

    ``rule="linear"`` (default) grows the rate linearly from ``0`` at the first block to ``max_rate`` at the last,
    over all :math:`L = \sum_s d_s` blocks: block :math:`l` gets :math:`\text{max\_rate} \cdot l / (L - 1)`,
    computed exactly as timm does (``torch.linspace(0, max_rate, L)``, so the values match timm's bit for bit,
    float32 rounding included). ``rule="stage"`` gives every block of stage :math:`s` of :math:`S` the same
    rate :math:`\text{max\_rate} \cdot s / (S - 1)` (``max_rate`` for one stage); ``rule="uniform"`` gives every
    block ``max_rate`` (the paper's constant baseline).

    Args:
        max_rate: Rate of the deepest block, ``0 <= max_rate <= 1`` (timm's ``drop_path_rate``).
        depths: Blocks per stage (a sequence of ints ``>= 0``), or one int for a single stack of blocks.
        rule: ``"linear"``, ``"stage"`` or ``"uniform"`` (keyword-only). Default: ``"linear"``.
        flat: Return one flat list even when ``depths`` is a sequence (keyword-only). Default: ``False``.

    Returns:
        A list of ``sum(depths)`` floats when ``depths`` is an int or ``flat=True``; otherwise one list per stage.

    Raises:
        ValueError: If ``max_rate`` is outside ``[0, 1]``, a depth is negative, or ``rule`` is unknown.
        TypeError: If ``depths`` is neither an int nor a sequence of ints.

    Example:
        >>> drop_path_rates(0.3, [1, 2])
        [[0.0], [0.15000000596046448, 0.30000001192092896]]
        >>> drop_path_rates(0.2, 3)
        [0.0, 0.10000000149011612, 0.20000000298023224]
        >>> drop_path_rates(0.2, [2, 1], rule="stage")
        [[0.0, 0.0], [0.2]]

    References:
        Huang et al., "Deep Networks with Stochastic Depth", ECCV 2016 (linear decay rule);
        timm ``VisionTransformer`` / ``ConvNeXt`` (``torch.linspace(0, drop_path_rate, sum(depths))``).
    """
    op = "drop_path_rates"
    max_rate = _validate.probability(op, max_rate)
    _validate.choice(op, "rule", rule, DEPTH_RULES)
    flat = _validate.flag(op, "flat", flat)
    stages, staged = _validate.depths(op, depths)
    if rule == "linear":
        rates = torch.linspace(0, max_rate, sum(stages)).tolist()
    elif rule == "uniform":
        rates = [max_rate] * sum(stages)
    else:
        per_stage = [max_rate * s / (len(stages) - 1) if len(stages) > 1 else max_rate for s in range(len(stages))]
        rates = [rate for rate, depth in zip(per_stage, stages, strict=True) for _ in range(depth)]
    if flat or not staged:
        return rates
    out, start = [], 0
    for depth in stages:
        out.append(rates[start : start + depth])
        start += depth
    return out


@overridable
def drop_path_residual(
    input: torch.Tensor,
    branch,
    p: float = 0.0,
    training: bool = True,
    *,
    scale_by_keep: bool = True,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Return ``input + drop_path(branch(input), p)``, running ``branch`` only on the samples that are kept.

    With per-sample keep draws :math:`m_n \sim \mathrm{Bernoulli}(1 - p)` (the same mask :func:`drop_path`
    draws for the same seed), the kept rows :math:`K = \{n : m_n = 1\}` are gathered, the branch runs on them
    alone, and its output is added back (``index_put`` with accumulation), scaled by :math:`1/(1-p)`
    (``scale_by_keep``):

    .. math:: y_n = x_n + \frac{[n \in K]}{1 - p}\, f(x_K)_n

    so the branch's compute and activation memory shrink by the factor :math:`1 - p` while values and gradients
    are those of the multiply-by-zero form ``x + drop_path(f(x))`` (for a branch that treats samples
    independently: no BatchNorm in training, no cross-sample attention). This is the subset trick of DINOv2's
    ``drop_add_residual_stochastic_depth``, with Bernoulli draws instead of a fixed-size random subset so it is
    exactly DropPath. In eval (or at ``p = 0``) it is ``input + branch(input)``. When no sample is kept, the
    branch still runs, on an empty batch, so its parameters get zero gradients rather than none.

    Args:
        input: Residual stream of shape :math:`(N, *)`, rank ``>= 1``.
        branch: Callable mapping a :math:`(K, *)` batch to a :math:`(K, *)` output of the same trailing shape.
        p: Probability of dropping a sample's branch. Must satisfy ``0 <= p <= 1``. Default: ``0.0``.
        training: Drop paths if ``True``; ``input + branch(input)`` otherwise. Default: ``True``.
        scale_by_keep: Scale the kept branch outputs by :math:`1/(1-p)` (keyword-only). Default: ``True``.
        seed: Explicit 64-bit seed; the same seed keeps the same samples as :func:`drop_path`. Default: ``None``.
        generator: Generator to draw the seed from. Default: torch's global CPU generator.

    Shape:
        - Input: :math:`(N, *)`.
        - Output: same as input.

    Returns:
        Tensor with the same shape, dtype and device as ``input``.

    Raises:
        ValueError: If ``p`` is outside ``[0, 1]``, ``input`` is 0-D, or the branch output's shape differs from
            its input's.
        TypeError: If ``branch`` is not callable or ``input`` is not floating point in training.

    Example:
        >>> x = torch.ones(4, 2)
        >>> drop_path_residual(x, lambda h: 3 * h, p=0.5, seed=0)
        tensor([[7., 7.],
                [1., 1.],
                [1., 1.],
                [1., 1.]])
        >>> torch.equal(drop_path_residual(x, lambda h: 3 * h, p=0.5, seed=0),
        ...             x + drop_path(3 * x, p=0.5, training=True, seed=0))
        True

    References:
        Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", 2023,
        https://arxiv.org/abs/2304.07193 (``dinov2/layers/block.py``); Huang et al., ECCV 2016.
    """
    op = "drop_path_residual"
    p = _validate.probability(op, p, default=0.0)
    _validate.callable_(op, "branch", branch)
    scale_by_keep = _validate.flag(op, "scale_by_keep", scale_by_keep)
    _validate.seed_source(op, seed, generator)
    training = _training(op, training)
    _validate.tensor_input(op, input, training)
    _validate.has_batch_dim(op, input)
    if not training or p == 0.0:
        out = branch(input)
        _validate.same_shape(op, "branch(input)", out.shape, input.shape)
        return input + out
    spec = MaskSpec(_seed(seed, generator, input.shape[0]), 0, _threshold(p), 1.0, mask_dims=1)
    keep = kernels.keep_mask(spec, (input.shape[0],), input.device)
    kept = keep.nonzero().squeeze(1)
    out = branch(input[kept])
    _validate.same_shape(op, "branch(input)", out.shape, (kept.numel(),) + tuple(input.shape[1:]))
    out = out.to(input.dtype)
    if scale_by_keep and p < 1.0:
        out = out * (1.0 / (1.0 - p))
    # index_put with accumulate (backward: grad[kept]) is several times faster on CPU than index_add / index_select
    return input.index_put((kept,), out, accumulate=True)


# ------------------------------------------------------------------------------------------------------- DropBlock

_BLOCK_POOLS = {1: torch.nn.functional.max_pool1d, 2: torch.nn.functional.max_pool2d, 3: torch.nn.functional.max_pool3d}
_BLOCK_LAYOUTS = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}


def _block_gamma(p: float, block_size: int, spatial: tuple[int, ...]) -> float:
    r"""Seed rate :math:`\gamma = p \prod_i S_i / (b^k \prod_i (S_i - b + 1))` of torchvision (Ghiasi et al. eq. 1)."""
    valid = math.prod([s - block_size + 1 for s in spatial])  # a list: dynamo refuses generator arguments
    return min(1.0, p * math.prod(spatial) / (block_size ** len(spatial) * valid))


def _block_keep(spec: MaskSpec, block_size: int, shape: tuple[int, ...], couple: bool, device) -> torch.Tensor:
    """Return the bool keep mask of DropBlock: seeds drawn on the valid region, grown into ``block_size`` blocks.

    Seed (centre) ``i`` of the valid region ``[0, S - b]`` drops positions ``i .. i + b - 1`` of every spatial
    dimension: the block always lies inside the map (torchvision's padding and pooling, for any ``b``).
    The mask has shape ``(N, C, *S)``, or ``(N, 1, *S)`` when channels are coupled.
    """
    n, c, *spatial = shape
    seeds_shape = (n, 1 if couple else c, *[s - block_size + 1 for s in spatial])
    centres = (~kernels.keep_mask(spec, seeds_shape, device)).to(torch.float32)
    if block_size > 1:
        centres = torch.nn.functional.pad(centres, [block_size - 1] * (2 * len(spatial)))
        centres = _BLOCK_POOLS[len(spatial)](centres, kernel_size=block_size, stride=1)
    return centres == 0


class _BlockDropFn(torch.autograd.Function):
    """``y = keep ? x·scale : 0`` with the DropBlock keep mask (and its scale) regenerated from the seed in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, spec: MaskSpec, block: tuple, inplace: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.spec, ctx.block = spec, block
        if inplace:
            ctx.mark_dirty(x)
        return _block_apply(x, spec, block, inplace)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:  # type: ignore[override]
        # a linear map of grad with the same mask and scale: through this Function when building a double backward
        if torch.is_grad_enabled():
            return _BlockDropFn.apply(grad, ctx.spec, ctx.block, False), None, None, None
        return _block_apply(grad, ctx.spec, ctx.block, False), None, None, None


def _block_apply(x: torch.Tensor, spec: MaskSpec, block: tuple, inplace: bool) -> torch.Tensor:
    """Apply the block mask: ``block = (block_size, couple_channels, scale_by_keep, eps)``."""
    block_size, couple, scale_by_keep, eps = block
    with kernels.plain_draws(x):
        keep = _block_keep(spec, block_size, tuple(x.shape), couple, x.device)
    if spec.scale == 0.0:  # p == 1: everything dropped
        keep = torch.zeros_like(keep)
    low = x.dtype in (torch.float16, torch.bfloat16)
    opmath = torch.float32 if low else x.dtype
    if scale_by_keep:
        # torchvision's normalisation numel / (eps + kept), counted exactly in integers
        real = torch.float64 if x.dtype in (torch.float64, torch.complex128) else torch.float32
        scale = torch.tensor(keep.numel(), dtype=real, device=x.device) / (keep.sum().to(real) + eps)
    else:
        scale = None
    if inplace and (scale is None or not low):
        return (x if scale is None else x.mul_(scale)).masked_fill_(~keep, 0)
    y = x.to(opmath) * scale if scale is not None else x.clone()
    y = y.masked_fill_(~keep, 0).to(x.dtype)
    return x.copy_(y) if inplace else y  # half/bfloat16 in place: the same rounding as out of place


def _drop_block(
    dims: int,
    input: torch.Tensor,
    p: float,
    block_size: int,
    inplace: bool,
    eps: float,
    training: bool,
    couple_channels: bool,
    scale_by_keep: bool,
    seed: int | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    op = f"drop_block{dims}d"
    p = _validate.probability(op, p)
    block_size = _validate.positive_int(op, "block_size", block_size)
    eps = _validate.nonnegative(op, "eps", eps)
    couple_channels = _validate.flag(op, "couple_channels", couple_channels)
    scale_by_keep = _validate.flag(op, "scale_by_keep", scale_by_keep)
    _validate.seed_source(op, seed, generator)
    training = _training(op, training)
    _validate.tensor_input(op, input, training)
    hint = " Use dropout() for per-element or dropout2d() for per-channel dropout."
    _validate.exact_rank(op, input, dims + 2, _BLOCK_LAYOUTS[dims], hint)
    if not training or p == 0.0 or input.numel() == 0:
        return input
    block_size = min(block_size, *input.shape[2:])  # a block as large as the map at most, as timm (torchvision fails)
    gamma = _block_gamma(p, block_size, tuple(input.shape[2:]))
    threshold, traced_p = _keep_threshold(input, gamma)  # gamma is symbolic under dynamic shapes
    spec = MaskSpec(_seed(seed, generator, input.numel()), 0, threshold, 0.0 if p == 1.0 else 1.0, p=traced_p)
    block = (block_size, couple_channels, scale_by_keep, eps)
    if _transforming():  # torch.func: the same maths from torch ops, which the transforms differentiate and batch
        if "different" in rng._vmap_randomness():
            raise NotImplementedError(
                f"{op}: torch.vmap(randomness='different') is not supported (every slice would get one block "
                "mask); use randomness='same' or a loop over the slices."
            )
    if inplace:
        _check_inplace(input)
    if not _transforming() and _autograd_sees(input):
        return _BlockDropFn.apply(input, spec, block, bool(inplace))
    return _block_apply(input, spec, block, bool(inplace))  # torch ops: in place, the input itself, as torch


_DROP_BLOCK_DOC = r"""DropBlock: zero contiguous {what} of {layout} feature maps, then renormalise.

    In training, block seeds are drawn with probability

    .. math:: \gamma = \frac{{p \, {size}}}{{b^{k} \, {valid}}}

    on the positions where a whole ``block_size`` (:math:`b`) {shape} fits, each seed zeroes the {shape} starting
    there (so blocks never cross the border; overlapping blocks merge), and the result is renormalised as in
    torchvision: :math:`y = x \cdot M \cdot \mathrm{{numel}}(M) / (\epsilon + \sum M)` with :math:`M` the keep
    mask. The expected dropped fraction is about ``p`` (exactly ``p`` at ``block_size = 1``; overlaps make it a
    little smaller for larger blocks). ``couple_channels=True`` shares one block mask across the channels of a
    sample (timm's coupled mode); ``scale_by_keep=False`` skips the renormalisation. Identity in eval and at
    ``p = 0``; ``p = 1`` gives exact zeros. {compat}The block mask is regenerated in backward from its seed.

    Args:
        input: Input tensor {layout}.
        p: Probability of an element being dropped. Must satisfy ``0 <= p <= 1``.
        block_size: Side of the dropped blocks, ``>= 1``; a larger one than the smallest spatial dimension is
            clamped to it, as timm does (torchvision fails there).
        inplace: Modify ``input`` in place. Default: ``False``.
        eps: Added to the kept count in the normalisation's denominator, ``>= 0``. Default: ``1e-06``.
        training: Apply DropBlock if ``True``; identity otherwise. Default: ``True``.
        couple_channels: One block mask per sample shared by all channels (keyword-only). Default: ``False``.
        scale_by_keep: Renormalise by ``numel / (eps + kept)`` (keyword-only). Default: ``True``.
        seed: Explicit 64-bit seed; the same seed gives the same blocks. Default: ``None``.
        generator: Generator to draw the seed from. Default: torch's global CPU generator.

    Shape:
        - Input: {layout}.
        - Output: same as input.

    Returns:
        Tensor with the same shape, dtype and device as ``input``.

    Raises:
        ValueError: If ``p`` is outside ``[0, 1]``, the input is not {rank}-D, ``block_size < 1``, or ``eps`` is
            negative.
        TypeError: If ``block_size`` is not an int or ``input`` is not floating point in training.

    Example:
        {example}

    References:
        Ghiasi, Lin, Le, "DropBlock: A regularization method for convolutional networks", NeurIPS 2018,
        https://arxiv.org/abs/1810.12890
    """


def _drop_block_op(dims: int, what: str, size: str, valid: str, shape: str, compat: str, example: str):
    def drop_block(
        input: torch.Tensor,
        p: float,
        block_size: int,
        inplace: bool = False,
        eps: float = 1e-06,
        training: bool = True,
        *,
        couple_channels: bool = False,
        scale_by_keep: bool = True,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return _drop_block(
            dims, input, p, block_size, inplace, eps, training, couple_channels, scale_by_keep, seed, generator
        )

    name = f"drop_block{dims}d"
    drop_block.__name__ = drop_block.__qualname__ = name
    drop_block.__doc__ = _DROP_BLOCK_DOC.format(
        what=what,
        layout=f":math:`{_BLOCK_LAYOUTS[dims]}`",
        size=size,
        valid=valid,
        k=dims,
        shape=shape,
        compat=compat,
        rank=dims + 2,
        example=example,
    )
    return overridable(drop_block)


drop_block1d = _drop_block_op(
    1,
    "segments",
    "L",
    "(L - b + 1)",
    "segment",
    "",
    """>>> y = drop_block1d(torch.ones(1, 1, 8), p=0.25, block_size=3, eps=0.0, seed=5)
        >>> (y == 0).int().flatten().tolist(), y.max().item()
        ([0, 0, 1, 1, 1, 0, 0, 0], 1.600000023841858)""",
)
drop_block2d = _drop_block_op(
    2,
    "square blocks",
    "H W",
    "(H - b + 1)(W - b + 1)",
    "square",
    "Drop-in for ``torchvision.ops.drop_block2d`` (same arguments, order and defaults; it also accepts even block "
    "sizes, which torchvision's padding does not). ",
    """>>> drop_block2d(torch.ones(2, 3, 8, 8), p=0.2, block_size=3, seed=0).shape
        torch.Size([2, 3, 8, 8])
        >>> drop_block2d(torch.ones(1, 1, 2, 2), p=0.5, block_size=2, training=False)
        tensor([[[[1., 1.],
                  [1., 1.]]]])""",
)
drop_block3d = _drop_block_op(
    3,
    "cubes",
    "D H W",
    "(D - b + 1)(H - b + 1)(W - b + 1)",
    "cube",
    "Drop-in for ``torchvision.ops.drop_block3d``. ",
    """>>> drop_block3d(torch.ones(2, 3, 5, 5, 5), p=0.2, block_size=3, seed=0).shape
        torch.Size([2, 3, 5, 5, 5])""",
)


# --- recurrent: zoneout (issue 5; modules in dropkit.nn.recurrent) -------------------------------------------------

__all__ += ["zoneout"]


@overridable
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
    if not _training("zoneout", training):
        return input if p == 0.0 else torch.lerp(input, previous.to(input.dtype).expand_as(input), p)
    if p == 0.0 or input.numel() == 0:
        return input
    spec = MaskSpec(_seed(seed, generator, input.numel()), 0, _threshold(p), 1.0)
    update = kernels.keep_mask(spec, tuple(input.shape), input.device)
    return torch.where(update, input, previous.to(input.dtype))
