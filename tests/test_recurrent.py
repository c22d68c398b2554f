"""Recurrent dropout: variational LSTM / GRU, WeightDrop, zoneout (issue 5)."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import sys
import warnings
from pathlib import Path

import pytest
import torch
from scipy import stats
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import dropkit.nn as dnn
from dropkit import functional as F
from dropkit import mc, rng
from dropkit.nn import recurrent

KINDS = ["LSTM", "GRU"]
DOUBLE = torch.float64


def _pair(kind: str, *args, dtype=DOUBLE, **kwargs):
    """Return (torch module, dropkit module) with the same weights; dropkit-only keywords go to the second."""
    extra = {k: kwargs.pop(k) for k in list(kwargs) if k in ("recurrent_dropout", "output_dropout", "mode", "seed")}
    rate = kwargs.pop("dropout", 0.0)
    ref = getattr(torch.nn, kind)(*args, **kwargs).to(dtype)
    ours = getattr(dnn, kind)(*args, dropout=rate, **kwargs, **extra).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _hx(kind, layers, batch, out_size, cell_size=None, dtype=DOUBLE, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(layers, batch, out_size, generator=g, dtype=dtype)
    if kind == "GRU":
        return h
    return h, torch.randn(layers, batch, cell_size or out_size, generator=g, dtype=dtype)


def _flat(result):
    """Concatenate an RNN's (output, hidden) into one tensor for comparisons."""
    out, hidden = result
    out = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
    hidden = hidden if isinstance(hidden, torch.Tensor) else torch.cat([h.reshape(-1) for h in hidden])
    return torch.cat([out.reshape(-1), hidden.reshape(-1)])


CONFIGS = [
    pytest.param(dict(num_layers=1), id="1layer"),
    pytest.param(dict(num_layers=2), id="2layers"),
    pytest.param(dict(num_layers=2, bidirectional=True), id="2layers-bi"),
    pytest.param(dict(num_layers=2, batch_first=True), id="batch_first"),
    pytest.param(dict(num_layers=1, bias=False), id="no-bias"),
]


# ----------------------------------------------------------------------------------- torch compatibility


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("config", CONFIGS)
def test_rnn_eval_equals_torch_exactly(kind, config):
    ref, ours = _pair(kind, 5, 7, dropout=0.5, recurrent_dropout=0.5, output_dropout=0.5, dtype=torch.float32, **config)
    ref.eval(), ours.eval()
    x = torch.randn(3, 6, 5) if config.get("batch_first") else torch.randn(6, 3, 5)
    layers = config["num_layers"] * (2 if config.get("bidirectional") else 1)
    hx = _hx(kind, layers, 3, 7, dtype=torch.float32)
    assert torch.equal(_flat(ours(x, hx)), _flat(ref(x, hx)))
    assert torch.equal(_flat(ours(x)), _flat(ref(x)))


@pytest.mark.parametrize("kind", KINDS)
def test_rnn_rates_zero_in_training_equals_torch_exactly(kind):
    ref, ours = _pair(kind, 5, 7, num_layers=2, dtype=torch.float32)
    x = torch.randn(6, 3, 5)
    assert torch.equal(_flat(ours.train()(x)), _flat(ref.train()(x)))


def test_lstm_proj_size_eval_equals_torch_exactly():
    ref, ours = _pair("LSTM", 5, 7, num_layers=2, proj_size=3, dropout=0.3, recurrent_dropout=0.3)
    ref.eval(), ours.eval()
    x = torch.randn(6, 3, 5, dtype=DOUBLE)
    hx = _hx("LSTM", 2, 3, 3, 7)
    assert torch.equal(_flat(ours(x, hx)), _flat(ref(x, hx)))


@pytest.mark.parametrize("kind", KINDS)
def test_rnn_state_dict_round_trips_with_torch(kind):
    ref = getattr(torch.nn, kind)(4, 6, num_layers=2, bidirectional=True)
    ours = getattr(dnn, kind)(4, 6, num_layers=2, bidirectional=True, dropout=0.2, recurrent_dropout=0.2)
    assert isinstance(ours, getattr(torch.nn, kind))
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    back = getattr(torch.nn, kind)(4, 6, num_layers=2, bidirectional=True)
    back.load_state_dict(ours.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ref.state_dict().values(), strict=True))


