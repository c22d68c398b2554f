"""MC dropout: which paths mc_dropout switches on, exact restoration, and predict's summaries."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dropkit.nn as dnn
from dropkit import functional as dkF
from dropkit import mc


def _flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


class FunctionalDropoutNet(nn.Module):
    """The Hugging Face / timm pattern: functional dropout gated on the parent's self.training."""

    def __init__(self, use_dropkit: bool = False):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 3)
        self.use_dropkit = use_dropkit

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        drop = dkF.dropout if self.use_dropkit else nn.functional.dropout
        return self.fc2(drop(h, 0.5, training=self.training))


class DropPath(nn.Module):
    """timm-style stochastic depth, matched by class name."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training:
            return x
        keep = (torch.rand(x.shape[0], *[1] * (x.dim() - 1)) >= self.p).to(x.dtype)
        return x * keep / (1 - self.p)


def _mlp(dropout=nn.Dropout) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), dropout(0.5), nn.Linear(32, 3)).eval()


def test_mc_dropout_switches_only_dropout_and_restores_exactly():
    model = _mlp()
    model[1].train()  # a mixed starting state must come back exactly
    before = _flags(model)
    with mc.mc_dropout(model) as m:
        assert m is model
        assert model[3].training and not model.training
        assert model[1].training  # untouched: it was in training mode before
    assert _flags(model) == before


def test_mc_dropout_keeps_batchnorm_in_eval_and_its_statistics():
    model = _mlp()
    stats = (model[1].running_mean.clone(), model[1].running_var.clone())
    with mc.mc_dropout(model):
        assert not model[1].training
        a, b = model(torch.randn(16, 8)), None
        b = model(torch.randn(16, 8))
    assert a.shape == b.shape
    assert torch.equal(model[1].running_mean, stats[0]) and torch.equal(model[1].running_var, stats[1])


def test_mc_dropout_restores_after_an_exception_and_unpatches_functional():
    model = _mlp()
    before = _flags(model)
    original = nn.functional.dropout
    with pytest.raises(KeyError):
        with mc.mc_dropout(model):
            assert nn.functional.dropout is not original
            raise KeyError("boom")
    assert _flags(model) == before
    assert nn.functional.dropout is original
    x = torch.ones(4, 8)
    assert torch.equal(dkF.dropout(x, 0.5, training=False), x)  # dropkit's forced-training flag is off again


def test_mc_dropout_decorator_and_nesting():
    model = _mlp()

    @mc.mc_dropout(model)
    def sample():
        return model(torch.ones(4, 8))

    assert not torch.equal(sample(), sample())
    with mc.mc_dropout(model):
        with mc.mc_dropout(model):
            pass
        assert model[3].training and nn.functional.dropout.__wrapped__ is not None
    assert not model[3].training


@pytest.mark.parametrize("use_dropkit", [False, True])
def test_functional_dropout_gated_on_training_is_switched_on(use_dropkit):
    model = FunctionalDropoutNet(use_dropkit).eval()
    x = torch.randn(4, 8)
    assert torch.equal(model(x), model(x))
    with mc.mc_dropout(model):
        assert not model.training  # the parent stays in eval: only the functional call is forced
        assert not torch.equal(model(x), model(x))
    assert torch.equal(model(x), model(x))


def test_attention_and_rnn_dropout_gated_on_training_are_switched_on():
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 2, dropout=0.5, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    with mc.mc_dropout(attention):
        assert not torch.equal(attention(x, x, x)[0], attention(x, x, x)[0])
    lstm = nn.LSTM(4, 8, num_layers=2, dropout=0.5).eval()
    seq = torch.randn(6, 3, 4)
    with mc.mc_dropout(lstm):
        assert not torch.equal(lstm(seq)[0], lstm(seq)[0])
    assert not lstm.training and not attention.training


def test_drop_path_by_class_name_and_gaussian_noise_layers():
    model = nn.Sequential(nn.Linear(4, 4), DropPath(0.5), dnn.GaussianDropout(0.2)).eval()
    assert [p for p, _ in mc.stochastic_modules(model)] == ["1", "2"]
    x = torch.randn(64, 4)
    with mc.mc_dropout(model):
        assert not torch.equal(model(x), model(x))


def test_mc_dropout_rejects_models_without_a_stochastic_path():
    with pytest.raises(ValueError, match="mc_dropout: model has no stochastic path"):
        with mc.mc_dropout(nn.Sequential(nn.Linear(2, 2), nn.ReLU())):
            pass
    with pytest.raises(TypeError, match="mc_dropout: model must be a torch.nn.Module, but got 'int'."):
        mc.mc_dropout(3)


def test_predict_classification_summaries_are_consistent():
    model = _mlp()
    x = torch.randn(20, 8)
    r = mc.predict(model, x, samples=40, seed=1, keep_samples=True)
    assert r.samples.shape == (40, 20, 3) and r.mean.shape == (20, 3)
    torch.testing.assert_close(r.mean.sum(1), torch.ones(20))
    torch.testing.assert_close(r.mean, r.samples.mean(0))
    assert torch.equal(r.votes.sum(1), torch.full((20,), 40))
    assert torch.equal(r.majority, r.votes.argmax(1))
    assert bool((r.mutual_information >= 0).all()) and bool((r.entropy <= math.log(3) + 1e-6).all())
    torch.testing.assert_close(r.entropy - r.expected_entropy, r.mutual_information)
    assert bool(((r.variation_ratio >= 0) & (r.variation_ratio <= 1 - 1 / 3 + 1e-6)).all())
    assert r.variance is None


def test_predict_is_reproducible_and_leaves_the_global_rng_alone():
    model = _mlp()
    x = torch.randn(10, 8)
    state = torch.get_rng_state()
    a = mc.predict(model, x, samples=10, seed=3, keep_samples=True)
    assert torch.equal(torch.get_rng_state(), state)
    b = mc.predict(model, x, samples=10, seed=3, keep_samples=True)
    assert torch.equal(a.samples, b.samples)
    assert not torch.equal(mc.predict(model, x, samples=10, seed=4, keep_samples=True).samples, a.samples)


@pytest.mark.statistical
def test_predict_regression_variance_matches_known_value():
    # y = mean over 1000 units of dropout(1): Var = p / ((1 - p) * 1000); tau adds 1 / tau
    p, units = 0.3, 1000
    model = nn.Sequential(nn.Linear(1, units, bias=False), nn.Dropout(p), nn.Linear(units, 1, bias=False)).eval()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[2].weight.fill_(1.0 / units)
    r = mc.predict(model, torch.ones(4, 1), samples=4000, task="regression", tau=10.0, seed=0)
    expected = p / ((1 - p) * units)
    # sampling error of a variance estimate from T draws: sqrt(2 / T) relative, 5 standard errors
    assert torch.allclose(r.variance - 0.1, torch.full((4, 1), expected), rtol=5 * math.sqrt(2 / 4000))
    torch.testing.assert_close(r.mean, torch.ones(4, 1), atol=5 * math.sqrt(expected / 4000), rtol=0)


def test_predict_vectorised_and_loop_agree_in_distribution():
    model = _mlp()
    x = torch.randn(8, 8)
    fast = mc.predict(model, x, samples=3000, seed=0)
    slow = mc.predict(model, x, samples=3000, seed=0, vectorize=False)
    torch.testing.assert_close(fast.mean, slow.mean, atol=0.03, rtol=0)


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Dropout2d(0.3), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)),
         (6, 3, 6, 6)),
        (nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.2, batch_first=True), nn.Flatten(),
                       nn.Linear(5 * 8, 4)), (3, 5, 8)),
    ],
    ids=["conv-4d", "transformer-3d"],
)  # fmt: skip
def test_predict_accepts_any_input_rank(model, shape):
    r = mc.predict(model.eval(), torch.randn(shape), samples=6, seed=0)
    assert r.mean.shape[0] == shape[0]
    torch.testing.assert_close(r.mean.sum(1), torch.ones(shape[0]))


def test_predict_falls_back_to_a_loop_when_batchnorm_is_training():
    model = _mlp()
    model[1].train()
    x = torch.randn(16, 8)
    r = mc.predict(model, x, samples=5, seed=0)
    assert r.mean.shape == (16, 3)
    assert mc._mixes_batch(model)


def test_predict_errors():
    model = _mlp()
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"^predict: samples must be an int >= 1, but got 0.$"):
        mc.predict(model, x, samples=0)
    with pytest.raises(ValueError, match=r"^predict: task must be one of 'classification', 'regression'"):
        mc.predict(model, x, task="ranking")
    with pytest.raises(ValueError, match=r"^predict: tau must be a finite number > 0, but got -1.0.$"):
        mc.predict(model, x, task="regression", tau=-1.0)
    with pytest.raises(TypeError, match=r"^predict: x must be a batched torch.Tensor"):
        mc.predict(model, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"^predict: x must hold at least one row \(N >= 1\), but got shape \(0, 8\)"):
        mc.predict(model, torch.randn(0, 8))
    with pytest.raises(RuntimeError, match="all 5 MC samples are identical"):
        mc.predict(nn.Sequential(nn.Linear(8, 3), nn.Dropout(0.0)), x, samples=5)


def test_gaussian_log_likelihood_matches_the_mixture_density():
    samples = torch.tensor([[0.0], [1.0], [3.0]]).unsqueeze(-1)  # (T=3, N=1, 1)
    target, tau = torch.tensor([[0.5]]), 2.0
    density = sum(math.sqrt(tau / (2 * math.pi)) * math.exp(-0.5 * tau * (0.5 - s) ** 2) for s in (0.0, 1.0, 3.0)) / 3
    got = mc.gaussian_log_likelihood(samples, target, tau)
    assert math.isclose(float(got), math.log(density), rel_tol=1e-6)
    with pytest.raises(ValueError, match="gaussian_log_likelihood: tau must be a finite number > 0, but got 0.0."):
        mc.gaussian_log_likelihood(samples, target, 0.0)


# ---- predict: the stacked and loop paths draw the same samples ---------------------------------------------------


class _FunctionalOnly(nn.Module):
    def forward(self, x):
        return nn.functional.dropout(x, 0.5, training=self.training) + dkF.dropout(x, 0.2, training=self.training)


def _identity_dropouts():
    # no matrix products: the outputs are the masks times the input, exactly, so any mask difference shows
    return {
        "dropout": (nn.Sequential(nn.Dropout(0.5)), (7, 33)),
        "dropout2d": (nn.Sequential(nn.Dropout2d(0.4)), (5, 6, 3, 4)),
        "dropkit-alpha-and-dropout": (nn.Sequential(dnn.AlphaDropout(0.2), dnn.Dropout(0.3)), (4, 50)),
        "functional": (_FunctionalOnly(), (9, 8)),
        "dropout-after-prefix": (nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Dropout1d(0.3)),
                                 (6, 8)),
        "p0-then-dropout": (nn.Sequential(nn.Linear(5, 6), nn.Dropout(0.0), nn.Dropout(0.5)), (4, 5)),
    }  # fmt: skip


@pytest.mark.parametrize("name", list(_identity_dropouts()))
def test_predict_stacked_and_loop_paths_draw_identical_samples(name):
    model, shape = _identity_dropouts()[name]
    model.eval()
    x = torch.randn(shape)
    n = shape[0]

    def draw(**kwargs):
        return mc.predict(model, x, samples=11, seed=9, task="regression", keep_samples=True, **kwargs).samples

    stacked = draw(vectorize=True)  # 11 samples in one forward
    for other in (draw(vectorize=False), draw(max_rows=n), draw(max_rows=3 * n), draw(max_rows=1)):
        assert torch.equal(other, stacked)  # bit for bit: the grouping never changes the masks
    assert not torch.equal(stacked[0], stacked[1])  # ... and the samples still differ from each other
    assert not torch.equal(draw(vectorize=True)[0], mc.predict(model, x, 11, seed=10, task="regression",
                                                                keep_samples=True).samples[0])  # fmt: skip


def test_predict_paths_agree_through_matrix_products():
    model = _mlp()  # Linear-BatchNorm(eval)-ReLU-Dropout-Linear: the prefix runs once, the rest stacked or looped
    x = torch.randn(12, 8)
    stacked = mc.predict(model, x, samples=20, seed=2, task="regression", keep_samples=True).samples
    looped = mc.predict(model, x, samples=20, seed=2, task="regression", keep_samples=True, max_rows=12).samples
    # same masks; only the matrix products' rounding may differ with the number of rows
    torch.testing.assert_close(looped, stacked, rtol=1e-5, atol=1e-6)


@pytest.mark.statistical
def test_predict_aligned_samples_are_independent():
    """Samples at consecutive element offsets of one seed: keep indicators uncorrelated across samples."""
    model = nn.Sequential(nn.Dropout(0.5)).eval()
    x = torch.ones(50, 40)
    samples = mc.predict(model, x, samples=200, seed=0, task="regression", keep_samples=True).samples
    kept = (samples != 0).float().reshape(200, -1)  # (T, 2000)
    # keep rate: binomial, 400000 draws, 5 standard errors
    assert abs(float(kept.mean()) - 0.5) < 5 * math.sqrt(0.25 / kept.numel())
    # correlation of consecutive samples' masks: ~N(0, 1/m) for independent draws, m = 199 * 2000
    a, b = kept[:-1] - 0.5, kept[1:] - 0.5
    corr = float((a * b).mean() / 0.25)
    assert abs(corr) < 5 / math.sqrt(a.numel())


def test_samples_per_chunk_rule():
    budget = mc.ACTIVATION_BUDGET
    assert mc.samples_per_chunk(budget // 8, 10, 50, 1 << 13) == 8  # small per-sample work: stack 8
    assert mc.samples_per_chunk(budget // 2 + 1, 64, 30, 1 << 13) == 1  # a sample fills the budget: loop
    assert mc.samples_per_chunk(budget // mc.STACK_AT_LEAST, 64, 30, 1 << 13) == mc.STACK_AT_LEAST
    assert mc.samples_per_chunk(budget // mc.STACK_AT_LEAST + 1, 64, 30, 1 << 13) == 1  # too few fit: loop
    assert mc.samples_per_chunk(budget // mc.STACK_AT_LEAST + 1, 64, 30, 1 << 13, cpu=False) == 3  # a GPU: stack
    assert mc.samples_per_chunk(10, 256, 50, 1 << 13) == 32  # rows cap
    assert mc.samples_per_chunk(10, 256, 5, 1 << 13) == 5  # never more than T
    assert mc.samples_per_chunk(budget * 4, 1 << 14, 5, 1 << 13) == 1  # at least one


class _Noise(nn.Module):
    """Noise of its own, drawn from torch's generator (no dropout: ``_split_sequential`` sees a deterministic layer)."""

    def forward(self, x):
        return x + torch.randn_like(x)


