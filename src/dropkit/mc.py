r"""Monte-Carlo dropout: predictions and uncertainty from any torch model, with dropout left on at inference.

A network trained with dropout is an ensemble of thinned networks that share weights; sampling :math:`T` of
them at test time and averaging (or voting) approximates the predictive distribution (Gal & Ghahramani,
"Dropout as a Bayesian Approximation", ICML 2016):

.. math::

    \bar p(y \mid x) = \frac{1}{T} \sum_{t=1}^{T} p(y \mid x, \hat\omega_t), \qquad
    \mathrm{MI} = H[\bar p] - \frac{1}{T} \sum_t H[p(\cdot \mid x, \hat\omega_t)].

:func:`mc_dropout` switches every stochastic-regularisation path of a model on — dropout modules (torch's,
dropkit's, DropPath / StochasticDepth / DropBlock / DropConnect by class), functional dropout called with
``training=self.training``, and attention modules that gate their dropout on ``self.training`` — while
BatchNorm and everything else stay in eval. :func:`predict` draws the samples fast (stacked in the batch
dimension, the deterministic layers before the first dropout computed once, in a ``Sequential`` or a custom
``forward``, torch's dropout routed to dropkit's seeded kernels) and summarises them in an :class:`MCResult`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import re
import threading
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from . import _validate, kernels, rng
from . import functional as dkF
from . import nn as dnn
from .kernels import MaskSpec

__all__ = ["mc_dropout", "predict", "MCResult", "stochastic_modules", "gaussian_log_likelihood"]

#: torch's own stochastic-regularisation modules (dropkit's subclass them).
TORCH_DROPOUTS: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
#: dropkit's modules that are not torch subclasses.
DROPKIT_NOISE: tuple[type[nn.Module], ...] = (dnn.GaussianDropout, dnn.GaussianNoise)
#: Third-party stochastic layers, matched by class name (timm, torchvision and common DropConnect spellings).
STOCHASTIC_CLASS_NAMES = frozenset(
    {"DropPath", "StochasticDepth", "DropBlock1d", "DropBlock2d", "DropBlock3d", "DropBlock", "DropConnect",
     "DropConnectLinear", "DropConnectConv1d", "DropConnectConv2d", "WeightDrop", "GaussianDropout", "GaussianNoise",
     "ConcreteDropout", "ZoneoutLSTMCell"}
)  # fmt: skip
#: torch modules whose eval-mode fast path skips their dropout submodules: they must be in training mode.
TORCH_FAST_PATHS: tuple[type[nn.Module], ...] = (
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.Transformer,
    nn.MultiheadAttention,
)
#: Float attributes through which attention/RNN modules gate dropout on ``self.training``.
GATED_ATTRIBUTES = (
    "dropout",
    "dropout_p",
    "dropout_prob",
    "attention_dropout",
    "attn_dropout",
    "drop_prob",
    "recurrent_dropout",
    "output_dropout",
    "zoneout_h",
    "zoneout_c",
)

#: Random ops besides dropout, by name in a forward's source (dropkit/timm/torchvision): all switched on by mc_dropout
_FUNCTIONAL_STRUCTURED = ("drop_path", "drop_block", "stochastic_depth", "drop_connect", "gaussian_noise", "zoneout")
_FUNCTIONAL_NAMES = ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout")
_patch_lock = threading.RLock()
_patch_depth = 0
_originals: dict[str, object] = {}


def _is_stochastic(module: nn.Module) -> bool:
    return isinstance(module, TORCH_DROPOUTS + DROPKIT_NOISE) or type(module).__name__ in STOCHASTIC_CLASS_NAMES


def _gates_dropout(module: nn.Module) -> bool:
    """Whether ``module`` applies a dropout rate only when ``self.training``.

    Either a positive float rate attribute (torch's ``nn.MultiheadAttention``, ``nn.LSTM``), or a dropout
    child whose rate its own forward passes on under a ``self.training`` test (Hugging Face attention:
    ``dropout=0.0 if not self.training else self.dropout.p``).
    """
    for name in GATED_ATTRIBUTES:
        value = getattr(module, name, None)
        if isinstance(value, float) and value > 0:
            return True
    source = _forward_source(type(module))
    return "self.training" in source and any(_is_stochastic(child) for child in module.children())


@functools.cache
def _forward_source(cls: type) -> str:
    try:
        return inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return ""


def _calls_functional_dropout(module: nn.Module) -> bool:
    source = _forward_source(type(module))
    return "dropout" in source.lower() or any(name in source for name in _FUNCTIONAL_STRUCTURED)


def _has_stochastic_path(model: nn.Module) -> bool:
    """Whether anything in ``model`` draws random numbers in training: a module to switch or a functional call."""
    return bool(stochastic_modules(model)) or any(_calls_functional_dropout(m) for m in model.modules())


def stochastic_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return ``(path, module)`` for every module :func:`mc_dropout` puts in training mode."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if _is_stochastic(m) or _gates_dropout(m) or isinstance(m, TORCH_FAST_PATHS)
    ]


def _forced(original):
    """Wrap a torch functional dropout so that it runs in training mode, on dropkit's seeded kernels."""

    def forced(input, p=0.5, training=True, inplace=False):
        return original(input, p, True, inplace)

    forced.__wrapped__ = original  # type: ignore[attr-defined]
    return forced


def _patch_functional() -> None:
    """Route torch's functional dropout to dropkit's, always training (re-entrant, counted)."""
    global _patch_depth
    with _patch_lock:
        if _patch_depth == 0:
            for name in _FUNCTIONAL_NAMES:
                _originals[name] = getattr(torch.nn.functional, name)
                setattr(torch.nn.functional, name, _forced(getattr(dkF, name)))
            dkF._force_training(True)
        _patch_depth += 1


def _unpatch_functional() -> None:
    global _patch_depth
    with _patch_lock:
        _patch_depth -= 1
        if _patch_depth == 0:
            for name, original in _originals.items():
                setattr(torch.nn.functional, name, original)
            _originals.clear()
            dkF._force_training(False)


class mc_dropout(contextlib.ContextDecorator):  # noqa: N801 - used like a function, as contextlib's helpers are
    """Context manager (and decorator) that switches a model's stochastic paths on for MC-dropout inference.

    Inside the block:

    - dropout modules (torch's and dropkit's, including subclasses), dropkit's Gaussian noise layers, and
      DropPath / StochasticDepth / DropBlock / DropConnect layers (matched by class name) are in training mode;
    - modules that keep a float dropout rate they apply only in training (``nn.MultiheadAttention``,
      ``nn.LSTM``, Hugging Face attention with ``dropout_prob``, ...) are in training mode, and so are torch's
      Transformer layers, whose eval fast path would skip their dropout;
    - torch's and dropkit's functional dropout run as in training whatever ``training=`` they are given, and
      torch's go through dropkit's fast seeded kernels;
    - everything else — BatchNorm, InstanceNorm, the model itself — keeps the mode it had.

    On exit every module's ``training`` flag is restored exactly, also after an exception. The functional
    switch is process-wide while any ``mc_dropout`` block is open (other threads see it too).

    Args:
        model: Any ``nn.Module``.

    Raises:
        ValueError: If the model has no stochastic path at all (no dropout-like module, no gated dropout rate
            and no forward that calls a functional dropout).

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.BatchNorm1d(8)).eval()
        >>> with mc_dropout(model):
        ...     model[1].training, model[2].training
        (True, False)
        >>> model[1].training
        False
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"mc_dropout: model must be a torch.nn.Module, but got {type(model).__name__!r}.")
        self.model = model
        self._saved: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        targets = [m for _, m in stochastic_modules(self.model)]
        if not _has_stochastic_path(self.model):
            raise ValueError(
                f"mc_dropout: model has no stochastic path (no dropout module, no dropout rate gated on "
                f"self.training, no functional dropout in a forward), so MC samples would all be equal; "
                f"got {type(self.model).__name__}."
            )
        self._saved.append([(m, m.training) for m in self.model.modules()])  # type: ignore[arg-type]
        for module in targets:
            module.training = True
        _patch_functional()
        return self.model

    def __exit__(self, *exc_info: object) -> None:
        _unpatch_functional()
        for module, training in self._saved.pop():  # type: ignore[misc]
            module.training = training


@dataclass
class MCResult:
    r"""Summary of :math:`T` Monte-Carlo samples of a model's prediction for a batch of :math:`N` inputs.

    Classification (probabilities over :math:`C` classes on dim 1 of the model output):

    - ``mean``: predictive probabilities :math:`\bar p`, shape ``(N, C, *)``;
    - ``entropy``: predictive entropy :math:`H[\bar p]` (nats);
    - ``expected_entropy``: :math:`\frac1T\sum_t H[p_t]` (aleatoric part);
    - ``mutual_information``: BALD, ``entropy - expected_entropy`` (epistemic part);
    - ``votes``: per-class counts of the samples' argmax, ``(N, C, *)``; ``majority``: the voted class;
    - ``variation_ratio``: :math:`1 - \max_c \text{votes}_c / T`.

    Regression (``task="regression"``): ``mean`` and ``variance`` of the samples, plus :math:`\tau^{-1}` when a
    model precision ``tau`` is given (Gal & Ghahramani 2016, eq. 7); the classification fields are ``None``.

    ``samples`` holds the raw samples, shape ``(T, N, ...)``, when ``keep_samples=True``.
    """

    mean: torch.Tensor
    samples: torch.Tensor | None = None
    variance: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    expected_entropy: torch.Tensor | None = None
    mutual_information: torch.Tensor | None = None
    votes: torch.Tensor | None = None
    majority: torch.Tensor | None = None
    variation_ratio: torch.Tensor | None = None

    @classmethod
    def from_probabilities(cls, probs: torch.Tensor, keep_samples: bool = False) -> MCResult:
        """Summarise samples of class probabilities, shape ``(T, N, C, *)``."""
        mean = probs.mean(0)
        entropy = _entropy(mean, dim=1)
        expected = _entropy(probs, dim=2).mean(0)
        votes = torch.nn.functional.one_hot(probs.argmax(2), probs.shape[2]).sum(0).movedim(-1, 1)
        return cls(
            mean=mean,
            samples=probs if keep_samples else None,
            entropy=entropy,
            expected_entropy=expected,
            mutual_information=(entropy - expected).clamp_min(0.0),
            votes=votes,
            majority=votes.argmax(1),
            variation_ratio=1.0 - votes.amax(1).to(probs.dtype) / probs.shape[0],
        )

    @classmethod
    def from_regression(cls, outputs: torch.Tensor, tau: float | None = None, keep_samples: bool = False) -> MCResult:
        r"""Summarise regression samples, shape ``(T, N, *)``; ``tau`` adds the observation noise :math:`\tau^{-1}`."""
        variance = outputs.var(0, unbiased=False)
        if tau is not None:
            variance = variance + 1.0 / tau
        return cls(mean=outputs.mean(0), samples=outputs if keep_samples else None, variance=variance)


def _entropy(probs: torch.Tensor, dim: int) -> torch.Tensor:
    return -(probs * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))).sum(dim)


def gaussian_log_likelihood(samples: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    r"""Per-point MC log-likelihood of ``target`` under a mixture of Gaussians centred on the samples.

    .. math:: \log \frac1T \sum_t \mathcal N(y;\ \hat y_t,\ \tau^{-1})
        = \operatorname{logsumexp}_t\!\big(-\tfrac{\tau}{2}(y - \hat y_t)^2\big) - \log T
          - \tfrac12\log 2\pi + \tfrac12 \log\tau

    (Gal & Ghahramani 2016, the test log-likelihood of their UCI experiments; average it over points).

    Args:
        samples: MC samples, shape ``(T, N, *)``.
        target: Targets, shape ``(N, *)``.
        tau: Model precision :math:`\tau > 0`.
    """
    tau = _validate.real("gaussian_log_likelihood", "tau", tau)
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"gaussian_log_likelihood: tau must be a finite number > 0, but got {tau!r}.")
    t = samples.shape[0]
    exponent = -0.5 * tau * (target.unsqueeze(0) - samples) ** 2
    return torch.logsumexp(exponent, 0) - math.log(t) - 0.5 * math.log(2 * math.pi) + 0.5 * math.log(tau)


def _split_sequential(model: nn.Module) -> tuple[nn.Module | None, nn.Module]:
    """For a ``Sequential``, split off the deterministic prefix before the first stochastic layer."""
    if not isinstance(model, nn.Sequential):
        return None, model
    for i, layer in enumerate(model):
        if _has_stochastic_path(layer):
            return (model[:i] if i else None), model[i:]
    return None, model


def _repeat(x: torch.Tensor, times: int, dim: int = 0) -> torch.Tensor:
    """``x`` repeated ``times`` times in dimension ``dim``, sample-major: indices ``t*N .. t*N+N-1`` are copy t.

    Always a new tensor (never a view of ``x``, even of one row), so that an in-place layer cannot edit ``x``.
    """
    return x.repeat(*(times if d == dim else 1 for d in range(x.dim())))


#: Largest activation (elements) a stacked chunk may create: 4 MB of fp32, an eighth of a CPU's last-level cache.
#: Chunk sizes measured on this project's 2-CPU machine (loop/predict, T = 32, 2026-11-25), glibc's default heap:
#: the reference MLP (784-1024-1024-10, batch 256, 2^18 elements per sample) 3.2x in a loop, 3.5-3.9x in chunks of
#: 4, 2.8x in chunks of 8 (fresh pages faulted in); a TransformerEncoderLayer (2^17 per sample) 1.4x
#: in a loop, 2.1-2.3x in chunks of 4-8, 1.8x in chunks of 16. With glibc's thresholds held steady the MLP's chunks
#: of 4-16 differ by under 5 %, the Transformer's by 15 % (1.8x in chunks of 4, 2.1x in chunks of 16). bench_mc's
#: case A (T = 50) on the default heap faulted ~30k pages per call in 3 of 4 runs in chunks of 4, until
#: :func:`_settle_heap` (0-3.6k since).
ACTIVATION_BUDGET = 1 << 20

#: Fewest samples a stacked forward of CPU tensors must hold, else one sample per forward (measured on the CPU
#: only: :func:`samples_per_chunk`). Where fewer fit the budget a sample's own activations are large
#: (convolutional feature maps), its forward is already efficient, and stacking only moves the activations out
#: of cache: measured, a 3-conv net on one 128 x 128 image (2^19 elements per sample) 1.6x the loop as a loop,
#: 1.1x in chunks of 2, 1.0x in chunks of 4; the benchmark CNN (64 x 32 x 28 x 28 feature maps, 1.6 x 2^20
#: elements per sample) 1.0x as a loop, 0.8x in chunks of 2, 0.5x in chunks of 8. Narrow rows with many of them
#: lose little: a 9-100-1 MLP on 4,573 rows (T = 400, one thread, 2 runs) took 0.23-0.53 s as a loop, 0.21-0.52 s
#: in chunks of 2 (0.31-0.39 s in chunks of 4).
STACK_AT_LEAST = 4

#: glibc's ceiling for its dynamic mmap threshold (``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit systems).
_GLIBC_MMAP_THRESHOLD_MAX = 32 << 20
_heap_settled = 0  #: largest block :func:`_settle_heap` has freed in this process, bytes
#: :func:`_settle_heap`'s block, in chunk temporaries. bench_mc's case A in fresh processes, all four contenders
#: (3 each): 2x left 0-12k faults per predict call (3.3-3.7x the loop), 4x 0-0.2k (3.5-3.7x), 8x and more (the
#: 32 MB ceiling) 26-32k (2.7-3.2x): a higher threshold lets the other contenders' blocks into the heap too.
_HEAP_HEADROOM = 4

_MASK64 = (1 << 64) - 1


def _mix(*words: int) -> int:
    """A 64-bit seed from integers (splitmix64 finaliser over each word in turn)."""
    z = 0
    for word in words:
        z = (z ^ (word & _MASK64)) + 0x9E3779B97F4A7C15 & _MASK64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _MASK64
        z ^= z >> 31
    return z


_streams_lock = threading.RLock()  # predict from several threads: one at a time (the hooks are process-wide)


class _SampleStreams:
    r"""Random streams that make sample :math:`t`'s masks the same however the samples are grouped.

    Inside :meth:`chunk` ``(t0, t)`` (a forward of samples ``t0 .. t0 + t - 1`` stacked in the batch dimension,
    ``t * N`` rows, sample-major), the :math:`k`-th mask drawn in the forward gets the seed
    :math:`s_k = \mathrm{mix}(s, k)` (:math:`s`: one seed drawn per :func:`predict` call) and, when its input has
    the ``t * N`` stacked rows in dimension 0, is read as the rows ``t0 * N ..`` of a batch of ``T * N`` rows
    (:func:`dropkit.rng.shard` on dimension 0: element indices offset by ``t0 * N`` rows). Every dropkit mask
    being a pure function of (seed, element index), sample :math:`t` draws the same mask whether it runs alone
    (``t = 1``, the loop) or stacked with others, so the choice between them never changes the numbers.

    This covers every op built on dropkit's mask specs (dropout, dropout1d/2d/3d, alpha and feature-alpha
    dropout: torch's modules and functional calls, routed to dropkit by :class:`mc_dropout`). Draws that cannot
    be aligned (other ops, inputs without the stacked rows in dimension 0) get a seed that also mixes in
    ``t0``: independent across chunks, as before, but then the grouping does change their values.
    """

    def __init__(self, seed: int, rows: int, samples: int) -> None:
        self.seed, self.rows, self.samples = seed, rows, samples
        self.site_seeds: list[int] = []
        self.t0, self.t, self.site = 0, 1, 0
        self.sizes: list[int] | None = None  #: when a list, every mask's number of draws is appended to it
        self.drawn = 0  #: masks drawn through dropkit in this predict call (probes included)

    def _draw(self, x: torch.Tensor, mask_dims: int) -> tuple[int, int] | None:
        """The seed of a mask whose input holds the chunk's stacked rows, and the global row its rows start at.

        ``functional._spec`` reads the input's rows as rows ``t0 * N ..`` of the ``T * N`` rows of all samples
        (what :func:`dropkit.rng.shard` on dimension 0 would say): its mask indices start at that row's.
        """
        if rng.current_shards() or x.dim() == 0 or x.shape[0] != self.t * self.rows:
            return None  # not aligned: :meth:`_seed` gives this site a chunk-dependent seed (and records it)
        if self.sizes is not None:
            self.sizes.append(math.prod(x.shape[:mask_dims]))
        site, self.site = self.site, self.site + 1
        self.drawn += 1
        return self._site_seed(site), self.t0 * self.rows

    def _site_seed(self, site: int) -> int:
        r""":math:`s_k = \mathrm{mix}(s, k)`, the same in every chunk: computed once per site."""
        while len(self.site_seeds) <= site:
            self.site_seeds.append(_mix(self.seed, len(self.site_seeds)))
        return self.site_seeds[site]

    def _seed(self, draws: int | None = None) -> int:
        """The seed of any other draw (``functional._seed``): independent across sites and chunks.

        Recorded as ``draws`` values, or as ``-1`` (a mask the stacked samples could share) when the op cannot
        say (a weight's mask, one value per call).
        """
        if self.sizes is not None:
            self.sizes.append(-1 if draws is None else draws)
        site, self.site = self.site, self.site + 1
        self.drawn += 1
        return _mix(self.seed, site, self.t0 + 1)

    def repeated_dropout(self, h: torch.Tensor, t: int, p: float) -> torch.Tensor:
        """``dropout(h repeated t times in dim 0, p)`` as the first draw of a chunk, without building the repeat.

        Each sample's block is written straight from ``h`` (read from cache) with the mask the stacked call
        would give it (the same seed and element offsets), so the result is bit for bit the unfused one.
        """
        out = torch.empty((t * h.shape[0], *h.shape[1:]), dtype=h.dtype, device=h.device)
        blocks = out.view(t, *h.shape)
        if p == 0.0:  # dropout returns its input and draws nothing
            blocks.copy_(h.unsqueeze(0).expand_as(blocks))
            return out
        spec = MaskSpec(self._site_seed(self.site), 0, dkF._threshold(p), 0.0 if p == 1.0 else 1.0 / (1.0 - p))
        self.site += 1
        self.drawn += 1
        h = h.contiguous()
        if kernels.select(h) == "numba" and kernels._numba_takes(h.dtype):  # all copies in one parallel launch
            from .kernels import cpu

            cpu.masked_affine_repeat(h, out, spec.seed, self.t0 * h.numel(), spec.threshold, spec.scale, 0.0, 0.0)
            return out
        for s in range(t):
            kernels.apply(h, dataclasses.replace(spec, offset=(self.t0 + s) * h.numel()), out=blocks[s])
        return out

    @contextlib.contextmanager
    def chunk(self, t0: int, t: int):
        self.t0, self.t, self.site = t0, t, 0
        yield

    @contextlib.contextmanager
    def recording(self):
        """Collect the number of draws (mask elements) of every mask drawn inside the block, in order."""
        saved, self.sizes = self.sizes, []
        try:
            yield self.sizes
        finally:
            self.sizes = saved

    def __enter__(self) -> _SampleStreams:
        _streams_lock.acquire()
        self._saved = dkF._seed_override, dkF._sample_hook
        dkF._seed_override, dkF._sample_hook = self._seed, self._draw
        return self

    def __exit__(self, *exc_info: object) -> None:
        dkF._seed_override, dkF._sample_hook = self._saved
        _streams_lock.release()


#: torch.nn modules whose forward is a pure function of its tensor arguments, parameters and buffers (the norms
#: in eval mode): :class:`_Memo` may reuse their outputs. Random ones (RReLU, FractionalMaxPool) are not here.
_PURE_MODULE_NAMES = (
    "Identity Flatten Unflatten Linear Bilinear Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d ConvTranspose3d "
    "BatchNorm1d BatchNorm2d BatchNorm3d SyncBatchNorm InstanceNorm1d InstanceNorm2d InstanceNorm3d LayerNorm "
    "GroupNorm RMSNorm LocalResponseNorm ReLU ReLU6 LeakyReLU PReLU ELU SELU CELU GELU SiLU Mish Sigmoid Tanh "
    "Hardtanh Hardswish Hardsigmoid Softplus Softsign Tanhshrink Softshrink Hardshrink Threshold LogSigmoid GLU "
    "Softmax Softmin LogSoftmax Softmax2d MaxPool1d MaxPool2d MaxPool3d AvgPool1d AvgPool2d AvgPool3d "
    "AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveAvgPool3d AdaptiveMaxPool1d AdaptiveMaxPool2d AdaptiveMaxPool3d "
    "LPPool1d LPPool2d Upsample UpsamplingNearest2d UpsamplingBilinear2d PixelShuffle PixelUnshuffle ChannelShuffle "
    "ZeroPad1d ZeroPad2d ZeroPad3d ConstantPad1d ConstantPad2d ConstantPad3d ReflectionPad1d ReflectionPad2d "
    "ReflectionPad3d ReplicationPad1d ReplicationPad2d ReplicationPad3d CircularPad1d CircularPad2d CircularPad3d "
    "Embedding"
).split()
_PURE_FORWARDS = frozenset(getattr(nn, name).forward for name in _PURE_MODULE_NAMES if hasattr(nn, name))


def _pure(module: nn.Module, internal: bool = False) -> bool:
    """Whether ``module`` computes a pure function of its inputs, with no side effect.

    True for a listed torch layer that keeps its class's ``forward`` (norms in eval mode, ``Embedding`` without
    ``max_norm``) and for a ``Sequential`` of such layers; false for any custom ``forward``, which may draw noise,
    for a module with an instance ``forward``, hooks (a pre-hook may resample the weight: DropConnect) or
    parametrizations (which may be random), and for an ``inplace=True`` layer that would edit the caller's
    tensor (``internal``: its input is a temporary made earlier inside an enclosing pure ``Sequential``).
    """
    if "forward" in module.__dict__ or _hooked(module):
        return False
    forward = type(module).forward
    if forward is nn.Sequential.forward:
        for child in module:
            if not _pure(child, internal):
                return False
            internal = internal or any(_fresh(m) for m in child.modules())
        return True
    if forward not in _PURE_FORWARDS or next(module.children(), None) is not None:  # children: parametrizations
        return False
    if getattr(module, "inplace", False) and not internal:
        return False
    if isinstance(module, nn.modules.batchnorm._NormBase) and module.training:  # batch statistics, running stats
        return False
    return getattr(module, "max_norm", None) is None  # Embedding(max_norm=...) renormalises its weight in place


def _hooked(module: nn.Module) -> bool:
    """Whether ``module`` has its own forward hooks or pre-hooks (code that may change what it computes)."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _fresh(module: nn.Module) -> bool:
    """Whether a pure leaf layer returns a new tensor (not its input or a view of it)."""
    return type(module).forward in _PURE_FORWARDS and not (
        isinstance(module, (nn.Identity, nn.Flatten, nn.Unflatten)) or getattr(module, "inplace", False)
    )


def _outermost_pure(module: nn.Module) -> list[nn.Module]:
    """The pure submodules of ``module`` that no pure module contains (each once, also when shared)."""
    if _pure(module):
        return [module]
    return list(dict.fromkeys(m for child in module.children() for m in _outermost_pure(child)))


def _holders(module: nn.Module) -> list[dict]:
    """The dicts of ``module`` and its submodules that hold what a forward reads besides its arguments.

    Parameters, buffers and tensor attributes; :meth:`_Memo._state` reads them on every call.
    """
    return [d for m in module.modules() for d in (m._parameters, m._buffers, m.__dict__)]


class _Memo:
    r"""The deterministic part of a model runs once across the samples of :func:`predict`, whatever its forward.

    The generalisation of the ``Sequential`` prefix to custom ``forward`` code. A tensor is *stable* if it
    equals :math:`\mathrm{repeat}(b, t)` (``t`` copies of a base ``b`` stacked in dimension 0) where ``b`` is the
    sampled input ``h`` or an output this memo computed, and both still hold the values they had then (their
    ``_version`` counters, bumped by every in-place op, are unchanged). An outermost :func:`_pure` submodule
    called with stable positional tensors of one ``t`` computes :math:`f(b)` once per base, then returns it
    (``t = 1``, the loop) or :math:`\mathrm{repeat}(f(b), t) = f(\mathrm{repeat}(b, t))` (a stacked chunk: the
    layers treat rows independently, as :func:`predict` requires). A layer asked again within one forward
    gets a copy, so that an in-place edit of one result cannot reach the other. Any other call runs as usual.
    Outputs are bit for bit those of the plain forward for the loop; stacked chunks get the base's values repeated.

    The memo holds the stable bases (the deterministic prefix's outputs, ``N`` rows each), strongly, and the
    repeated tensors weakly (they live as long as the chunk's forward uses them). An output edited in place, or
    whose layer's weights or buffers changed, is recomputed, and the stale one, with what was computed from it,
    is let go (per-sample edits would otherwise keep one activation per sample). Edits that bypass the version
    counter (through ``.data``, NumPy or the storage) are not seen.
    """

    def __init__(self, model: nn.Module, h: torch.Tensor) -> None:
        hooks = nn.modules.module  # global module hooks may be stateful or random: no memo under them
        hooked = getattr(hooks, "_global_forward_pre_hooks", None) or getattr(hooks, "_global_forward_hooks", None)
        self.off = torch.is_inference_mode_enabled() or h.is_inference() or bool(hooked)  # inference: no _version
        self.modules = [] if self.off else _outermost_pure(model)  # never one with its own instance forward
        self.stable: dict[int, tuple[weakref.ref, int, torch.Tensor, int]] = {}
        #: key (module, *bases) -> [output, last forward that got it, the bases (weakly), the module's state]
        self.entries: dict[tuple[int, ...], list | bool] = {}
        self.holders: dict[int, list[dict]] = {}  #: module id -> _holders(module), found once
        self.forwards = 0
        self.inside = 0  #: > 0 while a memoised layer computes on its bases
        self.h = self.add(h, h, 1)

    def add(self, tensor: torch.Tensor, base: torch.Tensor, times: int) -> torch.Tensor:
        """Record that ``tensor`` equals ``base`` repeated ``times`` times in dimension 0 (``base`` stable)."""
        if not self.off:
            key = id(tensor)  # the record goes when the tensor does (a repeat or copy: its base is held strongly)
            self.stable[key] = (weakref.ref(tensor, functools.partial(self._forget, key)), tensor._version, base, times)
        return tensor

    def _forget(self, key: int, ref: weakref.ref) -> None:
        held = self.stable.get(key)
        if held is not None and held[0] is ref:
            del self.stable[key]

    def _lookup(self, tensor: object) -> tuple[torch.Tensor, int] | None:
        held = self.stable.get(id(tensor))
        if held is None or held[0]() is not tensor or tensor._version != held[1]:  # type: ignore[union-attr]
            return None
        base = held[2]
        if base is not tensor and self._lookup(base) is None:  # the base was changed in place
            return None
        return base, held[3]

    def _valid(self, entry: list, module: nn.Module, bases: list[torch.Tensor]) -> bool:
        """The output is unchanged, computed from these very bases, with the module's current weights and buffers."""
        if self._lookup(entry[0]) is None or any(ref() is not b for ref, b in zip(entry[2], bases, strict=True)):
            return False
        state = self._state(module)  # a wrapper may assign a new weight per call (WeightDrop) or edit one in place
        if len(state) != len(entry[3]):
            return False
        return all(r() is t and t._version == v for (r, v), t in zip(entry[3], state, strict=True))

    def _state(self, module: nn.Module) -> list[torch.Tensor]:
        """The tensors ``module``'s forward may read besides its arguments, now (see :func:`_holders`)."""
        holders = self.holders.get(id(module))
        if holders is None:
            holders = self.holders[id(module)] = _holders(module)
        return [t for d in holders for t in d.values() if isinstance(t, torch.Tensor)]

    def _drop(self, key: tuple[int, ...]) -> None:
        """Forget a stale entry, its output's record and the entries computed from it (they would be kept alive)."""
        entry = self.entries.pop(key, None)
        if not isinstance(entry, list):
            return
        out = entry[0]
        held = self.stable.get(id(out))
        if out is not self.h and held is not None and held[0]() is out and held[2] is out:
            del self.stable[id(out)]
        for k in [k for k in self.entries if id(out) in k[1:]]:
            self._drop(k)

    def _call(self, module: nn.Module, forward, *args, **kwargs):
        found = [self._lookup(arg) for arg in args] if args and not kwargs else [None]
        if any(f is None for f in found) or len({times for _, times in found}) != 1:  # type: ignore[misc]
            return forward(*args, **kwargs)
        bases, times = [base for base, _ in found], found[0][1]  # type: ignore[index]
        key = (id(module), *map(id, bases))
        entry = self.entries.get(key)
        if entry is False:  # a layer that returns no tensor (MaxPool2d(return_indices=True)): not memoised
            return forward(*args)
        if entry is None or not self._valid(entry, module, bases):  # type: ignore[arg-type]
            self._drop(key)
            self.inside += 1
            try:
                out = forward(*bases)
            finally:
                self.inside -= 1
            if not isinstance(out, torch.Tensor):
                self.entries[key] = False
                return forward(*args) if times > 1 else out
            state = [(weakref.ref(t), t._version) for t in self._state(module)]
            entry = self.entries[key] = [self.add(out, out, 1), -1, [weakref.ref(b) for b in bases], state]
        out = entry[0]  # type: ignore[index]
        if times > 1:
            return self.add(_repeat(out, times), out, times)
        if entry[1] == self.forwards:  # type: ignore[index]  # asked twice in one forward: a copy, as plain calls give
            return self.add(out.clone(), out, 1)
        entry[1] = self.forwards  # type: ignore[index]
        return out

    def next_forward(self) -> None:
        """Mark the start of a sampled forward (an output is handed out once per forward, then copied)."""
        self.forwards += 1

    def __enter__(self) -> _Memo:
        for m in self.modules:
            m.forward = functools.partial(self._call, m, m.forward)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for m in self.modules:
            m.__dict__.pop("forward", None)
        self.entries.clear()
        self.stable.clear()


def _widest_activation(module: nn.Module, row: torch.Tensor) -> int:
    """Elements of the largest tensor a submodule outputs for a batch of one row.

    Under :class:`_Memo`: the activations inside the deterministic layers it computes once are left out (a stacked
    chunk never makes them); their outputs, repeated per chunk, count.
    """
    sizes = [row.numel()]
    with _Memo(module, row) as memo:

        def record(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor) and not memo.inside:
                sizes.append(output.numel())

        hooks = [m.register_forward_hook(record) for m in module.modules()]
        try:
            module(row)
        finally:
            for hook in hooks:
                hook.remove()
    return max(sizes)


def _settle_heap(nbytes: int) -> None:
    """Let glibc keep a chunk's CPU temporaries (``nbytes`` each at most) in its heap: free an untouched 4x block.

    glibc serves a block above its mmap threshold with a fresh mapping, and gives its heap top back to the kernel
    above the trim threshold. Both start low (128 KB) and rise with the largest mapped block freed so far (the
    trim threshold to twice it), up to 32 MB. Left to themselves, a chunk's temporaries of W bytes raise them to
    W and 2W only, so the three or four of them a chunk holds at once are trimmed when it ends and faulted in
    again, page by page, by the next: 26k faults per call in bench_mc's case A, 15-25 % of its time. One block of
    :data:`_HEAP_HEADROOM` W, allocated without touching a page and freed before the chunks, raises the
    thresholds to 4W and 8W. That is what freeing any 4W tensor does in a torch program; the rise is
    process-wide and permanent, so it is done once per size. The freed memory glibc then keeps for reuse is
    bounded (measured: a loop of 16 MB tensors settles at 8 of them held free, with or without this). Elsewhere
    (other allocators) it is a harmless allocation and free.
    """
    global _heap_settled
    size = min(_HEAP_HEADROOM * nbytes, _GLIBC_MMAP_THRESHOLD_MAX)
    if size > _heap_settled:
        torch.empty(size, dtype=torch.uint8)  # allocated and freed at once, never written: no page is faulted
        _heap_settled = size


def samples_per_chunk(widest: int, rows: int, samples: int, max_rows: int, cpu: bool = True) -> int:
    """How many samples :func:`predict` stacks per forward: ``1`` is the Python loop (prefix still reused).

    The most samples whose stacked widest activation (``widest`` elements per sample) stays within
    :data:`ACTIVATION_BUDGET` and whose rows (``rows`` per sample) within ``max_rows``, at least one; one also
    when fewer than :data:`STACK_AT_LEAST` samples fit the budget, for rows on the CPU (``cpu``), where that was
    measured: on a GPU a loop of small forwards is bound by kernel launches instead.
    """
    fits = ACTIVATION_BUDGET // max(widest, 1)
    if cpu and fits < STACK_AT_LEAST:
        return 1
    return max(1, min(samples, fits, max_rows // max(rows, 1)))


def _plain_dropout(rest: nn.Module) -> nn.Dropout | None:
    """``rest[0]`` when ``rest`` is a ``Sequential`` that starts with torch's own ``nn.Dropout`` (no hooks)."""
    if not isinstance(rest, nn.Sequential) or len(rest) < 2:
        return None
    layer = rest[0]
    return layer if type(layer) is nn.Dropout and not _hooked(layer) else None


def _per_chunk(
    rest: nn.Module, row: torch.Tensor, dim: int, rows: int, samples: int, max_rows: int, streams, check: bool
) -> int:
    """:func:`samples_per_chunk` for ``rest``, its widest activation measured on ``row`` (one row of the input).

    ``1``, the loop, also when a layer is tied to the batch size, and (``check``) when a mask drawn would be
    shared by the stacked samples. Checked, when more than one sample fits a forward, in MC mode on ``row`` alone
    and stacked twice in ``dim``: every mask drawn through dropkit (torch's dropout modules and functional calls
    included, see :class:`mc_dropout`) must draw twice as many elements. A dropout applied to something
    without the samples' rows (a weight, an embedding table, a positional buffer later broadcast over the
    batch), or with a mask shared along ``dim`` (``noise_shape=(1, F)``), draws one mask that every stacked
    sample would share, where the loop draws one per sample; the eval-mode row check cannot see it. On the CPU
    it also readies glibc's heap for chunks of that size (:func:`_settle_heap`).
    """
    try:
        with streams.chunk(0, 1), streams.recording() as one:  # a one-row probe (its output dropped)
            widest = _widest_activation(rest, row) * rows
            per_chunk = samples_per_chunk(widest, rows, samples, max_rows, cpu=row.device.type == "cpu")
        if row.device.type == "cpu":
            _settle_heap(per_chunk * widest * row.element_size())
        if check and per_chunk > 1:
            with streams.chunk(0, 2), streams.recording() as two:
                rest(_repeat(row, 2, dim))
            if len(one) != len(two) or any(2 * a != b for a, b in zip(one, two, strict=False)):
                return 1
    except Exception:  # noqa: BLE001 - a layer tied to the batch size (noise_shape=(N, ...), x.view(N, ...))
        return 1  # the loop: every forward sees the caller's batch
    return per_chunk


@torch.no_grad()
def _draw(
    model: nn.Module, x: torch.Tensor, samples: int, max_rows: int, dims: tuple[int, int] | None, check: bool = True
) -> tuple[torch.Tensor, bool]:
    """Return ``samples`` stochastic outputs of ``model`` at ``x`` and whether dropkit drew any mask.

    The outputs have shape ``(T, *)`` (``*``: one output's shape). The flag tells an inactive model from an input
    the masks cannot change (a zero input gives equal samples from an active dropout).

    ``dims`` (from :func:`_stack_dims`): ``None`` for a loop of whole-model forwards, or the input dimension the
    samples stack in and the output dimension they come out in; ``check``: loop if a mask would be shared by
    stacked samples (:func:`_per_chunk`). Stacked chunks of :func:`samples_per_chunk` samples; a chunk of one
    sample is a loop that reuses the prefix. Masks come from :class:`_SampleStreams`,
    seeded from torch's generator, so sample ``t`` is the same whatever the chunking (in dimension 0).
    """
    stack, out_dim = dims or (0, 0)
    n, result, done = x.shape[stack], None, 0
    with _SampleStreams(dkF._seed(None, None), n, samples) as streams:
        if dims is None:  # a loop of whole-model forwards
            rest, h, per_chunk, first = model, x, 1, None
        elif stack == 0:
            prefix, rest = _split_sequential(model)
            h = prefix(x) if prefix is not None else x
            per_chunk = _per_chunk(rest, h[:1].clone(), 0, n, samples, max_rows, streams, check)
            first = _plain_dropout(rest)
        else:  # sequence-first: the samples' rows stacked beside each other in dimension 1
            rest, h, first = model, x, None
            per_chunk = _per_chunk(rest, x.narrow(stack, 0, 1).clone(), stack, n, samples, max_rows, streams, check)
            if per_chunk == 1:  # one sample per forward: the loop, its masks aligned as vectorize=False aligns them
                streams.rows = x.shape[0]
        # one-sample forwards run on a copy of h (the caller's x or the prefix's output) until one is seen not to
        # edit it in place: an in-place first layer (Dropout2d(inplace=True)) would compound the masks over the
        # samples. Inference tensors have no version counter: always a copy.
        tracked = not (h.is_inference() or torch.is_inference_mode_enabled())
        copy_h = True
        with _Memo(rest, h) as memo:  # deterministic layers on h run once, for all chunks
            while done < samples:
                t = min(per_chunk, samples - done)
                memo.next_forward()
                with streams.chunk(done, t):
                    if first is not None:  # repeat and first dropout fused: the repeat is never materialised
                        out = rest[1:](streams.repeated_dropout(h, t, first.p))
                    elif t == 1 and not copy_h:
                        out = rest(h)
                    elif t == 1:
                        fresh = memo.add(h.clone(), h, 1)
                        version = fresh._version if tracked else None
                        out = rest(fresh)
                        copy_h = not tracked or fresh._version != version
                    elif stack == 0:
                        out = rest(memo.add(_repeat(h, t), h, t))
                    else:  # not a repeat in dimension 0: the memo leaves it alone
                        out = rest(_repeat(h, t, stack))
                if not isinstance(out, torch.Tensor):
                    raise TypeError(
                        f"predict: the model must return a tensor, but {type(model).__name__} returned "
                        f"{type(out).__name__!r}; wrap it in a module that returns the logits or outputs."
                    )
                result = _store(result, out.unflatten(out_dim, (t, -1)).movedim(out_dim, 0), done, samples)
                done += t
        return result, streams.drawn > 0


def _store(result: torch.Tensor | None, out: torch.Tensor, start: int, samples: int) -> torch.Tensor:
    """Copy a chunk's samples ``out`` (``(t, N, ...)``) into ``result[start:start + t]``; allocate it first.

    One output tensor for all ``samples`` instead of a list of small chunk outputs joined at the end: kept
    small blocks between each chunk's large temporaries fragment glibc's heap, which then grows by about one
    temporary per chunk (measured: 3 GB for 500 chunks of a 9-100-1 MLP on 7,316 rows; 20 GB, and an
    out-of-memory kill, for T = 10,000).
    """
    if result is None:
        result = out.new_empty((samples, *out.shape[1:]))
    result.narrow(0, start, out.shape[0]).copy_(out)
    return result


def predict(
    model: nn.Module,
    x: torch.Tensor,
    samples: int = 50,
    *,
    task: str = "classification",
    tau: float | None = None,
    seed: int | None = None,
    keep_samples: bool = False,
    vectorize: bool | str = "auto",
    max_rows: int = 1 << 13,
) -> MCResult:
    r"""Draw ``samples`` MC-dropout predictions of ``model`` at ``x`` and summarise them.

    The samples are stacked in the batch dimension (``t × N`` rows per forward), the deterministic part before
    the first dropout runs once (the prefix of a ``Sequential``; in a custom ``forward``, every torch layer that
    sees only the input or such layers' outputs: :class:`_Memo`; in-place edits of their outputs are noticed,
    except through ``.data``), and torch's dropout runs on dropkit's seeded kernels.

    How many samples a forward stacks (:func:`samples_per_chunk`) is a fixed rule, not a timing: as many as
    keep the chunk's widest activation (measured once on a one-row probe, times ``N``) within
    :data:`ACTIVATION_BUDGET` elements (cache-sized) and its rows within ``max_rows``; one sample per forward,
    the Python loop with the prefix reused, when fewer than :data:`STACK_AT_LEAST` samples fit the budget.
    Stacking pays when the per-sample work is small (a batch of vectors through Linear layers: bigger matrix
    products, fewer calls); when one sample alone fills the cache (convolutional feature maps), stacking
    only moves the activations out of cache, and the loop is as fast or faster. A rule keeps ``seed=`` results
    independent of the machine's load. And for samples stacked in dimension 0 the choice never changes the
    numbers of dropkit-seeded dropout (torch's dropout layers and functional calls included): sample ``t`` draws
    the same masks whether it runs alone or stacked (per-site seeds and per-sample element offsets, see
    :class:`_SampleStreams`), so ``vectorize``, ``max_rows`` and the budget change the speed, and the outputs
    only in their last bits (a matrix product over more rows may round differently), not the masks. Stochastic
    layers outside dropkit's mask specs (Gaussian noise, DropPath, torch's fused attention dropout) still draw
    independent samples, but their values then depend on the grouping.

    ``vectorize="auto"`` stacks unless a module in training mode mixes the batch (BatchNorm in training, where
    stacking would change the result), a layer draws one mask per batch (per-batch DropConnect, where the
    stacked samples would share it), or the model does not map the rows of ``x`` independently (checked on two
    rows, :func:`_batch_dim`; not checked in a model without a ``Sequential`` prefix when the budget allows
    one sample per forward, where the loop runs anyway). A sequence-first ``(L, N, ...)`` input (``nn.LSTM``,
    ``nn.TransformerEncoder`` with ``batch_first=False``) fails that check in dimension 0, where stacking would
    join the samples' sequences; if it passes it in dimension 1 and every draw of the model is element-wise
    (:func:`_draws_elementwise`: torch's ``Dropout``, RNN and attention dropout; not channel, DropPath or
    ``noise_shape`` draws, which a sample stacked beside another would share), the samples stack there,
    beside the rows, and come out of whichever output dimension carries them. Those draws are not aligned
    with the loop's: there ``max_rows`` and ``vectorize`` change the values, not their law (``seed=`` still
    reproduces them). Either way ``"auto"`` stacks only if every mask drawn through dropkit grows with the
    number of samples stacked (:func:`_per_chunk`): a dropout on a weight, an embedding table or a positional
    buffer would give the stacked samples one shared mask. ``True`` stacks in dimension 0 regardless (the
    caller vouches for the rows); ``False`` runs a Python loop of whole-model forwards (deterministic torch
    layers on the input still computed once, bit for bit the plain forward's outputs). Calls from several
    threads run one at a time (the seeding and the models' mode switches are process-wide). The samples are
    drawn under ``torch.no_grad()``: the result carries no autograd graph.

    Args:
        model: Any ``nn.Module`` with a stochastic path (see :class:`mc_dropout`).
        x: Input batch, shape ``(N, *)``. Stacked samples need a model that treats the rows independently;
            ``"auto"`` checks it (a sequence-first input stacks in dimension 1, or runs as a loop).
        samples: Number of MC samples :math:`T >= 1`. Default: ``50``.
        task: ``"classification"`` (the model returns logits over dim 1) or ``"regression"``.
        tau: Model precision for regression: adds :math:`\tau^{-1}` to the predictive variance.
        seed: Makes the samples reproducible (runs under ``torch.random.fork_rng`` seeded with it, so torch's
            generators, CPU and CUDA, are left as they were). Default: ``None``.
        keep_samples: Keep the raw samples (probabilities or regression outputs) in the result.
        vectorize: ``"auto"``, ``True`` or ``False``.
        max_rows: Most rows per stacked forward (a memory budget). Default: ``8192``.

    Returns:
        An :class:`MCResult`.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).eval()
        >>> r = predict(model, torch.randn(5, 4), samples=20, seed=0)
        >>> r.mean.shape, r.votes.sum(1).tolist()
        (torch.Size([5, 3]), [20, 20, 20, 20, 20])
    """
    op = "predict"
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise TypeError(f"{op}: x must be a batched torch.Tensor (N, *), but got {type(x).__name__!r}.")
    if x.shape[0] == 0:
        raise ValueError(f"{op}: x must hold at least one row (N >= 1), but got shape {tuple(x.shape)}.")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"{op}: samples must be an int >= 1, but got {samples!r}.")
    _validate.choice(op, "task", task, ("classification", "regression"))
    _validate.choice(op, "vectorize", vectorize, ("auto", True, False))  # type: ignore[arg-type]
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ValueError(f"{op}: max_rows must be an int >= 1, but got {max_rows!r}.")
    if tau is not None:
        tau = _validate.real(op, "tau", tau)
        if not (tau > 0 and math.isfinite(tau)):
            raise ValueError(f"{op}: tau must be a finite number > 0, but got {tau!r}.")
    if seed is not None:
        _validate.seed_source(op, seed, None)

    cuda = torch.cuda.is_initialized()  # its generators too are seeded (torch's own dropout on the GPU draws there)
    devices = list(range(torch.cuda.device_count())) if cuda else []
    rng_scope = torch.random.fork_rng(devices=devices) if seed is not None else contextlib.nullcontext()
    with _streams_lock, rng_scope:  # one predict at a time: seeding and mode flags are global
        dims = _stack_dims(model, x, vectorize, samples, max_rows)
        with mc_dropout(model):
            if seed is not None and cuda:
                torch.manual_seed(seed)
            elif seed is not None:  # not torch.manual_seed: it would queue a seed for CUDA's start, kept after
                torch.default_generator.manual_seed(seed)
            outputs, drew = _draw(model, x, samples, max_rows, dims, check=vectorize == "auto")
    if samples > 1 and not drew and bool((outputs == outputs[:1]).all()):  # masks drawn: a zero input may give these
        raise RuntimeError(
            f"{op}: all {samples} MC samples are identical: no stochastic path was active in "
            f"{type(model).__name__} (is its dropout rate 0?)."
        )
    if task == "regression":
        return MCResult.from_regression(outputs, tau, keep_samples)
    if outputs.dim() < 3:
        raise ValueError(
            f"{op}: task='classification' needs logits of shape (N, C) from the model, but it returned shape "
            f"{tuple(outputs.shape[1:])}; use task='regression' for one value per row."
        )
    return MCResult.from_probabilities(torch.softmax(outputs, dim=2), keep_samples)


_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _two_rows(x: torch.Tensor) -> torch.Tensor | None:
    """Two different rows of ``x`` for :func:`_batch_dim`: the first and the last that differs from it.

    Identical rows would hide a symmetric coupling (attention over the two, a mean over the batch). The first
    and the last are a sorted batch's extremes, so a model that needs its rows sorted (``pack_padded_sequence``
    with ``enforce_sorted=True``) or sorts them sees the pair laid out as two stacked samples unsorted. Where all
    rows are equal (one row, or padding), the second is the first with its entries rolled along the last
    dimension (the same values: still valid token ids), or, for a constant row, the first plus one if the input
    is floating point; integer input then has none (a made-up id could be out of range), and ``None`` sends
    :func:`predict` to the loop.
    """
    first = x[:1]
    differs = (x != first).reshape(x.shape[0], -1).any(1).nonzero()
    if differs.numel():
        j = int(differs[-1])
        return torch.cat([first, x[j : j + 1]])
    if first.dim() > 1:  # the row's entries rolled: the same values in another order, valid token ids too
        other = first.roll(1, -1)
        if not torch.equal(other, first):
            return torch.cat([first, other])
    if x.is_floating_point() or x.is_complex():
        return torch.cat([first, first + 1])
    return None


def _matches(a: torch.Tensor, b: torch.Tensor) -> bool:
    """``a`` equals ``b`` to a tolerance for kernels whose rounding depends on the batch size (4 ulp, >= 1e-4).

    The absolute part scales with ``b``'s largest finite magnitude: an infinite output must not switch it off.
    """
    if a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    rtol = max(1e-4, 4 * torch.finfo(a.dtype).eps)
    finite = b[torch.isfinite(b)]
    atol = rtol * float(finite.abs().max()) if finite.numel() else 0.0
    return bool(torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True))


@torch.no_grad()
def _batch_dim(model: nn.Module, x: torch.Tensor, dim: int = 0) -> int | None:
    """The output dimension the rows of ``x`` along ``dim`` come out in, if ``model`` maps each row on its own.

    What stacking samples in ``dim`` requires. Checked with the stochastic paths off (deterministic) on two
    different rows ``a, b`` (:func:`_two_rows`) laid out as two stacked samples, ``a, b, a, b`` in ``dim``: the
    output must have exactly one dimension of size 4 where each row's own output has size 1, and hold there,
    in order, each row's forward alone (:func:`_matches`). Both rows are compared: a coupling may run either
    way (a sequence read backwards). The repeat also catches models that reorder rows (sorting by length) or
    need them in order (``pack_padded_sequence`` with ``enforce_sorted=True``). In ``dim = 0`` a
    sequence-first input fails it (``nn.LSTM``'s or ``nn.TransformerEncoder``'s ``(L, N, ...)`` with
    ``batch_first=False``: one time step depends on another), as does a model that reduces over dimension 0
    or raises on these rows. dropkit ops that stay on in eval draw the masks :func:`predict` would give the
    rows in dimension 0 (:class:`_SampleStreams`); other draws that do (``torch.randn`` in a forward, torch's
    ``F.dropout`` with its default ``training=True``) fail the check, and the loop is used: slower, never wrong.
    """
    pair = _two_rows(x.movedim(dim, 0))
    if pair is None:
        return None
    rows = _repeat(pair, 2).movedim(0, dim)  # a, b, a, b
    saved = [(m, m.training) for m in model.modules()]
    try:
        for _, m in stochastic_modules(model):
            m.training = False
        with _SampleStreams(0, 1, 4) as streams:  # dropkit ops that stay on draw row-aligned masks, as in predict
            with streams.chunk(0, 4):  # on copies: an in-place first layer must not edit x
                stacked = model(rows.clone())
            alone = []
            with streams.recording() as drawn:
                for row in range(2):
                    with streams.chunk(row, 1):
                        alone.append(model(rows.narrow(dim, row, 1).clone()))
            for row in range(2, 4):  # the same rows again: computed again only if row-aligned masks were drawn
                with streams.chunk(row, 1):
                    alone.append(model(rows.narrow(dim, row, 1).clone()) if drawn else alone[row - 2])
    except Exception:  # noqa: BLE001 - whatever these rows make the model raise, the loop is the safe answer
        return None
    finally:
        for m, training in saved:
            m.training = training
    if not all(isinstance(t, torch.Tensor) for t in (stacked, *alone)):
        return dim  # not an output predict can summarise; its own error follows
    shape = alone[0].shape
    if any(t.shape != shape for t in alone) or stacked.dim() != len(shape):
        return None
    grown = [d for d in range(stacked.dim()) if stacked.shape[d] != shape[d]]
    if len(grown) != 1 or (stacked.shape[grown[0]], shape[grown[0]]) != (4, 1):
        return None
    out = grown[0]
    return out if all(_matches(stacked.narrow(out, k, 1), alone[k]) for k in range(4)) else None


def _rows_independent(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``model`` maps each row of ``x`` (dimension 0) on its own, into dimension 0 (:func:`_batch_dim`)."""
    return _batch_dim(model, x) == 0


#: Stochastic modules whose every draw is one per element of their input (none shared along a dimension), by
#: exact class: torch's own, which stacking beside the rows (dimension 1) cannot give one draw for all samples.
_ELEMENTWISE_TYPES = frozenset(
    {nn.Dropout, nn.AlphaDropout, dnn.Dropout, dnn.AlphaDropout, nn.RNN, nn.LSTM, nn.GRU, *TORCH_FAST_PATHS}
)
#: Calls in a forward whose draws may be shared along a dimension: channel, structured and ``noise_shape`` ones.
_SHARED_DRAWS = re.compile(r"dropout[123]d|feature_alpha_dropout|noise_shape|drop_path|drop_block|stochastic_depth")


def _draws_elementwise(model: nn.Module) -> bool:
    """Whether every random draw of ``model``'s stochastic paths is element-wise, as far as can be known.

    True when every module :func:`mc_dropout` switches is one of :data:`_ELEMENTWISE_TYPES` (dropkit's ``Dropout``
    without ``noise_shape``) and no other module's ``forward`` names a channel, structured or ``noise_shape``
    op (:data:`_SHARED_DRAWS`). Stacking samples in dimension 1 needs it: a draw shared along that dimension
    (``Dropout2d`` on an unbatched input, DropPath's one draw per leading index, ``noise_shape=(L, 1, F)``) would
    give every stacked sample the same mask, and the eval-mode row check cannot see it.
    """
    switched = {id(m) for _, m in stochastic_modules(model)}
    for m in model.modules():
        if type(m) in _ELEMENTWISE_TYPES:
            if getattr(m, "noise_shape", None) is not None:
                return False
        elif id(m) in switched or _SHARED_DRAWS.search(_forward_source(type(m))):
            return False
    return True


def _stack_dims(
    model: nn.Module, x: torch.Tensor, vectorize: bool | str, samples: int | None = None, max_rows: int = 1 << 13
) -> tuple[int, int] | None:
    """Where :func:`predict` stacks the samples: ``(input dim, output dim)``, or ``None`` for the loop.

    ``vectorize=True``: dimension 0, as the caller vouches. ``"auto"``: dimension 0 if the model maps its rows
    independently there (:func:`_batch_dim`); else dimension 1 if it does there and draws element-wise only
    (:func:`_draws_elementwise`: sequence-first RNNs and Transformers, ``(L, N, ...)``); else the loop, as also
    when a module mixes the batch (:func:`_mixes_batch`). :func:`_draw` still loops if a mask would be shared by
    the stacked samples (:func:`_per_chunk`). Given ``samples``, the loop without the row check when one
    sample per forward is all the budget allows in dimension 0 and dimension 1 is out of the question
    (:func:`_one_per_forward`, not for a ``Sequential`` with a prefix): the check could only have chosen that
    loop, or the same loop in dimension 0, which draws the same masks.
    """
    if vectorize is True:
        return 0, 0
    if vectorize is False or _mixes_batch(model):
        return None
    stacks_in_1 = x.dim() > 1 and _draws_elementwise(model)
    if samples is not None and not stacks_in_1 and _one_per_forward(model, x, samples, max_rows):
        return None
    out = _batch_dim(model, x)
    dim = 0
    if out is None and stacks_in_1:
        out, dim = _batch_dim(model, x, 1), 1
    return None if out is None else (dim, out)


@torch.no_grad()
def _one_per_forward(model: nn.Module, x: torch.Tensor, samples: int, max_rows: int) -> bool:
    """Whether one sample's activations already fill a forward (:func:`samples_per_chunk` is 1) in dimension 0.

    :func:`_per_chunk`'s one-row probe, in MC mode. A convolutional net's feature maps usually do: :func:`predict`
    then skips the row check (several small forwards) and runs the loop of whole-model forwards, which needs
    none; so does a model the probe makes raise, which loops whatever the check says. ``False`` for a
    ``Sequential`` with a deterministic prefix: there the check also clears the prefix to run once for all
    samples (no noise of its own, rows independent), which the loop of whole-model forwards could only partly
    do (:class:`_Memo`).
    """
    if _split_sequential(model)[0] is not None:
        return False
    with mc_dropout(model), _SampleStreams(0, 1, samples) as streams:
        return _per_chunk(model, x[:1].clone(), 0, x.shape[0], samples, max_rows, streams, check=False) == 1


def _mixes_batch(model: nn.Module) -> bool:
    """Whether stacking samples in the batch would change them.

    True when a module couples the rows of a batch (BatchNorm in training, using batch statistics) or draws
    one mask for the whole batch (per-batch DropConnect: ``shares_mask_across_batch``), which would give every
    stacked sample the same mask.
    """
    return any(
        (isinstance(m, _BATCH_NORMS) and m.training) or getattr(m, "shares_mask_across_batch", False)
        for m in model.modules()
    )