@pytest.mark.parametrize("kind", KINDS)
def test_rnn_unbatched_input_matches_batch_of_one(kind):
    ours = getattr(dnn, kind)(4, 5, recurrent_dropout=0.5, dropout=0.5, seed=3).double()
    x = torch.randn(6, 4, dtype=DOUBLE)
    hx = _hx(kind, 1, 1, 5)
    unbatched_hx = hx.squeeze(1) if kind == "GRU" else tuple(h.squeeze(1) for h in hx)
    out, hidden = ours(x, unbatched_hx)
    ours.generator.manual_seed(3)
    out1, hidden1 = ours(x.unsqueeze(1), hx)
    assert out.shape == (6, 5)
    assert torch.equal(out, out1.squeeze(1))
    assert torch.equal(_flat((out, hidden)), _flat((out1.squeeze(1), hidden1)))


# ------------------------------------------------------------------------ the masked paths are the RNN


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq-first", "batch-first"])
def test_rnn_masked_paths_compute_torch_recurrence(kind, bidirectional, packed, batch_first):
    # a rate so small that nothing is dropped and the scale rounds to 1: the step loop (recurrent dropout)
    # and the per-layer fused path (input/output dropout) must then compute torch's recurrence
    tiny = 1e-15
    assert rng.keep_threshold(tiny) <= 1
    config = dict(num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    ref, loop = _pair(kind, 4, 5, recurrent_dropout=tiny, **config)
    _, fused = _pair(kind, 4, 5, dropout=tiny, output_dropout=tiny, **config)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(3, 6, 4, dtype=DOUBLE) if batch_first else torch.randn(6, 3, 4, dtype=DOUBLE)
    hx = _hx(kind, 4 if bidirectional else 2, 3, 5)
    inp = pack_padded_sequence(x, torch.tensor([4, 6, 2]), batch_first, enforce_sorted=False) if packed else x
    expected = _flat(ref(inp, hx))
    torch.testing.assert_close(_flat(loop(inp, hx)), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_flat(fused(inp, hx)), expected, rtol=1e-12, atol=1e-12)


def test_lstm_proj_size_step_loop_computes_torch_recurrence():
    ref, ours = _pair("LSTM", 4, 6, num_layers=2, proj_size=3, bidirectional=True, recurrent_dropout=1e-15)
    x = torch.randn(5, 2, 4, dtype=DOUBLE)
    hx = _hx("LSTM", 4, 2, 3, 6)
    torch.testing.assert_close(_flat(ours(x, hx)), _flat(ref(x, hx)), rtol=1e-12, atol=1e-12)


def _lstm_ref(x, hx, weights, in_masks, rec_masks, out_mask, layers, directions):
    """Step-by-step LSTM oracle (time-major, padded) that applies the given variational masks."""
    h0, c0 = hx
    per = len(weights) // (layers * directions)
    h_n, c_n = [], []
    for layer in range(layers):
        if in_masks[layer] is not None:
            x = x * in_masks[layer]
        outs = []
        for d in range(directions):
            w_ih, w_hh, b_ih, b_hh = weights[(layer * directions + d) * per :][:4]
            h, c = h0[layer * directions + d], c0[layer * directions + d]
            m = rec_masks[layer][d]
            steps = range(x.shape[0] - 1, -1, -1) if d else range(x.shape[0])
            out = [None] * x.shape[0]
            for t in steps:
                fed = h if m is None else h * m
                i, f, g, o = (x[t] @ w_ih.T + b_ih + fed @ w_hh.T + b_hh).chunk(4, 1)
                c = f.sigmoid() * c + i.sigmoid() * g.tanh()
                h = o.sigmoid() * c.tanh()
                out[t] = h
            outs.append(torch.stack(out))
            h_n.append(h)
            c_n.append(c)
        x = torch.cat(outs, -1)
    if out_mask is not None:
        x = x * out_mask
    return x, (torch.stack(h_n), torch.stack(c_n))


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_lstm_masks_constant_over_time_match_oracle(bidirectional):
    # the oracle draws one mask per (sequence, layer, direction) and reuses it at every step: equality with the
    # module proves the module's masks are constant over time; the masks come from the seed the module draws
    layers, directions, n = 2, 2 if bidirectional else 1, 4
    _, ours = _pair("LSTM", 3, 5, num_layers=layers, bidirectional=bidirectional, dropout=0.4, recurrent_dropout=0.3,
                    output_dropout=0.2, seed=11)  # fmt: skip
    x = torch.randn(7, n, 3, dtype=DOUBLE)
    hx = _hx("LSTM", layers * directions, n, 5)
    seed = rng.draw_seed(torch.Generator().manual_seed(11))
    masks = recurrent._Masks(seed, "inverted", x, None)
    in_masks, rec_masks = [], []
    for layer in range(layers):
        in_masks.append(masks.draw(0.4, n, 3 if layer == 0 else 5 * directions))
        rec_masks.append([masks.draw(0.3, n, 5) for _ in range(directions)])
    out_mask = masks.draw(0.2, n, 5 * directions)
    expected = _lstm_ref(x, hx, ours._flat_weights, in_masks, rec_masks, out_mask, layers, directions)
    torch.testing.assert_close(_flat(ours(x, hx)), _flat(expected), rtol=1e-10, atol=1e-10)
    # the masks differ across sequences, layers and directions
    all_rec = [m for per_layer in rec_masks for m in per_layer]
    assert all(not torch.equal(a, b) for a, b in itertools.combinations(all_rec, 2))
    assert not torch.equal(in_masks[1][0], in_masks[1][1])
    assert not torch.equal(all_rec[0][0], all_rec[0][1])


@pytest.mark.parametrize("kind", KINDS)
def test_rnn_input_mask_is_constant_over_time_and_differs_across_sequences(kind):
    # observed through the gradient: x[t, n, f] reaches the RNN only as x[t, n, f] * m[n, f]
    ours = getattr(dnn, kind)(16, 8, dropout=0.5, seed=0).double()
    x = torch.randn(9, 6, 16, dtype=DOUBLE, requires_grad=True)
    ours(x)[0].sum().backward()
    dropped = x.grad == 0
    assert torch.equal(dropped, dropped[:1].expand_as(dropped))  # the same at every time step
    assert 0 < dropped[0].sum() < dropped[0].numel()
    assert all(not torch.equal(dropped[0, a], dropped[0, b]) for a, b in itertools.combinations(range(6), 2))


def test_lstm_recurrent_mask_differs_across_sequences_and_layers():
    # h0 reaches an LSTM layer only through (h0 * m) W_hh^T, so h0.grad is 0 exactly where the mask is
    ours = dnn.LSTM(4, 32, num_layers=2, recurrent_dropout=0.5, seed=1).double()
    h0 = torch.randn(2, 5, 32, dtype=DOUBLE, requires_grad=True)
    c0 = torch.zeros(2, 5, 32, dtype=DOUBLE)
    ours(torch.randn(6, 5, 4, dtype=DOUBLE), (h0, c0))[0].sum().backward()
    dropped = h0.grad == 0
    assert not torch.equal(dropped[0], dropped[1])  # layers
    assert all(not torch.equal(dropped[0, a], dropped[0, b]) for a, b in itertools.combinations(range(5), 2))


@pytest.mark.statistical
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_rnn_input_mask_drop_fraction_is_binomial(p):
    for seed in range(3):
        ours = dnn.LSTM(64, 4, dropout=p, seed=seed)
        x = torch.randn(2, 50, 64, requires_grad=True)
        ours(x)[0].sum().backward()
        k, n = int((x.grad[0] == 0).sum()), x.grad[0].numel()
        assert stats.binomtest(k, n, p).pvalue > 0.01, (seed, k, n)


def test_rnn_kept_units_are_scaled_by_inverse_keep_probability():
    # a linear read-out of the masked input: one layer, identity-like path through the gradient
    ours = dnn.GRU(8, 3, dropout=0.75, seed=2).double()
    ref = torch.nn.GRU(8, 3).double()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 4, 8, dtype=DOUBLE, requires_grad=True)
    ours(x)[0].sum().backward()
    kept = (x.grad != 0).to(DOUBLE)
    ours.generator.manual_seed(2)
    torch.testing.assert_close(ours(x)[0], ref(x * kept[:1] * 4.0)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("zoneout", [False, True], ids=["dropout", "zoneout"])
@pytest.mark.parametrize("kind", KINDS)
def test_rnn_packed_gets_the_masks_of_its_padded_form(kind, zoneout):
    rates = dict(dropout=0.3, recurrent_dropout=0.3, output_dropout=0.3)
    if zoneout:
        rates = dict(zoneout_h=0.3, zoneout_c=0.3) if kind == "LSTM" else dict(zoneout_h=0.3)
    ours = getattr(dnn, kind)(4, 5, num_layers=2, seed=5, **rates).double()
    x = torch.randn(6, 3, 4, dtype=DOUBLE)
    lengths = torch.tensor([4, 6, 2])
    packed_out, _ = ours(pack_padded_sequence(x, lengths, enforce_sorted=False))
    ours.generator.manual_seed(5)
    padded_out, _ = ours(x)
    unpacked, _ = pad_packed_sequence(packed_out)
    for n, length in enumerate(lengths.tolist()):
        torch.testing.assert_close(unpacked[:length, n], padded_out[:length, n], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_rnn_shapes_bidirectional_multilayer_batch_first(kind):
    ours = getattr(dnn, kind)(4, 6, num_layers=3, bidirectional=True, batch_first=True, dropout=0.2,
                              recurrent_dropout=0.2, output_dropout=0.2)  # fmt: skip
    out, hidden = ours(torch.randn(2, 7, 4))
    assert out.shape == (2, 7, 12)
    for h in (hidden,) if kind == "GRU" else hidden:
        assert h.shape == (6, 2, 6)


def test_lstm_proj_size_shapes_with_recurrent_dropout():
    out, (h, c) = dnn.LSTM(4, 6, num_layers=2, proj_size=3, bidirectional=True, recurrent_dropout=0.5)(
        torch.randn(5, 2, 4)
    )
    assert out.shape == (5, 2, 6) and h.shape == (4, 2, 3) and c.shape == (4, 2, 6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layers", [1, 3])
def test_rnn_masked_paths_on_device_match_cpu_without_weight_warnings(kind, device, layers):
    # on CUDA, each layer of a deeper module gets a cuDNN chunk of its own, so cuDNN never warns about
    # non-contiguous weights
    cpu = getattr(dnn, kind)(4, 5, num_layers=layers, bidirectional=True, dropout=0.3, output_dropout=0.3, seed=4)
    other = copy.deepcopy(cpu).to(device)
    x = torch.randn(6, 3, 4)
    # cuDNN's RNNs default to TF32 matmuls (about 1e-3 relative error): compare in full fp32
    with warnings.catch_warnings(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        warnings.simplefilter("error")
        out = other(x.to(device))[0]
        out.sum().backward()
    torch.testing.assert_close(out.cpu(), cpu(x)[0], rtol=1e-4, atol=1e-5)
    assert getattr(other, f"weight_hh_l{layers - 1}").grad is not None


# ---------------------------------------------------------------------------------------------- RNG


@pytest.mark.parametrize("kind", KINDS)
def test_rnn_seeds_reproduce_and_successive_calls_differ(kind):
    x = torch.randn(5, 3, 4)
    a = getattr(dnn, kind)(4, 6, dropout=0.5, recurrent_dropout=0.5, seed=7)
    b = copy.deepcopy(a)
    first, second = a(x)[0], a(x)[0]
    assert not torch.equal(first, second)
    assert torch.equal(b(x)[0], first)
    c = copy.deepcopy(a)
    c.generator = None
    torch.manual_seed(3)
    y1 = c(x)[0]
    torch.manual_seed(3)
    assert torch.equal(c(x)[0], y1)


@pytest.mark.parametrize("kind", KINDS)
def test_rnn_mc_dropout_switches_masks_on_in_eval(kind):
    model = torch.nn.Sequential(getattr(dnn, kind)(4, 6, recurrent_dropout=0.5)).eval()
    x = torch.randn(5, 3, 4)
    ref = getattr(torch.nn, kind)(4, 6).eval()
    ref.load_state_dict(model[0].state_dict())
    assert torch.equal(model[0](x)[0], ref(x)[0])
    with mc.mc_dropout(model):
        a, b = model[0](x)[0], model[0](x)[0]
    assert not torch.equal(a, b)
    assert not model[0].training
    assert torch.equal(model[0](x)[0], ref(x)[0])


def test_lstm_classic_mode_scales_inputs_and_outputs_in_eval():
    ours = dnn.LSTM(4, 5, dropout=0.25, output_dropout=0.5, mode="classic").double().eval()
    ref = torch.nn.LSTM(4, 5).double()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(6, 2, 4, dtype=DOUBLE)
    out, (h, c) = ours(x)
    ref_out, (ref_h, ref_c) = ref(x * 0.75)
    torch.testing.assert_close(out, ref_out * 0.5, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(h, ref_h, rtol=1e-12, atol=1e-12)


def test_lstm_p_one_zeroes_the_input():
    ours = dnn.LSTM(4, 5, dropout=1.0, seed=0)
    ref = torch.nn.LSTM(4, 5)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(6, 2, 4)
    assert torch.equal(ours(x)[0], ref(torch.zeros_like(x))[0])


# ------------------------------------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_rnn_gradcheck_float64(kind, bidirectional):
    ours = getattr(dnn, kind)(3, 4, num_layers=2, bidirectional=bidirectional, dropout=0.3, recurrent_dropout=0.3,
                              output_dropout=0.3, seed=0).double()  # fmt: skip
    x = torch.randn(4, 2, 3, dtype=DOUBLE, requires_grad=True)
    h0 = torch.randn(4 if bidirectional else 2, 2, 4, dtype=DOUBLE, requires_grad=True)
    weights = list(ours.parameters())[:4]

    def fn(x, h0, *ws):
        ours.generator.manual_seed(0)
        params = dict(zip([n for n, _ in ours.named_parameters()][:4], ws, strict=True))
        hx = h0 if kind == "GRU" else (h0, torch.zeros_like(h0))
        out, hidden = torch.func.functional_call(ours, params, (x, hx))
        return out, hidden if kind == "GRU" else hidden[1]

    assert torch.autograd.gradcheck(fn, (x, h0, *weights))


def test_weight_drop_and_zoneout_gradcheck_float64():
    wd = dnn.WeightDrop(torch.nn.LSTM(3, 4).double(), ["weight_hh_l0"], p=0.5, seed=0)
    x = torch.randn(4, 2, 3, dtype=DOUBLE, requires_grad=True)
    w = wd.module.weight_hh_l0

    def run_wd(x, w):
        wd.generator.manual_seed(0)
        return torch.func.functional_call(wd, {"module.weight_hh_l0": w}, (x,))[0]

    assert torch.autograd.gradcheck(run_wd, (x, w))
    cell = dnn.ZoneoutLSTMCell(3, 4, zoneout_h=0.3, zoneout_c=0.3, seed=0).double()
    h = torch.randn(2, 4, dtype=DOUBLE, requires_grad=True)
    c = torch.randn(2, 4, dtype=DOUBLE, requires_grad=True)

    def run_cell(x, h, c):
        cell.generator.manual_seed(0)
        return cell(x, (h, c))

    assert torch.autograd.gradcheck(run_cell, (x[0], h, c))


# ------------------------------------------------------------------------------------------ WeightDrop


def test_weight_drop_eval_is_the_module_and_training_masks_weight_hh_only():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 8)
    ref = copy.deepcopy(lstm)
    wd = dnn.weight_drop(lstm, weights=["weight_hh_l0"], p=0.5, seed=0)
    x = torch.randn(6, 3, 4)
    assert torch.equal(wd.eval()(x)[0], ref(x)[0])
    wd.train()
    out = wd(x)[0]
    # AWD-LSTM's own check: h0 = 0, so step 0 does not see W_hh; later steps do
    assert torch.equal(out[0], ref(x)[0][0])
    assert not torch.allclose(out[1:], ref(x)[0][1:])
    out.sum().backward()
    kept = lstm.weight_hh_l0.grad != 0
    assert 0.3 < kept.float().mean() < 0.7
    masked = copy.deepcopy(ref)
    with torch.no_grad():
        masked.weight_hh_l0.mul_(kept * 2.0)
    wd.generator.manual_seed(0)
    torch.testing.assert_close(wd(x)[0], masked(x)[0])


@pytest.mark.statistical
def test_weight_drop_variational_drops_whole_rows():
    lstm = torch.nn.LSTM(4, 16)
    wd = dnn.WeightDrop(lstm, ["weight_hh_l0"], 0.5, variational=True, seed=3)
    wd(torch.randn(5, 2, 4))[0].sum().backward()
    rows = (lstm.weight_hh_l0.grad != 0).any(1)
    assert torch.equal(lstm.weight_hh_l0.grad != 0, rows[:, None].expand(-1, 16))
    k = int((~rows).sum())
    assert stats.binomtest(k, 64, 0.5).pvalue > 0.01


def test_weight_drop_no_warnings_state_dict_to_half_and_linear():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wd = dnn.WeightDrop(torch.nn.LSTM(4, 8, num_layers=2), ["weight_hh_l0", "weight_hh_l1"], dropout=0.3)
        x = torch.randn(5, 2, 4)
        wd(x)[0].sum().backward()
        state = wd.state_dict()
        assert "module.weight_hh_l0" in state and not any(k.endswith("_raw") for k in state)
        other = dnn.WeightDrop(torch.nn.LSTM(4, 8, num_layers=2), ["weight_hh_l0", "weight_hh_l1"], dropout=0.3)
        other.load_state_dict(state)
        assert torch.equal(other.eval()(x)[0], wd.eval()(x)[0])
        wd.train().to(DOUBLE)
        assert wd(x.double())[0].dtype == DOUBLE
        bf = dnn.WeightDrop(torch.nn.GRU(4, 8), ["weight_hh_l0"], 0.5).to(torch.bfloat16)
        assert bf(x.to(torch.bfloat16))[0].dtype == torch.bfloat16
        half = dnn.WeightDrop(torch.nn.Linear(4, 4), ["weight"], 0.5).half()
        assert half.module.weight.dtype == torch.float16
        lin = dnn.WeightDrop(torch.nn.Linear(10, 10), ["weight"], dropout=0.9)
        y = torch.randn(2, 1, 10)
        assert not torch.equal(lin(y), lin(y))


def test_weight_drop_mc_dropout_switches_it_on():
    model = torch.nn.Sequential(dnn.WeightDrop(torch.nn.Linear(6, 6), ["weight"], 0.5)).eval()
    x = torch.randn(3, 6)
    assert torch.equal(model(x), model(x))
    with mc.mc_dropout(model):
        assert not torch.equal(model(x), model(x))


# --------------------------------------------------------------------------------------------- zoneout


def test_zoneout_cell_rates_zero_is_lstm_cell_and_eval_is_expectation():
    cell = dnn.ZoneoutLSTMCell(3, 4, zoneout_h=0.0, zoneout_c=0.0)
    ref = torch.nn.LSTMCell(3, 4)
    ref.load_state_dict(cell.state_dict())
    x, h, c = torch.randn(2, 3), torch.randn(2, 4), torch.randn(2, 4)
    assert all(torch.equal(a, b) for a, b in zip(cell(x, (h, c)), ref(x, (h, c)), strict=True))
    cell.zoneout_h, cell.zoneout_c = 0.2, 0.6
    cell.eval()
    new_h, new_c = ref(x, (h, c))
    out_h, out_c = cell(x, (h, c))
    torch.testing.assert_close(out_h, 0.2 * h + 0.8 * new_h)
    torch.testing.assert_close(out_c, 0.6 * c + 0.4 * new_c)


@pytest.mark.statistical
def test_zoneout_cell_keeps_previous_values_with_probability_z():
    cell = dnn.ZoneoutLSTMCell(3, 200, zoneout_h=0.3, zoneout_c=0.6, seed=0)
    ref = torch.nn.LSTMCell(3, 200)
    ref.load_state_dict(cell.state_dict())
    x, h, c = torch.randn(50, 3), torch.randn(50, 200), torch.randn(50, 200)
    new_h, new_c = ref(x, (h, c))
    out_h, out_c = cell(x, (h, c))
    for out, prev, new, z in ((out_h, h, new_h, 0.3), (out_c, c, new_c, 0.6)):
        kept, updated = out == prev, out == new
        assert bool((kept | updated).all())
        k = int(kept.sum())
        assert stats.binomtest(k, out.numel(), z).pvalue > 0.01
    again_h, _ = cell(x, (h, c))
    assert not torch.equal(again_h, out_h)  # a fresh mask per step


@pytest.mark.parametrize("kind", KINDS)
def test_rnn_zoneout_eval_is_the_expectation_step_by_step(kind):
    kwargs = {"zoneout_h": 0.3, "zoneout_c": 0.6} if kind == "LSTM" else {"zoneout_h": 0.3}
    ours = getattr(dnn, kind)(3, 5, **kwargs).double().eval()
    cell = getattr(torch.nn, kind + "Cell")(3, 5).double()
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in ours.state_dict().items()})
    x = torch.randn(6, 2, 3, dtype=DOUBLE)
    g = torch.Generator().manual_seed(0)
    h0, c0 = torch.randn(1, 2, 5, generator=g, dtype=DOUBLE), torch.randn(1, 2, 5, generator=g, dtype=DOUBLE)
    h, c, expected = h0[0], c0[0], []
    for x_t in x:
        if kind == "LSTM":
            new_h, new_c = cell(x_t, (h, c))
            h, c = 0.3 * h + 0.7 * new_h, 0.6 * c + 0.4 * new_c
        else:
            h = 0.3 * h + 0.7 * cell(x_t, h)
        expected.append(h)
    hx = (h0, c0) if kind == "LSTM" else h0
    out, _ = ours(x, hx)
    torch.testing.assert_close(out, torch.stack(expected), rtol=1e-12, atol=1e-12)


@pytest.mark.statistical
def test_lstm_zoneout_training_keeps_previous_hidden_values_with_probability_z():
    # zoneout_c = 1: the cell state stays c0, so each step's candidate is known and h_t is either it or h_{t-1}
    ours = dnn.LSTM(3, 40, zoneout_h=0.3, zoneout_c=1.0, seed=0).double()
    cell = torch.nn.LSTMCell(3, 40).double()
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in ours.state_dict().items()})
    x = torch.randn(8, 25, 3, dtype=DOUBLE)
    h0, c0 = torch.randn(1, 25, 40, dtype=DOUBLE), torch.randn(1, 25, 40, dtype=DOUBLE)
    out, (h_n, c_n) = ours(x, (h0, c0))
    assert torch.equal(c_n, c0)
    prev, kept = h0[0], 0
    for t in range(8):
        candidate, _ = cell(x[t], (prev, c0[0]))
        took_prev, took_new = out[t] == prev, torch.isclose(out[t], candidate, rtol=1e-12, atol=1e-12)
        assert bool((took_prev | took_new).all())
        kept += int(took_prev.sum())
        prev = out[t]
    assert stats.binomtest(kept, out.numel(), 0.3).pvalue > 0.01
    second, _ = ours(x, (h0, c0))
    assert not torch.equal(second, out)