class _Rows2(nn.Module):
    """``(N, F) -> (2N, F / 2)``: a prefix that changes the number of rows."""

    def forward(self, x):
        return x.reshape(-1, x.shape[1] // 2)


class _BatchCenter(nn.Module):
    """Mixes the rows in eval: subtracts the batch mean."""

    def forward(self, x):
        return x - x.mean(0, keepdim=True)


def test_predict_skips_the_row_check_when_one_sample_fills_a_forward(monkeypatch):
    """When the budget allows one sample per forward (feature maps of a CNN), a model with a custom forward runs as a
    loop without the row check: the same samples as ``vectorize=False``, also where the check would fail (a model
    that mixes its rows, noise of its own). A ``Sequential`` with a prefix still gets its check, which clears the
    prefix to run once (review: a noisy prefix ran once, a prefix that doubles the rows made the probes disagree
    and a row-mixing model stacked); so does a sequence-first candidate for dimension 1."""
    calls = []
    batch_dim = mc._batch_dim

    def count():
        calls.clear()
        monkeypatch.setattr(mc, "_batch_dim", lambda *a, **k: calls.append(a[2:]) or batch_dim(*a, **k))

    class Pooled(nn.Module):  # mixes the batch in eval: a mean over dimension 0, then channel dropout
        def __init__(self, noise: bool = False):
            super().__init__()
            self.conv, self.drop, self.noise = nn.Conv2d(2, 4, 3, padding=1), nn.Dropout2d(0.5), noise

        def forward(self, x):
            h = self.conv(x)
            h = h + torch.randn_like(h) if self.noise else h
            return self.drop(h - h.mean(0)).flatten(1)

    torch.manual_seed(0)
    x = torch.randn(5, 2, 6, 6)
    kw = {"samples": 7, "seed": 3, "task": "regression", "keep_samples": True}
    for model, skipped in (
        (Pooled(), True),
        (Pooled(noise=True), True),
        (nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.5), nn.Flatten()), False),
        (nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), _Noise(), nn.Dropout2d(0.5), nn.Flatten()), False),
    ):
        model.eval()
        loop = mc.predict(model, x, vectorize=False, **kw).samples
        monkeypatch.setattr(mc, "ACTIVATION_BUDGET", 4 * 36)  # one row's 4 x 6 x 6 feature map: already full
        count()
        got = mc.predict(model, x, **kw).samples
        assert (calls == []) == skipped and torch.equal(got, loop)
        monkeypatch.undo()
        count()
        mc.predict(model, x, **kw)
        assert calls  # the budget allows stacking: the rows are checked
    assert not torch.allclose(got[0], got[1])  # the noisy prefix draws for every sample: no two samples alike

    model = nn.Sequential(
        nn.Linear(8, 64), _Rows2(), nn.Dropout(0.5), _BatchCenter(), nn.Linear(32, 1), nn.Dropout1d(0)
    )
    x = torch.randn(4, 8)
    loop = mc.predict(model.eval(), x, vectorize=False, **{**kw, "samples": 12}).samples
    monkeypatch.setattr(mc, "ACTIVATION_BUDGET", 768)  # one input row (2 rows after the prefix) fits 3 times
    assert torch.equal(mc.predict(model, x, **{**kw, "samples": 12}).samples, loop)

    monkeypatch.setattr(mc, "ACTIVATION_BUDGET", 1)  # (L, N, F): dimension 1 is a candidate, so it is checked
    count()
    mc.predict(_SeqDrop(True).eval(), torch.randn(6, 3, 4), samples=4, task="regression")
    assert calls


