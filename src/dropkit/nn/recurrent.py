r"""Recurrent dropout that stays fast: variational LSTM / GRU, WeightDrop (DropConnect on RNN weights), zoneout.

- :class:`LSTM` and :class:`GRU` are ``torch.nn.LSTM`` / ``torch.nn.GRU`` (subclasses: same constructor,
  parameters, ``state_dict``, packed sequences, ``(h0, c0)``) with variational dropout (Gal & Ghahramani 2016,
  their *tied* variant): one mask per sequence and layer, the same at every time step and shared by the gates,
  on each layer's inputs (``dropout``), on the hidden state fed back into the recurrence (``recurrent_dropout``)
  and on the last layer's output (``output_dropout``). Keras' ``dropout`` / ``recurrent_dropout`` draw such masks
  when ``recurrent_dropout=0``; with ``recurrent_dropout > 0`` Keras switches to one mask per gate (its
  ``implementation=1``, the untied variant), which is not offered here. With every rate 0, or in eval,
  the forward *is* ``torch.nn.LSTM.forward``. Input and output dropout keep torch's fused kernel (one fused
  call per layer, the mask broadcast over time); recurrent dropout runs a step loop that computes the input
  projection of all time steps with one matmul, so each step is one ``addmm`` plus the gate arithmetic.
- :class:`WeightDrop` / :func:`weight_drop`: DropConnect on named weights of any module (AWD-LSTM's
  ``weight_hh_l0``), the masked weight passed in with :func:`torch.func.functional_call`, so torch's fused RNN
  path is kept and the parameters stay where they are (``state_dict``, ``.to()``, ``.half()`` untouched).
- :class:`ZoneoutLSTMCell` (Krueger et al. 2016): an ``nn.LSTMCell`` whose hidden and cell states keep their
  previous value with probability ``zoneout_h`` / ``zoneout_c`` in training, and take the expectation in eval;
  the same as the ``zoneout_h`` / ``zoneout_c`` options of :class:`LSTM` (``zoneout_h`` of :class:`GRU`).

Every mask comes from dropkit's RNG core: a seed per forward call from torch's global CPU generator (or the
module's ``seed=`` / ``generator=``), masks at fixed offsets of it, and ``dropkit.mc.mc_dropout`` switches
them on in eval.
"""

from __future__ import annotations

import torch
from torch import _VF, nn
from torch.nn.utils.rnn import PackedSequence

from .. import _validate, kernels, rng
from .. import functional as F
from .._overrides import fx_leaf_call
from ..kernels import MaskSpec

__all__ = ["LSTM", "GRU", "ZoneoutLSTMCell", "WeightDrop", "weight_drop"]

_MODES = ("inverted", "classic")


class _Masks:
    """The variational masks of one call: ``(sequences, features)`` blocks at consecutive offsets of one seed.

    Offsets advance whether or not a rate is 0, so a layer's masks do not change when another rate does. Masks
    are drawn in the caller's sequence order and gathered into the order the kernels see (packed sequences run
    sorted by length), so a sequence gets the same masks packed or padded.
    """

    def __init__(self, seed: int | None, mode: str, like: torch.Tensor, order: torch.Tensor | None) -> None:
        self.seed, self.mode, self.offset, self.order = seed, mode, 0, order
        self.dtype, self.device = like.dtype, like.device

    def draw(self, p: float, rows: int, features: int) -> torch.Tensor | float | None:
        """Return the next ``(rows, features)`` mask (scaled), a scalar in classic eval, or ``None`` (nothing to do)."""
        offset, self.offset = self.offset, self.offset + rows * features
        if p == 0.0:
            return None
        if self.seed is None:  # eval: only classic mode does anything, E[mask] = 1 - p
            return 1.0 - p if self.mode == "classic" else None
        scale = 0.0 if p == 1.0 else (1.0 / (1.0 - p) if self.mode == "inverted" else 1.0)
        spec = MaskSpec(self.seed, offset, F._threshold(p), scale)
        mask = kernels.keep_mask(spec, (rows, features), self.device).to(self.dtype).mul_(scale)
        return mask if self.order is None else mask.index_select(0, self.order)

    def zone(self, p: float, steps: int, rows: int, features: int) -> torch.Tensor | float | None:
        """Return zoneout's ``(steps, rows, features)`` keep-the-previous-value mask, ``p`` in eval, or ``None``.

        One fresh draw per step and unit (Krueger et al.), drawn in the caller's sequence order and gathered into
        the kernels' row order, as :meth:`draw`'s masks are.
        """
        offset, self.offset = self.offset, self.offset + steps * rows * features
        if p == 0.0:
            return None
        if self.seed is None:
            return p
        spec = MaskSpec(self.seed, offset, F._threshold(p), 1.0)
        zone = ~kernels.keep_mask(spec, (steps, rows, features), self.device)
        return zone if self.order is None else zone.index_select(1, self.order)


_Zone = torch.Tensor | float | None


def _zone(new: torch.Tensor, previous: torch.Tensor, zone: _Zone, t: int) -> torch.Tensor:
    """Zoneout of one step: keep ``previous`` where the step's mask says so (training), or the expectation (eval)."""
    if zone is None:
        return new
    if isinstance(zone, float):
        return torch.lerp(new, previous, zone)
    return torch.where(zone[t, : new.shape[0]], previous, new)