def test_rnn_zoneout_runs_bidirectional_packed_with_other_rates():
    ours = dnn.LSTM(3, 4, num_layers=2, bidirectional=True, dropout=0.2, recurrent_dropout=0.2, zoneout_h=0.1,
                    zoneout_c=0.1)  # fmt: skip
    packed = pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor([5, 2, 4]), enforce_sorted=False)
    out, (h, c) = ours(packed)
    assert pad_packed_sequence(out)[0].shape == (5, 3, 8) and h.shape == c.shape == (4, 3, 4)
    gru = dnn.GRU(3, 4, zoneout_h=0.2).eval()
    assert "zoneout_h=0.2" in repr(gru)


def test_zoneout_cell_mc_dropout_switches_it_on():
    model = torch.nn.Sequential(dnn.ZoneoutLSTMCell(3, 8, zoneout_h=0.5, zoneout_c=0.5)).eval()
    x = torch.randn(4, 3)
    assert all(torch.equal(a, b) for a, b in zip(model(x), model(x), strict=True))
    with mc.mc_dropout(model):
        assert not torch.equal(model(x)[1], model(x)[1])


def test_zoneout_functional_matches_reference():
    x, prev = torch.randn(300), torch.randn(300)
    y = F.zoneout(x, prev, 0.4, seed=9)
    assert torch.equal(y, F.zoneout(x, prev, 0.4, seed=9))
    assert bool(((y == x) | (y == prev)).all())
    assert torch.equal(F.zoneout(x, prev, 0.0), x)
    torch.testing.assert_close(F.zoneout(x, prev, 0.4, training=False), 0.4 * prev + 0.6 * x)
    with mc.mc_dropout(torch.nn.Sequential(dnn.Dropout())):
        assert not torch.equal(F.zoneout(x, prev, 0.4, training=False), F.zoneout(x, prev, 0.4, training=False))