def test_predict_leaves_seed_hooks_as_they_were():
    from dropkit import rng

    model = _mlp()
    before = (dkF._seed_override, rng.current_shards)
    with pytest.raises(RuntimeError):
        mc.predict(nn.Sequential(nn.Linear(8, 3), nn.Dropout(0.0)), torch.randn(4, 8), samples=3)
    mc.predict(model, torch.randn(4, 8), samples=3)
    assert (dkF._seed_override, rng.current_shards) == before


@pytest.mark.parametrize("kwargs", [{"vectorize": False}, {"max_rows": 6}, {"vectorize": True}])
def test_predict_unaligned_noise_layers_still_draw_fresh_samples(kwargs):
    # Gaussian dropout draws its noise outside the mask specs: seeds that differ per chunk, never a repeated sample
    model = nn.Sequential(dnn.GaussianDropout(0.3), nn.Dropout(0.2)).eval()
    samples = mc.predict(model, torch.ones(6, 5), samples=8, seed=1, task="regression", keep_samples=True,
                         **kwargs).samples  # fmt: skip
    flat = samples.reshape(8, -1)
    assert len({tuple(row.tolist()) for row in flat}) == 8


def test_predict_from_threads_gives_the_sequential_results():
    from concurrent.futures import ThreadPoolExecutor

    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)).eval()
    xs = [torch.randn(5, 8) for _ in range(4)]

    def run(i):
        return mc.predict(model, xs[i], samples=6, seed=i, task="regression", keep_samples=True).samples

    expected = [run(i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(run, range(4)))
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_predict_fused_first_dropout_is_the_same_on_every_backend():
    from dropkit import kernels

    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 3)).eval()
    x = torch.randn(5, 8)
    fast = mc.predict(model, x, samples=9, seed=4, task="regression", keep_samples=True).samples
    with kernels.use_backend("reference"):  # per-copy kernel calls instead of the one repeat kernel
        ref = mc.predict(model, x, samples=9, seed=4, task="regression", keep_samples=True).samples
    assert torch.equal(fast, ref)


def test_predict_loops_when_a_layer_is_tied_to_the_batch_size():
    # Keras-style noise_shape with the batch written out cannot be stacked: predict falls back to the loop
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 10), dnn.Dropout(0.5, noise_shape=(4, 1, 10)), nn.Linear(10, 2))
    x = torch.randn(4, 3, 10)
    stacked = mc.predict(net, x, samples=6, seed=1, keep_samples=True)
    loop = mc.predict(net, x, samples=6, seed=1, keep_samples=True, vectorize=False)
    assert torch.equal(stacked.samples, loop.samples)
    assert not torch.equal(stacked.samples[0], stacked.samples[1])