def _lstm_steps(
    xw: list[torch.Tensor],
    h0: torch.Tensor,
    c0: torch.Tensor,
    w_hh: torch.Tensor,
    w_hr: torch.Tensor | None,
    mask: torch.Tensor | None,
    reverse: bool,
    zone_h: _Zone = None,
    zone_c: _Zone = None,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Run one LSTM direction over precomputed input gates ``xw[t]`` (``x_t W_ih^T + b_ih + b_hh``).

    ``xw[t]`` has ``batch_sizes[t]`` rows (non-increasing over t, as in a PackedSequence; all equal when padded).
    Rows that end are frozen at their last state, as torch's kernels do. Returns the outputs of every step
    (in time order) and the final ``(h, c)`` with all rows. ``zone_h`` / ``zone_c``: zoneout (see :func:`_zone`);
    the candidate ``h`` is computed from the candidate ``c``, as in :class:`ZoneoutLSTMCell`.
    """
    w_t = w_hh.t()
    h, c = h0, c0
    outputs: list[torch.Tensor] = []
    done_h: list[torch.Tensor] = []
    done_c: list[torch.Tensor] = []
    steps = reversed(xw) if reverse else xw
    if reverse:
        rows = xw[-1].shape[0]
        h, c = h0[:rows], c0[:rows]
    for k, x_t in enumerate(steps):
        t = len(xw) - 1 - k if reverse else k
        rows = x_t.shape[0]
        if rows < h.shape[0]:  # forward direction: sequences that ended keep their last state
            done_h.append(h[rows:])
            done_c.append(c[rows:])
            h, c = h[:rows], c[:rows]
        elif rows > h.shape[0]:  # reverse direction: sequences that start now begin from their h0, c0
            h = torch.cat((h, h0[h.shape[0] : rows]))
            c = torch.cat((c, c0[c.shape[0] : rows]))
        fed = h if mask is None else h * (mask if rows == mask.shape[0] else mask[:rows])
        gates = torch.addmm(x_t, fed, w_t)
        i, f, g, o = gates.chunk(4, 1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        if w_hr is not None:
            h_new = torch.mm(h_new, w_hr.t())
        c, h = _zone(c_new, c, zone_c, t), _zone(h_new, h, zone_h, t)
        outputs.append(h)
    if reverse:
        outputs.reverse()
    return outputs, torch.cat([h, *done_h[::-1]]), torch.cat([c, *done_c[::-1]])


def _gru_steps(
    xw: list[torch.Tensor],
    h0: torch.Tensor,
    w_hh: torch.Tensor,
    b_hh: torch.Tensor | None,
    mask: torch.Tensor | None,
    reverse: bool,
    zone_h: _Zone = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    r"""Run one GRU direction over precomputed ``xw[t] = x_t W_ih^T + b_ih``; see :func:`_lstm_steps` for rows.

    torch's GRU: :math:`n = \tanh(x W_{in}^T + b_{in} + r \odot (h W_{hn}^T + b_{hn}))`,
    :math:`h' = (1 - z) n + z h`. Recurrent dropout masks the ``h`` that enters the matmul, not the ``z h`` carry
    (Keras' ``reset_after=True`` GRU).
    """
    w_t = w_hh.t()
    h = h0[: xw[-1].shape[0]] if reverse else h0
    outputs: list[torch.Tensor] = []
    done: list[torch.Tensor] = []
    for k, x_t in enumerate(reversed(xw) if reverse else xw):
        t = len(xw) - 1 - k if reverse else k
        rows = x_t.shape[0]
        if rows < h.shape[0]:
            done.append(h[rows:])
            h = h[:rows]
        elif rows > h.shape[0]:
            h = torch.cat((h, h0[h.shape[0] : rows]))
        fed = h if mask is None else h * (mask if rows == mask.shape[0] else mask[:rows])
        hw = torch.mm(fed, w_t) if b_hh is None else torch.addmm(b_hh, fed, w_t)
        x_r, x_z, x_n = x_t.chunk(3, 1)
        h_r, h_z, h_n = hw.chunk(3, 1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = _zone(n + z * (h - n), h, zone_h, t)
        outputs.append(h)
    if reverse:
        outputs.reverse()
    return outputs, torch.cat([h, *done[::-1]])


class _VariationalRNN:
    """Forward of dropkit's LSTM and GRU: torch's own forward when no mask is due, torch's kernels around masks else."""

    # set by torch.nn.RNNBase
    mode: str
    num_layers: int
    hidden_size: int
    proj_size: int
    bias: bool
    batch_first: bool
    bidirectional: bool
    training: bool
    _flat_weights: list[torch.Tensor]
    # set by _setup
    dropout: float
    recurrent_dropout: float
    output_dropout: float
    dropout_mode: str
    zoneout_h: float
    seed: int | None
    generator: torch.Generator | None

    def _setup(
        self,
        dropout: float,
        recurrent_dropout: float,
        output_dropout: float,
        mode: str,
        seed: int | None,
        generator: torch.Generator | None,
        zoneout_h: float = 0.0,
        zoneout_c: float = 0.0,
    ) -> None:
        name = type(self).__name__
        self.zoneout_h = _validate.rate(name, "zoneout_h", zoneout_h)
        if self.mode == "LSTM":
            self.zoneout_c = _validate.rate(name, "zoneout_c", zoneout_c)
        self.dropout = _validate.rate(name, "dropout", dropout)
        self.recurrent_dropout = _validate.rate(name, "recurrent_dropout", recurrent_dropout)
        self.output_dropout = _validate.rate(name, "output_dropout", output_dropout)
        self.dropout_mode = _validate.choice(name, "mode", mode, _MODES)
        _validate.recurrent_mode(name, self.dropout_mode, self.recurrent_dropout)
        self.seed = seed
        self.generator = rng._own_generator(self, name, seed, generator)

    def _applies_dropout(self, training: bool) -> bool:
        """Whether this call applies a mask (or classic-mode scaling) at all; revalidates rates set after init."""
        name = type(self).__name__
        rates = (
            _validate.rate(name, "dropout", self.dropout),
            _validate.rate(name, "recurrent_dropout", self.recurrent_dropout),
            _validate.rate(name, "output_dropout", self.output_dropout),
        )
        _validate.recurrent_mode(name, self.dropout_mode, rates[1])
        if self._zoneout():
            return True  # a step loop in training and in eval (the expectation)
        if training:
            return any(rates)
        return self.dropout_mode == "classic" and (rates[0] > 0 or rates[2] > 0)

    def _zoneout(self) -> tuple[float, float]:
        """Return the validated ``(zoneout_h, zoneout_c)``; ``()`` (falsy) when both are 0."""
        name = type(self).__name__
        z_h = _validate.rate(name, "zoneout_h", self.zoneout_h)
        z_c = _validate.rate(name, "zoneout_c", getattr(self, "zoneout_c", 0.0))
        return (z_h, z_c) if z_h or z_c else ()  # type: ignore[return-value]

    def extra_repr(self) -> str:
        """Describe the hyperparameters: torch's, then the dropout rates that are set."""
        s = super().extra_repr()  # type: ignore[misc]  # torch's RNN repr (next in the MRO of LSTM / GRU)
        if self.recurrent_dropout:
            s += f", recurrent_dropout={self.recurrent_dropout}"
        if self.output_dropout:
            s += f", output_dropout={self.output_dropout}"
        if self.zoneout_h:
            s += f", zoneout_h={self.zoneout_h}"
        if getattr(self, "zoneout_c", 0.0):
            s += f", zoneout_c={self.zoneout_c}"
        if self.dropout_mode != "inverted":
            s += f", mode={self.dropout_mode!r}"
        return s + ("" if self.seed is None else f", seed={self.seed}")

    def forward(self, input, hx=None):  # noqa: D102 - documented on the classes
        if (leaf := fx_leaf_call(self, input, hx)) is not None:  # torch.fx: one call_module node
            return leaf
        training = self.training or F._forced_training  # dropkit.mc.mc_dropout forces the masks on in eval
        if not self._applies_dropout(training):
            return super().forward(input, hx)  # type: ignore[misc]
        return self._forward_masked(input, hx, training)

    def _forward_masked(self, input, hx, training: bool):
        self._update_flat_weights()  # type: ignore[attr-defined]
        lstm = self.mode == "LSTM"
        name = type(self).__name__
        directions = 2 if self.bidirectional else 1
        out_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            batch = int(batch_sizes[0])
            if hx is not None:
                hx = self.permute_hidden(hx, sorted_indices)  # type: ignore[attr-defined]
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            if not batched:
                input = input.unsqueeze(batch_dim)
            if hx is not None:
                states = hx if lstm else (hx,)
                if any(s.dim() != (3 if batched else 2) for s in states):
                    raise RuntimeError(
                        f"For {'batched 3-D' if batched else 'unbatched 2-D'} input, hx should also be "
                        f"{'3-D' if batched else '2-D'} but got {tuple(s.dim() for s in states)}-D tensors"
                    )
                if not batched:
                    hx = tuple(s.unsqueeze(1) for s in states) if lstm else hx.unsqueeze(1)
            data = input.transpose(0, 1) if self.batch_first else input  # time-major inside
            batch_sizes, sorted_indices, unsorted_indices = None, None, None
            batch = data.shape[1]
        if hx is None:
            shape = (self.num_layers * directions, batch)
            h_zeros = torch.zeros(*shape, out_size, dtype=data.dtype, device=data.device)
            c_zeros = torch.zeros(*shape, self.hidden_size, dtype=data.dtype, device=data.device)
            hx = (h_zeros, c_zeros) if lstm else h_zeros
        self.check_forward_args(data if packed else input, hx, batch_sizes)  # type: ignore[attr-defined]
        states = tuple(hx) if lstm else (hx,)

        seed = F._seed(None, self.generator, batch) if training else None  # masks per sequence: one per row
        masks = _Masks(seed, self.dropout_mode, data, sorted_indices)
        rows = None if batch_sizes is None else _packed_rows(batch_sizes, data.device)
        output, finals = self._layers(data, batch_sizes, rows, states, masks, training, batch)
        hidden = tuple(finals) if lstm else finals[0]
        if packed:
            return PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices), self.permute_hidden(  # type: ignore[attr-defined]
                hidden, unsorted_indices
            )
        if self.batch_first:
            output = output.transpose(0, 1)
        if not batched:
            output = output.squeeze(batch_dim)
            hidden = tuple(h.squeeze(1) for h in hidden) if lstm else hidden.squeeze(1)
        return output, hidden

    def _layers(self, x, batch_sizes, rows, states, masks: _Masks, training: bool, batch: int):
        """Run every layer: input mask, one fused call (or the step loop), next layer; then the output mask."""
        directions = 2 if self.bidirectional else 1
        out_size = self.proj_size if self.proj_size > 0 else self.hidden_size
        per_direction = len(self._flat_weights) // (self.num_layers * directions)
        finals: list[list[torch.Tensor]] = [[] for _ in states]
        zoneout = self._zoneout()
        steps = x.shape[0] if batch_sizes is None else len(batch_sizes)
        for layer in range(self.num_layers):
            in_mask = masks.draw(self.dropout, batch, x.shape[-1])
            rec_masks = [masks.draw(self.recurrent_dropout, batch, out_size) for _ in range(directions)]
            zones = [
                (masks.zone(zoneout[0], steps, batch, out_size), masks.zone(zoneout[1], steps, batch, self.hidden_size))
                if zoneout
                else (None, None)
                for _ in range(directions)
            ]
            if in_mask is not None:
                x = _apply(x, in_mask, rows)
            first = layer * directions * per_direction
            weights = self._flat_weights[first : first + directions * per_direction]
            layer_states = tuple(s[layer * directions : (layer + 1) * directions] for s in states)
            if (training and self.recurrent_dropout > 0) or zoneout:
                x, new = self._loop_layer(x, batch_sizes, layer_states, weights, per_direction, rec_masks, zones)
            else:
                x, new = self._fused_layer(x, batch_sizes, layer_states, weights, training)
            for kept, state in zip(finals, new, strict=True):
                kept.append(state)
        out_mask = masks.draw(self.output_dropout, batch, x.shape[-1])
        if out_mask is not None:
            x = _apply(x, out_mask, rows)
        return x, [torch.cat(kept) for kept in finals]

    def _fused_layer(self, x, batch_sizes, states, weights, training: bool):
        """One layer (both directions) through torch's fused kernel, no dropout inside it."""
        hx = states if self.mode == "LSTM" else states[0]
        if self.num_layers > 1 and weights[0].is_cuda and torch.backends.cudnn.is_acceptable(weights[0]):
            weights = self._cudnn_chunk(weights, x.shape[-1])
        vf = _VF.lstm if self.mode == "LSTM" else _VF.gru
        if batch_sizes is None:
            result = vf(x, hx, weights, self.bias, 1, 0.0, training, self.bidirectional, False)
        else:
            result = vf(x, batch_sizes, hx, weights, self.bias, 1, 0.0, training, self.bidirectional)
        return result[0], result[1:]

    def _cudnn_chunk(self, weights: list[torch.Tensor], input_size: int) -> list[torch.Tensor]:
        """Copy one layer's weights into a cuDNN-layout chunk of their own (differentiably).

        cuDNN takes a layer's weights without copying them only when they form a one-layer chunk in its layout;
        in a module of several layers each layer's weights are part of the module's chunk, the first layer's too
        (seen on an H100, torch 2.11), so cuDNN would warn ("not part of single contiguous chunk of memory") and
        compact them on every call.
        """
        import torch.backends.cudnn.rnn as cudnn_rnn

        chunk = [w.clone() for w in weights]
        if torch._use_cudnn_rnn_flatten_weight():
            with torch.no_grad():  # rebinds the clones' storage to one chunk, as flatten_parameters does
                torch._cudnn_rnn_flatten_weight(
                    chunk,
                    len(weights) // (2 if self.bidirectional else 1),
                    input_size,
                    cudnn_rnn.get_cudnn_mode(self.mode),
                    self.hidden_size,
                    self.proj_size,
                    1,
                    False,
                    bool(self.bidirectional),
                )
        return chunk

    def _loop_layer(self, x, batch_sizes, states, weights, per_direction: int, rec_masks, zones):
        """One layer (both directions) as a step loop with recurrent masks; input gates precomputed in one matmul."""
        lstm = self.mode == "LSTM"
        outputs, finals = [], [[] for _ in states]
        for d in range(len(rec_masks)):
            w = weights[d * per_direction : (d + 1) * per_direction]
            w_ih, w_hh = w[0], w[1]
            b_ih, b_hh = (w[2], w[3]) if self.bias else (None, None)
            w_hr = w[-1] if self.proj_size > 0 else None
            if lstm:
                bias = None if b_ih is None else b_ih + b_hh
            else:
                bias = b_ih
            flat = x.reshape(-1, x.shape[-1])
            xw = torch.mm(flat, w_ih.t()) if bias is None else torch.addmm(bias, flat, w_ih.t())
            if batch_sizes is None:
                steps = list(xw.view(x.shape[0], x.shape[1], xw.shape[-1]).unbind(0))  # not -1: an empty batch
            else:
                steps = list(xw.split(batch_sizes.tolist()))
            mask = rec_masks[d] if isinstance(rec_masks[d], torch.Tensor) else None
            if lstm:
                out, h, c = _lstm_steps(steps, states[0][d], states[1][d], w_hh, w_hr, mask, d == 1, *zones[d])
                new = (h, c)
            else:
                out, h = _gru_steps(steps, states[0][d], w_hh, b_hh, mask, d == 1, zones[d][0])
                new = (h,)
            outputs.append(torch.stack(out) if batch_sizes is None else torch.cat(out))
            for kept, state in zip(finals, new, strict=True):
                kept.append(state)
        output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, -1)
        return output, tuple(torch.stack(kept) for kept in finals)