# ---------------------------------------------------------------------------------------------- errors


ERRORS = [
    (lambda: dnn.LSTM(3, 4, dropout=1.5), ValueError, "LSTM: dropout must be in [0, 1], but got 1.5."),
    (lambda: dnn.GRU(3, 4, dropout=-0.1), ValueError, "GRU: dropout must be in [0, 1], but got -0.1."),
    (lambda: dnn.LSTM(3, 4, recurrent_dropout=float("nan")), ValueError,
     "LSTM: recurrent_dropout must be in [0, 1], but got nan."),
    (lambda: dnn.LSTM(3, 4, output_dropout=2), ValueError, "LSTM: output_dropout must be in [0, 1], but got 2."),
    (lambda: dnn.LSTM(3, 4, dropout="0.5"), TypeError, "LSTM: dropout must be a real number, but got '0.5'."),
    (lambda: dnn.LSTM(3, 4, mode="scaled"), ValueError,
     "LSTM: mode must be one of 'inverted', 'classic', but got 'scaled'."),
    (lambda: dnn.GRU(3, 4, recurrent_dropout=0.2, mode="classic"), ValueError,
     "GRU: mode must be 'inverted' when recurrent_dropout > 0, but got 'classic'."),
    (lambda: dnn.LSTM(3, 4, seed=1.5), TypeError, "LSTM: seed must be an int, but got 1.5."),
    (lambda: dnn.LSTM(3, 4, zoneout_c=1.5), ValueError, "LSTM: zoneout_c must be in [0, 1], but got 1.5."),
    (lambda: dnn.GRU(3, 4, zoneout_h=-0.5), ValueError, "GRU: zoneout_h must be in [0, 1], but got -0.5."),
    (lambda: dnn.ZoneoutLSTMCell(3, 4, zoneout_h=1.2), ValueError,
     "ZoneoutLSTMCell: zoneout_h must be in [0, 1], but got 1.2."),
    (lambda: dnn.ZoneoutLSTMCell(3, 4, zoneout_c=-1), ValueError,
     "ZoneoutLSTMCell: zoneout_c must be in [0, 1], but got -1."),
    (lambda: dnn.WeightDrop(torch.nn.LSTM(3, 4), ["weight_hh_l0"], p=1.5), ValueError,
     "WeightDrop: p must be in [0, 1], but got 1.5."),
    (lambda: dnn.WeightDrop(torch.nn.LSTM(3, 4), ["weight_hh_l1"]), ValueError,
     "WeightDrop: weights must be names of the module's parameters"),
    (lambda: dnn.WeightDrop(torch.nn.LSTM(3, 4), "weight_hh_l0"), TypeError,
     "WeightDrop: weights must be a non-empty list of parameter names, but got 'weight_hh_l0'."),
    (lambda: dnn.weight_drop("lstm", ["w"]), TypeError, "WeightDrop: module must be a torch.nn.Module, but got 'str'."),
    (lambda: dnn.WeightDrop(torch.nn.LSTM(3, 4), ["weight_hh_l0"], 0.3, dropout=0.2), ValueError,
     "WeightDrop: pass either p or dropout, not both, but got p=0.3 and dropout=0.2."),
    (lambda: F.zoneout(torch.ones(2), torch.ones(2), p=1.1), ValueError, "zoneout: p must be in [0, 1], but got 1.1."),
    (lambda: F.zoneout(torch.ones(2), [0.0, 0.0]), TypeError,
     "zoneout: previous must be a floating-point torch.Tensor, but got 'list'."),
    (lambda: dnn.LSTM(3, 4, dropout=0.5)(torch.randn(2, 3, 4, 3)), ValueError,
     "LSTM: Expected input to be 2D or 3D, got 4D instead"),
]  # fmt: skip