# ---- predict: deterministic layers run once, whatever the forward (_Memo) ---------------------------------------


class _Counted(nn.Conv2d):
    """A Conv2d that counts its computations (``_conv_forward`` runs only when the layer really computes)."""

    calls = 0

    def _conv_forward(self, x, weight, bias):
        type(self).calls += 1
        return super()._conv_forward(x, weight, bias)


class _CustomCNN(nn.Module):
    """conv-relu-Dropout2d-conv with a custom forward (no Sequential prefix); ``inplace`` edits the conv's output."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = _Counted(1, 4, 3, padding=1)
        self.drop = nn.Dropout2d(0.5)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1)
        self.inplace = inplace

    def forward(self, x):
        h = self.conv1(x)
        h = torch.relu_(h) if self.inplace else torch.relu(h)
        return self.conv2(self.drop(h)).mean((2, 3))


class _Backbone(nn.Module):
    """torchvision's layout: a pure ``features`` Sequential, pooling, flatten, then a dropout head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(_Counted(1, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(32, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def _samples(model, x, monkeypatch=None, **kwargs):
    _Counted.calls = 0
    out = mc.predict(model, x, samples=12, seed=3, task="regression", keep_samples=True, **kwargs).samples
    return out, _Counted.calls


def _unmemoised(model, x, monkeypatch, **kwargs):
    with monkeypatch.context() as m:
        m.setattr(mc, "_outermost_pure", lambda module: [])
        return _samples(model, x, **kwargs)


@pytest.mark.parametrize("kwargs", [{"max_rows": 6}, {"vectorize": False}])  # one sample per forward
def test_predict_computes_the_layers_before_the_first_dropout_once(monkeypatch, kwargs):
    model, x = _CustomCNN().eval(), torch.randn(6, 1, 8, 8)
    got, calls = _samples(model, x, **kwargs)
    ref, ref_calls = _unmemoised(model, x, monkeypatch, **kwargs)
    assert torch.equal(got, ref)  # bit for bit the plain forward
    assert ref_calls >= 12 and calls == ref_calls - 11  # 12 samples, conv1 computed once (plus the probe, if any)
    assert not torch.equal(got[0], got[1])


def test_predict_memo_notices_in_place_changes(monkeypatch):
    model, x = _CustomCNN(inplace=True).eval(), torch.randn(6, 1, 8, 8)  # relu_ rewrites conv1's output each time
    got, calls = _samples(model, x, vectorize=False)
    ref, ref_calls = _unmemoised(model, x, monkeypatch, vectorize=False)
    assert torch.equal(got, ref) and calls == ref_calls == 12  # the changed output is never reused


def test_predict_memo_gives_a_layer_called_twice_in_one_forward_two_tensors(monkeypatch):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc, self.drop = nn.Linear(4, 4), nn.Dropout(0.5)

        def forward(self, x):
            a, b = self.fc(x), self.fc(x)
            a.mul_(2)  # must not change b: the plain forward gives 3 * fc(x)
            return self.drop(a + b)

    model, x = Twice().eval(), torch.randn(3, 4)
    got, _ = _samples(model, x, vectorize=False)
    ref, _ = _unmemoised(model, x, monkeypatch, vectorize=False)
    assert torch.equal(got, ref)


def test_predict_stacked_chunks_reuse_a_pure_backbone(monkeypatch):
    model, x = _Backbone().eval(), torch.randn(4, 1, 8, 8)
    got, calls = _samples(model, x, max_rows=16)  # chunks of 4 samples: 3 stacked forwards
    ref, ref_calls = _unmemoised(model, x, monkeypatch, max_rows=16)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)  # a conv on 4 rows vs 16: rounding only
    # memo: the row check (3) + the probe (one row, two rows) + once; plain: 3 + 2 + once per chunk
    assert calls == 6 and ref_calls == 8
    assert "forward" not in model.features.__dict__  # the layers are left as they were


def test_memo_widest_activation_leaves_out_the_backbone():
    model = _Backbone().eval()
    with mc.mc_dropout(model):
        widest = mc._widest_activation(model, torch.randn(1, 1, 8, 8))
    assert widest == 128  # the backbone's output (8x4x4, repeated per chunk), not its 8x8x8 feature map inside


def test_pure_layers_are_listed_torch_layers_only():
    class Noise(nn.Module):  # a custom forward may draw random numbers: never memoised
        def forward(self, x):
            return x + torch.randn_like(x)

    assert mc._pure(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2)))
    assert not mc._pure(nn.Sequential(nn.Linear(2, 2), Noise()))
    assert not mc._pure(nn.BatchNorm1d(3).train()) and mc._pure(nn.BatchNorm1d(3).eval())
    assert not mc._pure(nn.Embedding(5, 2, max_norm=1.0)) and mc._pure(nn.Embedding(5, 2))
    assert not mc._pure(nn.RReLU()) and not mc._pure(nn.Dropout(0.1))
    model = nn.Sequential(nn.Linear(3, 3), Noise(), nn.Dropout(0.5), nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    assert mc._outermost_pure(model) == [model[0], model[3]]


def test_predict_memo_restores_forward_after_an_error_and_is_off_in_inference_mode(monkeypatch):
    model, x = _CustomCNN().eval(), torch.randn(6, 1, 8, 8)
    with pytest.raises(RuntimeError):
        mc.predict(model, torch.randn(6, 2, 8, 8), samples=3)  # wrong channel count
    assert "forward" not in model.conv1.__dict__ and "forward" not in model.conv2.__dict__
    with torch.inference_mode():
        got, calls = _samples(model, x, vectorize=False)
    assert calls == 12 and torch.equal(got, _samples(model, x, vectorize=False)[0])


def test_predict_keeps_no_per_chunk_outputs():
    """Chunk outputs go straight into one result tensor: a list of small kept outputs between each chunk's large
    temporaries fragmented glibc's heap (3-20 GB for thousands of chunks, an out-of-memory kill at T = 10,000)."""
    import gc

    live = []

    class Count(nn.Module):
        def forward(self, x):
            live.append(sum(1 for o in gc.get_objects() if type(o) is torch.Tensor and o.shape[-1:] == (2,)))
            return x

    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 2), Count()).eval()
    mc.predict(model, torch.randn(4, 3), samples=12, task="regression", max_rows=8)  # 6 chunks of 2 samples
    mc.predict(model, torch.randn(4, 3), samples=6, task="regression", vectorize=False)  # 6 forwards
    assert len(live) == 3 + 2 + 6 + 6  # the row check, the probe (one row, two rows), then the chunks
    assert max(live[5:]) == max(live[5:7]) and live[-1] == live[-5]  # constant: nothing accumulates per chunk


# ---- _Memo: review (in-place layers, random or reassigned weights, shared modules, per-sample edits) -------------


class _SkipInplace(nn.Module):
    """A pre-activation skip taken before an in-place activation (which must not reach the cached Linear output)."""

    def __init__(self, act: nn.Module):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.act, self.drop, self.out = nn.Linear(6, 8), act, nn.Dropout(0.5), nn.Linear(8, 3)

    def forward(self, x):
        h = self.lin(x)
        skip = h * 1.0
        return self.out(self.drop(self.act(h)) + skip)