def _apply(x: torch.Tensor, mask: torch.Tensor | float, rows: torch.Tensor | None) -> torch.Tensor:
    """``x`` times a ``(sequences, features)`` mask (``rows``: each packed row's sequence) or a scalar.

    In ``x``'s dtype: under autocast the layers' outputs are half precision while the masks follow the input.
    """
    if not isinstance(mask, torch.Tensor):
        return x * mask
    return x * (mask if rows is None else mask[rows]).to(x.dtype)


def _packed_rows(batch_sizes: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Return, for each row of a PackedSequence's data, the (sorted) sequence it belongs to."""
    return torch.cat([torch.arange(int(b)) for b in batch_sizes]).to(device)


class LSTM(_VariationalRNN, nn.LSTM):
    r"""``torch.nn.LSTM`` with variational (Gal & Ghahramani) input, recurrent and output dropout.

    In training, each sequence :math:`n` of a batch draws, once per call, Bernoulli(1 - p) masks
    :math:`m^{x,l}_n` for layer :math:`l`'s input, :math:`m^{h,l,d}_n` for the state fed back in direction
    :math:`d`, and :math:`m^{y}_n` for the output, all scaled by :math:`1/(1-p)` and the same at every step:

    .. math::

        \begin{aligned}
        (i, f, g, o)_t &= \sigma/\tanh\big((x_t \odot m^{x,l}) W_{ih}^T + b_{ih}
            + (h_{t-1} \odot m^{h,l,d}) W_{hh}^T + b_{hh}\big) \\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t, \qquad h_t = o_t \odot \tanh(c_t) \ (\cdot\, W_{hr}^T)
        \end{aligned}

    One mask serves all four gates (Gal & Ghahramani's tied variant; Keras draws one per gate when its
    ``recurrent_dropout > 0``). The carried :math:`c_t` and the output :math:`h_t` are not masked (Keras'
    ``LSTM``). With every rate 0, or in
    eval (without zoneout), this is exactly ``torch.nn.LSTM`` (its own forward runs), and ``load_state_dict`` from a
    ``torch.nn.LSTM`` works both ways. Input and output dropout run torch's fused kernel once per layer;
    recurrent dropout runs a step loop (the input projection of all steps in one matmul). Packed sequences get
    the same masks as their padded form. MC dropout (``dropkit.mc.mc_dropout``) turns the masks on in eval.

    Args:
        input_size: The number of expected features in the input ``x``.
        hidden_size: The number of features in the hidden state ``h``.
        num_layers: Number of stacked recurrent layers. Default: ``1``.
        bias: If ``False``, the layers use no bias weights ``b_ih`` and ``b_hh``. Default: ``True``.
        batch_first: If ``True``, input and output tensors are ``(batch, seq, feature)``. Default: ``False``.
        dropout: Variational dropout rate on **each layer's input** (the first layer's ``x`` included): one mask
            per sequence and layer, shared by all time steps. Unlike ``torch.nn.LSTM``'s per-step dropout
            between layers. Default: ``0.0``.
        bidirectional: If ``True``, becomes a bidirectional LSTM. Default: ``False``.
        proj_size: If ``> 0``, use an LSTM with projections of that size. Default: ``0``.
        device: Device of the parameters.
        dtype: dtype of the parameters.
        recurrent_dropout: Variational dropout rate on the hidden state fed back into the recurrence
            (keyword-only; Keras' ``recurrent_dropout``). Runs a step loop, not the fused kernel. Default: ``0.0``.
        output_dropout: Variational dropout rate on the last layer's output sequence (keyword-only). The final
            states ``h_n`` are not masked. Default: ``0.0``.
        zoneout_h: Zoneout rate of the hidden state (keyword-only; Krueger et al. 2016): each unit keeps its
            previous value with this probability at each step in training, the expectation in eval (so eval
            runs the step loop too, and differs from ``torch.nn.LSTM``). Default: ``0.0``.
        zoneout_c: Zoneout rate of the cell state (keyword-only), as ``zoneout_h``. Default: ``0.0``.
        mode: ``"inverted"`` (kept units scaled by :math:`1/(1-p)`, eval untouched) or ``"classic"`` (no scaling
            in training, inputs and outputs scaled by :math:`1-p` in eval; not with ``recurrent_dropout``).
            Keyword-only. Default: ``"inverted"``.
        seed: Seed of the module's own generator: reproducible, advancing masks (keyword-only).
        generator: A generator to draw each call's seed from (keyword-only). Default: torch's CPU generator.

    Shape:
        As ``torch.nn.LSTM``: input :math:`(L, N, H_{in})` (or batch-first, unbatched, or a ``PackedSequence``),
        ``(h_0, c_0)`` of shape :math:`(D \cdot \text{num\_layers}, N, H_{out})` and
        :math:`(D \cdot \text{num\_layers}, N, H_{cell})`; output :math:`(L, N, D \cdot H_{out})`.

    Raises:
        ValueError: If a rate is outside ``[0, 1]``, ``mode`` is unknown, or ``mode="classic"`` is combined with
            ``recurrent_dropout > 0``.

    Example:
        >>> lstm = LSTM(8, 16, num_layers=2, dropout=0.25, recurrent_dropout=0.25, seed=0)
        >>> out, (h, c) = lstm(torch.randn(5, 3, 8))
        >>> out.shape, h.shape, c.shape
        (torch.Size([5, 3, 16]), torch.Size([2, 3, 16]), torch.Size([2, 3, 16]))
        >>> ref = torch.nn.LSTM(8, 16, num_layers=2)
        >>> _ = ref.load_state_dict(lstm.state_dict())
        >>> x = torch.randn(5, 3, 8)
        >>> torch.equal(lstm.eval()(x)[0], ref(x)[0])
        True

    References:
        Gal & Ghahramani, "A Theoretically Grounded Application of Dropout in Recurrent Neural Networks",
        NeurIPS 2016, https://arxiv.org/abs/1512.05287
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        recurrent_dropout: float = 0.0,
        output_dropout: float = 0.0,
        zoneout_h: float = 0.0,
        zoneout_c: float = 0.0,
        mode: str = "inverted",
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers=num_layers,
            bias=bias,
            batch_first=batch_first,
            dropout=0.0,  # torch's between-layer dropout is replaced by ours (and its warning with it)
            bidirectional=bidirectional,
            proj_size=proj_size,
            device=device,
            dtype=dtype,
        )
        self._setup(dropout, recurrent_dropout, output_dropout, mode, seed, generator, zoneout_h, zoneout_c)


class GRU(_VariationalRNN, nn.GRU):
    r"""``torch.nn.GRU`` with variational (Gal & Ghahramani) input, recurrent and output dropout.

    Masks as in :class:`LSTM`; the recurrent mask multiplies the state that enters :math:`W_{hh}`, the carry is
    unmasked (Keras' ``GRU`` with ``reset_after=True``, which is torch's GRU):

    .. math::

        \begin{aligned}
        r_t, z_t &= \sigma\big(\tilde x_t W_{i\{r,z\}}^T + b_{i\{r,z\}} + \tilde h_{t-1} W_{h\{r,z\}}^T
            + b_{h\{r,z\}}\big) \\
        n_t &= \tanh\big(\tilde x_t W_{in}^T + b_{in} + r_t \odot (\tilde h_{t-1} W_{hn}^T + b_{hn})\big), \qquad
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}
        \end{aligned}

    with :math:`\tilde x_t = x_t \odot m^{x,l}` and :math:`\tilde h_{t-1} = h_{t-1} \odot m^{h,l,d}`. With
    every rate 0, or in eval (without zoneout), this is exactly ``torch.nn.GRU``.

    Args:
        input_size: The number of expected features in the input ``x``.
        hidden_size: The number of features in the hidden state ``h``.
        num_layers: Number of stacked recurrent layers. Default: ``1``.
        bias: If ``False``, the layers use no bias weights ``b_ih`` and ``b_hh``. Default: ``True``.
        batch_first: If ``True``, input and output tensors are ``(batch, seq, feature)``. Default: ``False``.
        dropout: Variational dropout rate on **each layer's input** (the first layer's ``x`` included): one mask
            per sequence and layer, shared by all time steps. Unlike ``torch.nn.GRU``'s per-step dropout
            between layers. Default: ``0.0``.
        bidirectional: If ``True``, becomes a bidirectional GRU. Default: ``False``.
        device: Device of the parameters.
        dtype: dtype of the parameters.
        recurrent_dropout: Variational dropout rate on the hidden state fed back into the recurrence
            (keyword-only; Keras' ``recurrent_dropout``). Runs a step loop, not the fused kernel. Default: ``0.0``.
        output_dropout: Variational dropout rate on the last layer's output sequence (keyword-only). The final
            states ``h_n`` are not masked. Default: ``0.0``.
        zoneout_h: Zoneout rate of the hidden state (keyword-only; Krueger et al. 2016): each unit keeps its
            previous value with this probability at each step in training, the expectation in eval (so eval
            runs the step loop too, and differs from ``torch.nn.GRU``). Default: ``0.0``.
        mode: ``"inverted"`` (kept units scaled by :math:`1/(1-p)`, eval untouched) or ``"classic"`` (no scaling
            in training, inputs and outputs scaled by :math:`1-p` in eval; not with ``recurrent_dropout``).
            Keyword-only. Default: ``"inverted"``.
        seed: Seed of the module's own generator: reproducible, advancing masks (keyword-only).
        generator: A generator to draw each call's seed from (keyword-only). Default: torch's CPU generator.
    Shape:
        As ``torch.nn.GRU``.

    Raises:
        ValueError: If a rate is outside ``[0, 1]``, ``mode`` is unknown, or ``mode="classic"`` is combined with
            ``recurrent_dropout > 0``.

    Example:
        >>> gru = GRU(4, 6, batch_first=True, bidirectional=True, recurrent_dropout=0.5, seed=0)
        >>> out, h = gru(torch.randn(2, 7, 4))
        >>> out.shape, h.shape
        (torch.Size([2, 7, 12]), torch.Size([2, 2, 6]))

    References:
        Gal & Ghahramani, "A Theoretically Grounded Application of Dropout in Recurrent Neural Networks",
        NeurIPS 2016, https://arxiv.org/abs/1512.05287
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        recurrent_dropout: float = 0.0,
        output_dropout: float = 0.0,
        zoneout_h: float = 0.0,
        mode: str = "inverted",
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(
            input_size,
            hidden_size,
            num_layers=num_layers,
            bias=bias,
            batch_first=batch_first,
            dropout=0.0,
            bidirectional=bidirectional,
            device=device,
            dtype=dtype,
        )
        self._setup(dropout, recurrent_dropout, output_dropout, mode, seed, generator, zoneout_h)


class ZoneoutLSTMCell(nn.LSTMCell):
    r"""``torch.nn.LSTMCell`` with zoneout: states randomly keep their previous value (Krueger et al. 2016).

    The cell computes :math:`(\tilde h_t, \tilde c_t)` as ``torch.nn.LSTMCell`` does, then

    .. math::

        c_t = d^c_t \odot c_{t-1} + (1 - d^c_t) \odot \tilde c_t, \qquad
        h_t = d^h_t \odot h_{t-1} + (1 - d^h_t) \odot \tilde h_t

    with fresh :math:`d^c_t \sim \mathrm{Bernoulli}(z_c)`, :math:`d^h_t \sim \mathrm{Bernoulli}(z_h)` per element
    and call (each call is one time step). In eval the masks are replaced by their expectations
    (:func:`dropkit.functional.zoneout`). With both rates 0 it is exactly ``torch.nn.LSTMCell``; parameters and
    ``state_dict`` are those of ``torch.nn.LSTMCell``.

    Args:
        input_size: The number of expected features in the input.
        hidden_size: The number of features in the hidden state.
        bias: If ``False``, no bias weights. Default: ``True``.
        device: Device of the parameters.
        dtype: dtype of the parameters.
        zoneout_h: Probability that a hidden unit keeps its previous value (keyword-only). Default: ``0.05``.
        zoneout_c: Probability that a cell unit keeps its previous value (keyword-only). Default: ``0.5``
            (the paper's best character-level setting, :math:`z_c = 0.5, z_h = 0.05`).
        seed: Seed of the module's own generator (keyword-only).
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Shape:
        As ``torch.nn.LSTMCell``: input :math:`(N, H_{in})` or :math:`(H_{in})`; ``(h, c)`` :math:`(N, H)`.

    Raises:
        ValueError: If ``zoneout_h`` or ``zoneout_c`` is outside ``[0, 1]``.

    Example:
        >>> cell = ZoneoutLSTMCell(3, 5, zoneout_h=0.1, zoneout_c=0.5, seed=0)
        >>> h, c = cell(torch.randn(2, 3))
        >>> h.shape, c.shape
        (torch.Size([2, 5]), torch.Size([2, 5]))

    References:
        Krueger et al., "Zoneout: Regularizing RNNs by Randomly Preserving Hidden Activations", ICLR 2017,
        https://arxiv.org/abs/1606.01305
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        zoneout_h: float = 0.05,
        zoneout_c: float = 0.5,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size, bias=bias, device=device, dtype=dtype)
        self.zoneout_h = _validate.rate("ZoneoutLSTMCell", "zoneout_h", zoneout_h)
        self.zoneout_c = _validate.rate("ZoneoutLSTMCell", "zoneout_c", zoneout_c)
        self.seed = seed
        self.generator = rng._own_generator(self, "ZoneoutLSTMCell", seed, generator)

    def forward(self, input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Step the cell once; zoneout is dropout applied to the state update (MC dropout turns it on in eval)."""
        if (leaf := fx_leaf_call(self, input, hx)) is not None:  # torch.fx: one call_module node
            return leaf
        h, c = super().forward(input, hx)
        if hx is None:
            h_prev = c_prev = torch.zeros_like(h)
        else:
            h_prev, c_prev = hx
        training = self.training or F._forced_training
        c = F.zoneout(c, c_prev, self.zoneout_c, training, generator=self.generator)
        h = F.zoneout(h, h_prev, self.zoneout_h, training, generator=self.generator)
        return h, c

    def extra_repr(self) -> str:
        """Describe the hyperparameters: torch's, then the zoneout rates."""
        s = super().extra_repr() + f", zoneout_h={self.zoneout_h}, zoneout_c={self.zoneout_c}"
        return s + ("" if self.seed is None else f", seed={self.seed}")


class WeightDrop(nn.Module):
    r"""DropConnect on named weights of any module, e.g. the hidden-to-hidden matrices of a torch RNN (AWD-LSTM).

    In training each call draws one mask per listed weight and runs the wrapped module with the masked weights
    passed in functionally (:func:`torch.func.functional_call`):

    .. math:: \tilde W = \frac{M \odot W}{1 - p}, \qquad M_{ij} \sim \mathrm{Bernoulli}(1 - p)

    (``variational=True``: one draw per row, :math:`M_{ij} = M_i`, which for ``weight_hh`` drops a gate unit's
    whole recurrent input, as AWD-LSTM's ``variational`` flag). The mask is the same for every time step of
    the call. In eval the module runs with its own weights. The parameters stay the wrapped module's own
    (``state_dict`` keys ``module.<name>``), so ``.to()``, ``.half()``, ``load_state_dict`` and optimisers
    work as for the bare module, torch's fused RNN kernel is kept, and no ``flatten_parameters`` hack or
    non-contiguous-weight warning is involved. The mask is regenerated from its seed in backward.

    Args:
        module: The module to wrap (``torch.nn.LSTM``, ``GRU``, ``RNN``, ``Linear``, ...).
        weights: Names of the parameters to drop, e.g. ``["weight_hh_l0"]`` (dotted names reach submodules).
        p: Probability of dropping a weight. Must satisfy ``0 <= p <= 1``. Default: ``0.5``.
        variational: Drop whole rows instead of single weights. Default: ``False``.
        dropout: AWD-LSTM's spelling of ``p`` (keyword-only, exclusive with ``p``). Default: ``None``.
        seed: Seed of the module's own generator (keyword-only).
        generator: A generator to draw seeds from (keyword-only). Default: torch's global CPU generator.

    Raises:
        TypeError: If ``module`` is not a ``torch.nn.Module`` or ``weights`` is not a list of names.
        ValueError: If ``p`` is outside ``[0, 1]`` or a name is not a parameter of ``module``.

    Example:
        >>> rnn = WeightDrop(torch.nn.LSTM(4, 8), ["weight_hh_l0"], p=0.5)
        >>> out, (h, c) = rnn(torch.randn(6, 2, 4))
        >>> out.shape
        torch.Size([6, 2, 8])
        >>> sorted(rnn.state_dict())[:2]
        ['module.bias_hh_l0', 'module.bias_ih_l0']

    References:
        Wan et al., "Regularization of Neural Networks using DropConnect", ICML 2013;
        Merity et al., "Regularizing and Optimizing LSTM Language Models", ICLR 2018,
        https://arxiv.org/abs/1708.02182
    """

    def __init__(
        self,
        module: nn.Module,
        weights: list[str],
        p: float = 0.5,
        variational: bool = False,
        *,
        dropout: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _validate.module("WeightDrop", module)
        self.weights = _validate.weight_names("WeightDrop", weights, [n for n, _ in module.named_parameters()])
        if dropout is not None:
            if p != 0.5:
                raise ValueError(f"WeightDrop: pass either p or dropout, not both, but got p={p!r} and "
                                 f"dropout={dropout!r}.")  # fmt: skip
            p = dropout
        self.p = _validate.rate("WeightDrop", "p", p)
        self.variational = bool(variational)
        self.seed = seed
        self.generator = rng._own_generator(self, "WeightDrop", seed, generator)
        self.module = module

    #: One mask per forward for every row of the batch: :func:`dropkit.mc.predict` must not stack MC samples.
    shares_mask_across_batch = True

    def forward(self, *args, **kwargs):
        """Run the wrapped module, with masked weights in training."""
        if (leaf := fx_leaf_call(self, *args, **kwargs)) is not None:  # torch.fx: one call_module node
            return leaf
        training = self.training or F._forced_training
        p = _validate.rate("WeightDrop", "p", self.p)
        if not training or p == 0.0:
            return self.module(*args, **kwargs)
        seed = F._seed(None, self.generator)
        scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
        params = dict(self.module.named_parameters())
        masked, offset = {}, 0
        for name in self.weights:
            weight = params[name]
            mask_dims = 1 if self.variational else -1
            spec = MaskSpec(seed, offset, F._threshold(p), scale, mask_dims=mask_dims)
            masked[name] = F._apply_mask(weight, spec)
            offset += weight.shape[0] if self.variational and weight.dim() else weight.numel()
        return torch.func.functional_call(self.module, masked, args, kwargs, strict=False)

    def extra_repr(self) -> str:
        """Describe the dropped weights and the rate."""
        s = f"weights={self.weights}, p={self.p}"
        if self.variational:
            s += ", variational=True"
        return s + ("" if self.seed is None else f", seed={self.seed}")


def weight_drop(
    module: nn.Module,
    weights: list[str],
    p: float = 0.5,
    variational: bool = False,
    *,
    dropout: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
) -> WeightDrop:
    """Wrap ``module`` so that the named weights get DropConnect in training; see :class:`WeightDrop`.

    Args:
        module: The module to wrap.
        weights: Names of the parameters to drop, e.g. ``["weight_hh_l0"]``.
        p: Probability of dropping a weight. Default: ``0.5``.
        variational: Drop whole rows instead of single weights. Default: ``False``.
        dropout: AWD-LSTM's spelling of ``p`` (keyword-only). Default: ``None``.
        seed: Seed of the wrapper's own generator (keyword-only).
        generator: A generator to draw seeds from (keyword-only).

    Returns:
        A :class:`WeightDrop` holding ``module``.

    Example:
        >>> rnn = weight_drop(torch.nn.GRU(3, 5), weights=["weight_hh_l0"], p=0.3)
        >>> rnn(torch.randn(4, 1, 3))[0].shape
        torch.Size([4, 1, 5])
    """
    return WeightDrop(module, weights, p, variational, dropout=dropout, seed=seed, generator=generator)