@pytest.mark.parametrize("make, exc, message", ERRORS)
def test_recurrent_bad_arguments_raise_clear_errors(make, exc, message):
    with pytest.raises(exc) as info:
        make()
    assert str(info.value).startswith(message)


def test_rnn_rate_set_after_init_is_validated_on_forward():
    lstm = dnn.LSTM(3, 4, mode="classic")
    lstm.recurrent_dropout = 0.5
    with pytest.raises(ValueError, match="mode must be 'inverted' when recurrent_dropout > 0"):
        lstm(torch.randn(2, 1, 3))
    lstm.recurrent_dropout, lstm.dropout = 0.0, 3.0
    with pytest.raises(ValueError, match=r"LSTM: dropout must be in \[0, 1\], but got 3.0."):
        lstm(torch.randn(2, 1, 3))


def test_rnn_no_torch_dropout_warning_and_repr():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lstm = dnn.LSTM(3, 4, dropout=0.5, recurrent_dropout=0.25, output_dropout=0.1, seed=2)
    assert repr(lstm) == "LSTM(3, 4, dropout=0.5, recurrent_dropout=0.25, output_dropout=0.1, seed=2)"
    assert "zoneout_h=0.05, zoneout_c=0.5" in repr(dnn.ZoneoutLSTMCell(2, 3))
    assert "weights=['weight_hh_l0'], p=0.5, variational=True" in repr(
        dnn.WeightDrop(torch.nn.GRU(2, 3), ["weight_hh_l0"], variational=True)
    )