@pytest.mark.parametrize("act", [nn.ReLU(inplace=True), nn.LeakyReLU(0.1, inplace=True)])
@pytest.mark.parametrize("kwargs", [{"vectorize": False}, {"max_rows": 4}])
def test_predict_memo_never_lets_an_in_place_layer_edit_a_cached_output(monkeypatch, act, kwargs):
    model, x = _SkipInplace(act).eval(), torch.randn(4, 6)
    got, _ = _samples(model, x, **kwargs)
    ref, _ = _unmemoised(model, x, monkeypatch, **kwargs)
    assert torch.equal(got, ref)


def test_predict_memo_leaves_the_input_alone():
    class ActIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.act, self.drop, self.out = nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(6, 3)

        def forward(self, x):
            return self.out(self.drop(self.act(x)))

    x = torch.randn(4, 6)
    x0 = x.clone()
    _samples(ActIn().eval(), x, max_rows=16)  # stacked chunks: the plain forward edits only the repeated copies
    assert torch.equal(x, x0)  # neither the memo, the row check nor the one-row probe wrote into x


class _WeightDrop(nn.Module):
    """AWD-LSTM's WeightDrop around a Linear: a new dropped-out weight assigned before every call."""

    def __init__(self, module: nn.Linear, p: float):
        super().__init__()
        self.module, self.p = module, p
        self.weight_raw = nn.Parameter(module.weight.detach().clone())
        del module._parameters["weight"]

    def forward(self, x):
        self.module.weight = torch.nn.functional.dropout(self.weight_raw, self.p, training=self.training)
        return self.module(x)


def _random_weight_models():
    from torch.nn.utils import parametrize

    class Head(nn.Module):
        def __init__(self, fc1):
            super().__init__()
            self.fc1, self.drop, self.fc2 = fc1, nn.Dropout(0.5), nn.Linear(8, 3)

        def forward(self, x):
            return self.fc2(self.drop(torch.relu(self.fc1(x))))

    torch.manual_seed(0)
    hooked = nn.Linear(6, 8)
    hooked.raw = hooked.weight.detach().clone()

    def resample(module, args):
        module.weight.data = torch.nn.functional.dropout(module.raw, 0.5, training=True)

    hooked.register_forward_pre_hook(resample)
    param = nn.Linear(6, 8)
    parametrize.register_parametrization(param, "weight", nn.Dropout(0.3))
    return [Head(hooked).eval(), Head(param).eval(), Head(_WeightDrop(nn.Linear(6, 8), 0.5)).eval()]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["pre-hook", "parametrization", "WeightDrop"])
def test_predict_memo_resamples_random_weights(monkeypatch, index):
    x = torch.randn(4, 6)
    got, _ = _samples(_random_weight_models()[index], x, vectorize=False)
    ref, _ = _unmemoised(_random_weight_models()[index], x, monkeypatch, vectorize=False)
    assert torch.equal(got, ref)