# ------------------------------------------------------------------------------------------- benchmark


def test_bench_rnn_quick_runs():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_rnn.py"
    spec = importlib.util.spec_from_file_location("bench_rnn", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_rnn"] = module
    spec.loader.exec_module(module)
    rows = module.main(["--quick"])
    assert {(r["cell"], r["contender"]) for r in rows} >= {("LSTM", "dk-rec"), ("GRU", "dk-rec"), ("LSTM", "wdrop")}
    assert all(r["ms"] > 0 for r in rows)


@pytest.mark.parametrize("cls", [dnn.LSTM, dnn.GRU])
def test_an_empty_batch_gives_empty_outputs_as_torch(cls):
    for kwargs in (dict(recurrent_dropout=0.3), dict(recurrent_dropout=0.3, bidirectional=True, num_layers=2)):
        ours = cls(5, 4, **kwargs)
        theirs = getattr(torch.nn, cls.__name__)(5, 4, bidirectional=ours.bidirectional, num_layers=ours.num_layers)
        x = torch.randn(3, 0, 5)
        out, state = ours(x)
        expected, expected_state = theirs(x)
        assert out.shape == expected.shape
        states = state if isinstance(state, tuple) else (state,)
        expected_states = expected_state if isinstance(expected_state, tuple) else (expected_state,)
        assert [s.shape for s in states] == [s.shape for s in expected_states]


def test_autocast_outputs_keep_torchs_dtype():
    ours, theirs = dnn.LSTM(5, 4, num_layers=2, dropout=0.2, output_dropout=0.3), torch.nn.LSTM(5, 4, num_layers=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(torch.randn(3, 2, 5))[0].dtype == theirs(torch.randn(3, 2, 5))[0].dtype == torch.bfloat16