def test_predict_memo_handles_a_module_shared_by_two_parents(monkeypatch):
    class Block(nn.Module):
        def __init__(self, act):
            super().__init__()
            self.act, self.fc = act, nn.Linear(6, 6)

        def forward(self, x):
            return self.fc(self.act(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            act = nn.Tanh()
            self.b1, self.b2, self.drop, self.out = Block(act), Block(act), nn.Dropout(0.5), nn.Linear(6, 3)

        def forward(self, x):
            return self.out(self.drop(self.b2(self.b1(x))))

    model, x = Net().eval(), torch.randn(4, 6)
    got, _ = _samples(model, x, vectorize=False)  # was: AttributeError on exit, forward left on b2.fc and out
    assert not [name for name, m in model.named_modules() if "forward" in m.__dict__]
    assert torch.equal(got, _unmemoised(model, x, monkeypatch, vectorize=False)[0])


def test_predict_memo_keeps_no_output_per_sample_when_edited_in_place():
    import gc

    live = []

    class Edit(_CustomCNN):
        def forward(self, x):
            h = torch.relu_(self.conv1(x))  # conv1's cached output edited in place: recomputed every sample
            gc.collect()
            live.append(sum(1 for o in gc.get_objects() if type(o) is torch.Tensor and o.shape[1:2] == (4,)))
            return self.conv2(self.drop(h)).mean((2, 3))

    _samples(Edit().eval(), torch.randn(6, 1, 8, 8), vectorize=False)
    assert live[-1] == live[0]  # was: one more stale conv1 output kept per sample


# ---- stacking needs rows that map independently (sequence-first inputs do not) ----------------------------------


class _SeqFirst(nn.Module):
    """An LSTM over ``(L, N, 4)`` input (``batch_first=False``) with a dropout head on every step: rows are steps."""

    def __init__(self):
        super().__init__()
        self.rnn, self.drop, self.head = nn.LSTM(4, 8), nn.Dropout(0.3), nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.drop(self.rnn(x)[0]))


class _SeqDrop(nn.Module):
    """A sequence-first LSTM and a dropout on its output: every step's (``last=False``) or the last step's."""

    def __init__(self, last: bool = False):
        super().__init__()
        self.rnn, self.drop, self.last = nn.LSTM(4, 8), nn.Dropout(0.3), last

    def forward(self, x):
        y = self.rnn(x)[0]
        return self.drop(y[-1] if self.last else y)


def _check_dropout_samples(samples, clean, p):
    """Every sample is ``m * clean / (1 - p)`` with its own Bernoulli(1 - p) mask ``m``.

    Binomial tolerances: the keep rate within 5 SE of 1 - p; the rate at which two consecutive samples' masks
    agree within 5 SE of (1 - p)^2 + p^2 (a mask shared by the samples would agree everywhere).
    """
    kept = samples != 0
    assert torch.allclose(torch.where(kept, samples, clean / (1 - p)), clean.expand_as(samples) / (1 - p), atol=1e-6)
    n = kept.numel()
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    agree, q = (kept[1:] == kept[:-1]).float(), (1 - p) ** 2 + p**2
    assert abs(agree.mean().item() - q) < 5 * math.sqrt(q * (1 - q) / agree.numel())


@pytest.mark.parametrize("steps", [5, 1])
@pytest.mark.parametrize("last", [False, True])
def test_predict_stacks_a_sequence_first_model_beside_its_rows(steps, last):
    """Stacked in dimension 0, the samples' sequences would run on as one: "auto" stacks them in dimension 1."""
    torch.manual_seed(0)
    model, x = _SeqDrop(last).eval(), torch.randn(steps, 3, 4)
    assert not mc._rows_independent(model, x)
    assert mc._stack_dims(model, x, "auto") == (1, 0 if last else 1)  # the output's rows: (N, 8) or (L, N, 8)
    auto = mc.predict(model, x, samples=60, seed=2, task="regression", keep_samples=True).samples
    with torch.no_grad():
        clean = model.rnn(x)[0]
    clean = clean[-1] if last else clean
    assert auto.shape == (60, *clean.shape)
    _check_dropout_samples(auto, clean, 0.3)
    with torch.no_grad(), mc.mc_dropout(model):  # what stacking in dimension 0 gives: sequences joined
        joined = model.rnn(torch.cat([x, x]))[0][steps:]
    assert not torch.allclose(joined, model.rnn(x)[0])
    assert not model.training and not model.drop.training  # modes left as they were
    again = mc.predict(model, x, samples=60, seed=2, task="regression", keep_samples=True).samples
    assert torch.equal(auto, again)  # seed= still makes it reproducible


class _SharedAlongRows(nn.Module):
    """A sequence-first LSTM followed by a draw that may be shared along dimension 1 (``kind``)."""

    def __init__(self, kind: str):
        super().__init__()
        self.rnn, self.kind = nn.LSTM(4, 8), kind
        self.drop = {"dropout1d": nn.Dropout1d(0.3), "droppath": DropPath(0.3),
                     "noise-shape": dnn.Dropout(0.3, noise_shape=(None, 1, None))}.get(kind)  # fmt: skip

    def forward(self, x):
        y = self.rnn(x)[0]
        if self.kind == "functional":
            return dkF.dropout(y, 0.3, self.training, noise_shape=(None, 1, None))
        return self.drop(y)


@pytest.mark.parametrize("kind", ["dropout1d", "droppath", "noise-shape", "functional"])
def test_predict_loops_a_sequence_first_model_whose_draws_may_be_shared_along_its_rows(kind):
    """A mask shared along dimension 1 would be one mask for every sample stacked there: such models loop."""
    torch.manual_seed(0)
    model, x = _SharedAlongRows(kind).eval(), torch.randn(5, 3, 4)
    assert not mc._draws_elementwise(model) and mc._stack_dims(model, x, "auto") is None
    kw = {"samples": 6, "seed": 2, "task": "regression", "keep_samples": True}
    assert torch.equal(mc.predict(model, x, **kw).samples, mc.predict(model, x, vectorize=False, **kw).samples)


class _TableDrop(nn.Module):
    """Dropout on something without the batch's rows, broadcast over them later: one mask per forward, shared.

    ``"position"``: a positional buffer ``(L, 1, F)`` (``batch_first``: ``(1, L, F)``); ``"embedding"``: the
    embedding table (token ids in, ``F.embedding(ids, dropout(weight))``).
    """

    def __init__(self, kind: str, batch_first: bool):
        super().__init__()
        self.kind, self.batch_first = kind, batch_first
        self.register_buffer("pe", torch.randn(1, 6, 4) if batch_first else torch.randn(6, 1, 4))
        self.emb, self.drop = nn.Embedding(10, 4), nn.Dropout(0.3)
        self.rnn = nn.GRU(4, 8, batch_first=batch_first)

    def forward(self, x):
        if self.kind == "embedding":
            h = nn.functional.embedding(x, self.drop(self.emb.weight))
        else:
            h = x + self.drop(self.pe[:, : x.shape[1]] if self.batch_first else self.pe[: x.shape[0]])
        return self.rnn(h)[0]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kind", ["position", "embedding"])
def test_predict_loops_a_model_whose_mask_every_stacked_sample_would_share(kind, batch_first):
    """Adversarial review: stacked, the samples of a chunk shared one draw of the table's mask (all samples equal
    at the default chunking, a too-small variance with smaller chunks); the loop draws one per sample."""
    torch.manual_seed(0)
    model = _TableDrop(kind, batch_first).eval()
    shape = (3, 5) if batch_first else (5, 3)
    x = torch.randint(0, 10, shape) if kind == "embedding" else torch.randn(*shape, 4)
    dim = 0 if batch_first else 1
    assert mc._stack_dims(model, x, "auto") == (dim, dim)  # the rows are independent; the masks are the catch
    with torch.no_grad(), mc.mc_dropout(model), mc._SampleStreams(0, shape[dim], 8) as streams:
        assert mc._per_chunk(model, x.narrow(dim, 0, 1), dim, shape[dim], 8, 6, streams, check=True) == 1
    kw = {"samples": 8, "seed": 2, "task": "regression", "keep_samples": True}
    auto = mc.predict(model, x, max_rows=6, **kw).samples
    assert torch.equal(auto, mc.predict(model, x, vectorize=False, **kw).samples)
    assert len({tuple(sample.flatten().tolist()) for sample in auto}) == 8  # every sample its own mask


def test_predict_loops_a_model_whose_mask_is_shared_by_the_batch():
    """``noise_shape=(1, F)``: one mask for the whole batch in each forward. Stacked, the samples of a chunk would
    share it; the probe sees the mask draw no more elements for two stacked rows than for one, and loops."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), dnn.Dropout(0.5, noise_shape=(1, None)), nn.Linear(8, 2)).eval()
    x = torch.randn(3, 4)
    assert mc._stack_dims(model, x, "auto") == (0, 0)
    with torch.no_grad(), mc.mc_dropout(model), mc._SampleStreams(0, 3, 8) as streams:
        assert mc._per_chunk(model[1:], model[0](x[:1]), 0, 3, 8, 64, streams, check=True) == 1
    kw = {"samples": 8, "seed": 2, "task": "regression", "keep_samples": True}
    auto = mc.predict(model, x, **kw).samples
    assert torch.equal(auto, mc.predict(model, x, vectorize=False, **kw).samples)
    assert len({tuple(sample.flatten().tolist()) for sample in auto}) == 8


class _WeightNoise(nn.Module):
    """A dropkit op that seeds through ``functional._seed`` (no mask spec) applied to a weight or to activations."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.fc, self.out = kind, nn.Linear(6, 6), nn.Linear(6, 2)
        self.drop = dnn.WeightDrop(nn.Linear(6, 6), ["weight"], p=0.5) if kind == "weightdrop" else None

    def forward(self, x):
        if self.kind == "weightdrop":
            return self.out(self.drop(x))
        if self.kind == "drop_connect":
            return self.out(dkF.drop_connect_linear(x, self.fc.weight, self.fc.bias, p=0.5, training=self.training))
        if self.kind == "noise-on-weight":
            w = dkF.gaussian_noise(self.fc.weight, 0.5, training=self.training)
            return self.out(nn.functional.linear(x, w, self.fc.bias))
        return self.out(dkF.gaussian_noise(self.fc(x), 0.5, training=self.training))  # on activations


@pytest.mark.parametrize("kind", ["weightdrop", "drop_connect", "noise-on-weight", "noise-on-activations"])
def test_predict_sees_masks_drawn_outside_mask_specs(kind):
    """Second review: ops seeded through functional._seed (WeightDrop, DropConnect, Gaussian noise) recorded
    nothing in the shared-mask check, so a weight's mask was shared by every stacked sample. They now say how
    many values they draw (None for a weight's): activations' noise still stacks, weights' masks loop."""
    torch.manual_seed(0)
    model, x = _WeightNoise(kind).eval(), torch.randn(5, 6)
    with torch.no_grad(), mc.mc_dropout(model), mc._SampleStreams(0, 5, 8) as streams:
        per_chunk = mc._per_chunk(model, x[:1], 0, 5, 8, 64, streams, check=True)
    assert (per_chunk > 1) == (kind == "noise-on-activations")
    assert mc._mixes_batch(model) == (kind == "weightdrop")  # WeightDrop says so itself, as DropConnect layers do
    samples = mc.predict(model, x, samples=8, seed=1, task="regression", keep_samples=True).samples
    assert len({tuple(sample.flatten().tolist()) for sample in samples}) == 8


def test_predict_does_not_fold_a_noise_layer_into_the_prefix_nor_compound_an_inplace_first_layer():
    """Second review: a Sequential's layer calling dkF.gaussian_noise(training=self.training) ran once, in the
    deterministic prefix (one noise draw for all samples); an in-place Dropout2d right after the prefix, one sample
    per forward, edited the cached prefix output, so the masks compounded (sample norms 5.4, 8.2, 11.5, ...)."""

    class NoiseIn(nn.Module):
        def forward(self, x):
            return dkF.gaussian_noise(x, 0.5, training=self.training)

    torch.manual_seed(0)
    noisy = nn.Sequential(NoiseIn(), nn.Linear(4, 8), nn.Dropout(0.1), nn.Linear(8, 2)).eval()
    assert mc._split_sequential(noisy)[0] is None
    x = torch.randn(6, 4)
    auto = mc.predict(noisy, x, samples=300, seed=1, task="regression", keep_samples=True).samples
    loop = mc.predict(noisy, x, samples=300, seed=1, task="regression", keep_samples=True, vectorize=False).samples
    assert bool((auto.var(0) > 0.5 * loop.var(0)).all() and (auto.var(0) < 2 * loop.var(0)).all())

    inplace = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Dropout2d(0.25, inplace=True), nn.ReLU(), nn.Flatten()).eval()
    x = torch.randn(2, 1, 6, 6)
    x0 = x.clone()
    for kw in ({"max_rows": 2}, {"vectorize": False}):  # one sample per forward: on the prefix output, on x
        samples = mc.predict(inplace, x, samples=40, seed=1, task="regression", keep_samples=True, **kw).samples
        with torch.no_grad():
            clean = torch.relu(inplace[0](x)).flatten(1)
        _check_dropout_samples_channels(samples, clean, 0.25)
    assert torch.equal(x, x0)


def _check_dropout_samples_channels(samples, clean, p):
    """Every sample is ``clean`` with whole channels dropped and the rest scaled by 1 / (1 - p): no compounding."""
    kept = samples != 0
    assert torch.allclose(torch.where(kept, samples, clean / (1 - p)), clean.expand_as(samples) / (1 - p), atol=1e-5)


def test_predict_with_seed_leaves_cuda_generators_alone(monkeypatch):
    """Second review: torch.manual_seed also seeds CUDA (queued until CUDA starts when it has not), which
    fork_rng(devices=[]) does not restore. Without CUDA started, only the CPU generator is seeded."""
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    model, x = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 2)).eval(), torch.randn(4, 3)
    state = torch.get_rng_state()
    first = mc.predict(model, x, samples=5, seed=7).mean
    assert calls == [] and torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first, mc.predict(model, x, samples=5, seed=7).mean)


class _Sorted(nn.Module):
    """Packs a sequence-first batch by length: needs sorted rows (``sort=False``) or sorts them (``True``)."""

    def __init__(self, sort: bool):
        super().__init__()
        self.sort, self.rnn, self.drop, self.head = sort, nn.LSTM(4, 8), nn.Dropout(0.3), nn.Linear(8, 1)

    def forward(self, x):
        lengths = (x != 0).any(-1).sum(0)
        order = torch.sort(lengths, descending=True, stable=True).indices if self.sort else torch.arange(x.shape[1])
        packed = nn.utils.rnn.pack_padded_sequence(x[:, order], lengths[order])  # enforce_sorted=True
        return self.head(self.drop(self.rnn(packed)[1][0][-1]))  # sorted: rows come out in length order


class _Tiled(_SeqFirst):
    """One score per row, broadcast to ``(N, N)`` by ``x.shape[1]``: two output dimensions follow the rows."""

    def forward(self, x):
        return self.head(self.drop(self.rnn(x)[0][-1]))[:, 0].expand(x.shape[1], -1)


class _Asserts(_SeqFirst):
    """Refuses any batch size but its own (an ``assert``, not a RuntimeError)."""

    def forward(self, x):
        assert x.shape[1] == 3
        return super().forward(x)


@pytest.mark.parametrize("lengths", [(6, 4, 3), (6, 6, 3)])
@pytest.mark.parametrize("model", [_Sorted(False), _Sorted(True), _Tiled(), _Asserts()], ids=type)
def test_predict_loops_a_model_that_stacked_rows_would_break(model, lengths):
    """Adversarial review: the row check on the pair missed a batch that must stay sorted (a crash), a model that
    reorders rows (samples mixed up), an output with two row dimensions (wrong shape) and an assert (a crash).
    It now checks the first and the last row (a sorted batch's extremes) laid out as two stacked samples
    (a, b, a, b), and treats any error as "loop"."""
    torch.manual_seed(0)
    x = torch.randn(6, 3, 4)
    for row, length in enumerate(lengths):  # sorted; with two equal, the first two rows look sorted when stacked
        x[length:, row] = 0
    model.eval()
    assert mc._stack_dims(model, x, "auto") is None
    kw = {"samples": 6, "seed": 2, "task": "regression", "keep_samples": True}
    assert torch.equal(mc.predict(model, x, **kw).samples, mc.predict(model, x, vectorize=False, **kw).samples)


def test_row_check_passes_row_wise_models_and_fails_mixing_ones():
    torch.manual_seed(0)
    seq = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1)
    batch = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
    assert not mc._rows_independent(seq.eval(), torch.randn(7, 3, 16))
    assert mc._rows_independent(batch.eval(), torch.randn(7, 3, 16))
    assert mc._rows_independent(_CustomCNN().eval(), torch.randn(1, 1, 8, 8))  # one row: it, and it rolled

    class AlwaysOn(nn.Module):  # dropkit dropout left on in eval: row-aligned masks, as predict draws them
        def __init__(self, noise: bool):
            super().__init__()
            self.fc, self.noise = nn.Linear(6, 6), noise

        def forward(self, x):
            h = dkF.dropout(self.fc(x), 0.5)
            return h + torch.randn_like(h) if self.noise else h

    assert mc._rows_independent(AlwaysOn(False).eval(), torch.randn(4, 6))
    assert not mc._rows_independent(AlwaysOn(True).eval(), torch.randn(4, 6))  # torch's draws: the loop, safe

    class Pooled(nn.Module):  # mixes the batch in eval: a mean over dimension 0
        def forward(self, x):
            return nn.functional.dropout(x - x.mean(0), 0.5, self.training)

    x = torch.randn(4, 6)
    assert not mc._rows_independent(Pooled().eval(), x)
    assert mc._stack_dims(Pooled().eval(), x, "auto") == (1, 1)  # its columns are independent: stacked there
    samples = mc.predict(Pooled().eval(), x, 60, seed=1, task="regression", keep_samples=True).samples
    _check_dropout_samples(samples, x - x.mean(0), 0.5)


def test_predict_names_a_model_that_returns_no_tensor():
    class Dict(nn.Module):  # the Hugging Face habit: a dict or ModelOutput
        def __init__(self):
            super().__init__()
            self.fc, self.drop = nn.Linear(3, 2), nn.Dropout(0.5)

        def forward(self, x):
            return {"logits": self.fc(self.drop(x))}

    for vectorize in ("auto", False):
        with pytest.raises(TypeError, match=r"model must return a tensor, but Dict returned 'dict'"):
            mc.predict(Dict().eval(), torch.randn(4, 3), samples=3, vectorize=vectorize)


class _Reversed(nn.Module):
    """A sequence-first LSTM read backwards: step 0 depends on step 1, not the other way."""

    def __init__(self):
        super().__init__()
        self.rnn, self.drop, self.head = nn.LSTM(4, 8), nn.Dropout(0.3), nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.drop(self.rnn(x.flip(0))[0].flip(0)))


class _BatchMean(nn.Module):
    """Adds the batch mean after the dropout: rows couple through it."""

    def __init__(self):
        super().__init__()
        self.fc, self.drop, self.out = nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)

    def forward(self, x):
        h = self.drop(self.fc(x))
        return self.out(h + h.mean(0, keepdim=True))


def _padded(x):
    x[0] = x[1] = 0  # left padding: the first two steps are the same
    return x


@pytest.mark.parametrize(
    ("model", "x"),
    [
        pytest.param(_Reversed(), torch.randn(5, 3, 4), id="coupling-backwards"),
        pytest.param(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1), torch.randn(1, 3, 16), id="one-step"),
        pytest.param(
            nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1), _padded(torch.randn(5, 3, 16)), id="equal-first-rows"
        ),  # fmt: skip
        pytest.param(_BatchMean(), torch.randn(1, 4), id="batch-mean-one-row"),
    ],
)
def test_row_check_sees_couplings_that_one_direction_or_equal_rows_would_hide(model, x):
    """Adversarial review: the check compares both rows, and two different ones."""
    torch.manual_seed(0)
    model.eval()
    assert not mc._rows_independent(model, x)
    dims = mc._stack_dims(model, x, "auto")
    kw = {"samples": 400, "seed": 2, "task": "regression", "keep_samples": True}
    auto, loop = mc.predict(model, x, **kw).samples, mc.predict(model, x, vectorize=False, **kw).samples
    if dims is None:
        torch.testing.assert_close(auto, loop)
    else:  # stacked beside the rows (dimension 1): other draws, the same law (means within 5 standard errors)
        assert dims[0] == 1
        se = ((auto.var(0) + loop.var(0)) / auto.shape[0]).sqrt()
        assert bool(((auto.mean(0) - loop.mean(0)).abs() <= 5 * se + 1e-6).all())


def test_row_check_keeps_its_tolerance_with_infinite_outputs_and_leaves_the_generator_alone():
    class MaskedClass(_SeqFirst):  # a class masked with -inf must not switch the comparison's tolerance off
        def forward(self, x):
            return super().forward(x).masked_fill(torch.tensor([True, False]), float("-inf"))

    torch.manual_seed(0)
    model = MaskedClass().eval()
    assert not mc._rows_independent(model, torch.randn(5, 3, 4))

    class Noisy(nn.Module):  # draws from torch's generator in eval: the check must not move it under seed=
        def __init__(self):
            super().__init__()
            self.fc, self.drop = nn.Linear(4, 2), nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(self.fc(x)) + 0.01 * torch.randn(x.shape[0], 2)

    noisy, x = Noisy().eval(), torch.randn(3, 4)
    state = torch.get_rng_state()
    mc.predict(noisy, x, samples=4, seed=1)
    assert torch.equal(torch.get_rng_state(), state)


def test_row_check_of_one_row_of_token_ids_uses_the_row_rolled():
    """One sentence (N = 1): the second row is the same ids in another order, so an Embedding model still stacks."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 8), nn.Dropout(0.3), nn.Flatten(), nn.Linear(8 * 6, 3)).eval()
    ids = torch.randint(0, 50, (1, 6))
    assert torch.equal(mc._two_rows(ids), torch.cat([ids, ids.roll(1, -1)]))
    assert mc._rows_independent(model, ids)
    assert mc._two_rows(torch.full((1, 6), 7)) is None  # a constant row of ids: no valid different row, the loop
    assert torch.equal(mc._two_rows(torch.zeros(1, 3)), torch.tensor([[0.0, 0, 0], [1, 1, 1]]))


def test_an_input_the_masks_cannot_change_is_not_an_inactive_model():
    """Zero rows through an active dropout give equal samples: only a model that drew no mask is refused."""
    model = nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 3)).eval()
    result = mc.predict(model, torch.zeros(3, 4), samples=5)
    assert torch.allclose(result.mean, torch.softmax(model(torch.zeros(3, 4)), 1))
    with pytest.raises(RuntimeError, match="all 5 MC samples are identical"):
        mc.predict(nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.0)).eval(), torch.randn(3, 4), samples=5)
    with pytest.raises(ValueError, match=r"task='classification' needs logits of shape \(N, C\)"):
        mc.predict(nn.Sequential(nn.Linear(4, 1), nn.Dropout(0.5), nn.Flatten(0)).eval(), torch.randn(3, 4), 5)


_HEAP_PROBE = """
import ctypes, sys, torch
from torch import nn
from dropkit import mc
libc = ctypes.CDLL(None)
if not hasattr(libc, "mallinfo2"):
    sys.exit(3)
class Info(ctypes.Structure):
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(n, ctypes.c_size_t) for n in names.split()]
libc.mallinfo2.restype = Info
if sys.argv[1] == "predict":  # chunks of 4 x 8 x 32768 fp32 temporaries: 4 MB
    model = nn.Sequential(nn.Linear(4, 32768), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32768, 2)).eval()
    mc.predict(model, torch.randn(8, 4), samples=8)
before = libc.mallinfo2().hblkhd
block = torch.empty(12 << 20, dtype=torch.uint8)  # three chunk temporaries
print(int(libc.mallinfo2().hblkhd > before))  # 1: glibc mapped it afresh (its pages faulted in on first touch)
"""


@pytest.mark.parametrize("call", ["predict", "nothing"])
def test_predict_readies_glibcs_heap_for_its_chunks(call):
    # A 12 MB block, three of a chunk's 4 MB temporaries, comes from glibc's heap once predict has run (its
    # thresholds raised to four times the chunk's temporaries, _settle_heap); in a process that ran nothing it is
    # mapped afresh. A fresh interpreter for each, since the thresholds are process-wide and only rise.
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _HEAP_PROBE, call], capture_output=True, text=True, timeout=300)
    if run.returncode == 3:
        pytest.skip("not glibc (no mallinfo2): _settle_heap is a plain allocation there")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[-1] == ("0" if call == "predict" else "1")
