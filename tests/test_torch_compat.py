"""Drop-in compatibility with torch.nn.Dropout*: the behaviours torch's own dropout tests assert, and swaps."""

from __future__ import annotations

import copy
import inspect
import itertools
import math
import pickle
import random

import pytest
import torch
from torch import nn

import dropkit.nn as dnn
from dropkit import functional as F
from dropkit import surgery

PAIRS = [
    (dnn.Dropout, nn.Dropout, F.dropout, torch.nn.functional.dropout),
    (dnn.Dropout1d, nn.Dropout1d, F.dropout1d, torch.nn.functional.dropout1d),
    (dnn.Dropout2d, nn.Dropout2d, F.dropout2d, torch.nn.functional.dropout2d),
    (dnn.Dropout3d, nn.Dropout3d, F.dropout3d, torch.nn.functional.dropout3d),
    (dnn.AlphaDropout, nn.AlphaDropout, F.alpha_dropout, torch.nn.functional.alpha_dropout),
    (
        dnn.FeatureAlphaDropout,
        nn.FeatureAlphaDropout,
        F.feature_alpha_dropout,
        torch.nn.functional.feature_alpha_dropout,
    ),
]
IDS = [p[1].__name__ for p in PAIRS]


@pytest.fixture(autouse=True)
def _seeded():
    """Seed like torch's test harness does (SEED = 1234) so the ported statistical checks are deterministic."""
    torch.manual_seed(1234)
    random.seed(1234)


@pytest.mark.parametrize(("ours", "theirs", "f_ours", "f_theirs"), PAIRS, ids=IDS)
def test_signatures_defaults_repr_and_isinstance(ours, theirs, f_ours, f_theirs):
    sig_ours, sig_theirs = inspect.signature(f_ours), inspect.signature(f_theirs)
    positional = [p for p in sig_ours.parameters.values() if p.kind != p.KEYWORD_ONLY]
    assert [(p.name, p.default) for p in positional] == [(p.name, p.default) for p in sig_theirs.parameters.values()]
    assert all(p.kind == p.KEYWORD_ONLY for p in list(sig_ours.parameters.values())[len(positional) :])
    assert repr(ours(0.3)) == repr(theirs(0.3))
    assert repr(ours(0.3, True)) == repr(theirs(0.3, True))
    assert isinstance(ours(), theirs)
    assert ours().state_dict() == theirs().state_dict() == {}


def _model(cls2d, cls):
    return nn.Sequential(nn.Conv2d(3, 4, 3), cls2d(0.2), nn.Flatten(), nn.Linear(4 * 6 * 6, 10), cls(0.5))


def test_swapping_classes_keeps_state_dict_both_ways():
    theirs = _model(nn.Dropout2d, nn.Dropout)
    ours = _model(dnn.Dropout2d, dnn.Dropout)
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(ours.eval()(x), theirs.eval()(x))


def test_modules_deepcopy_and_pickle_keep_their_seed_stream():
    m = dnn.Dropout(0.5, seed=4)
    x = torch.ones(100)
    clone, restored = copy.deepcopy(m), pickle.loads(pickle.dumps(m))
    first = m(x)
    assert torch.equal(clone(x), first) and torch.equal(restored(x), first)


def _test_dropout(cls, input, memory_format=torch.contiguous_format):
    """torch's _test_dropout: output mean, layout of output and grad, inplace variant, eval."""
    p = 0.2
    input = input.fill_(1 - p)
    for inplace in (False, True):
        module = cls(p, inplace)
        input_var = input.clone(memory_format=memory_format).requires_grad_()
        output = module(input_var + 0 if inplace else input_var)
        assert output.is_contiguous(memory_format=memory_format)
        assert abs(output.data.mean() - (1 - p)) < 0.05
        output.backward(input)
        assert input_var.grad.is_contiguous(memory_format=memory_format)
        assert abs(input_var.grad.data.mean() - (1 - p)) < 0.05
    for inplace in (True, False):
        module = cls(p, inplace).eval()
        assert torch.equal(input, module(input))
    str(module), repr(module)


def _test_dropout_discontiguous(cls, memory_format=torch.contiguous_format):
    for p in [0, 1e-10]:
        inp = torch.ones(2, 3, 3, 3)
        inp_discontiguous = torch.empty(2, 3, 3, 6, memory_format=memory_format)[..., ::2]
        inp_discontiguous.copy_(inp)
        out = cls(p=p)(inp_discontiguous)
        if p != 0:
            assert out.is_contiguous(memory_format=memory_format)
        assert torch.equal(inp_discontiguous, out)


def _test_dropout_stride_mean_preserve(cls):
    def invert_perm(p):
        d = {x: i for i, x in enumerate(p)}
        return (d[0], d[1], d[2], d[3])

    inp = torch.ones(2, 3, 4, 5)
    for perm in itertools.permutations((0, 1, 2, 3), r=4):
        for shift in [(0, 0), (1, 0), (0, 1), (1, 1)]:
            for p in [1e-10, 0.3, 0.5, 0.7]:
                permuted_inp = inp.permute(perm).contiguous().permute(invert_perm(perm))
                permuted_inp = permuted_inp[shift[0] :, shift[1] :, :, :]
                out = cls(p=p)(permuted_inp)
                assert out.permute(perm).is_contiguous()
                torch.testing.assert_close(inp.mean(), out.mean(), rtol=0.5, atol=0.5)
                if p == 1e-10:
                    assert torch.equal(permuted_inp, out)
                else:
                    assert not torch.equal(permuted_inp, out)


def _test_dropoutNd_no_batch(dropout, input):
    torch.manual_seed(7)
    res_no_batch = dropout(input.clone())
    torch.manual_seed(7)
    res_batched = dropout(input.clone().unsqueeze(0)).squeeze(0)
    assert torch.equal(res_no_batch, res_batched)


def _test_dropoutNd_channel_zero(dropout, input):
    shape = input.shape
    channel_numel = torch.tensor(shape[2:]).prod()
    result = dropout(input)
    for b, c in itertools.product(range(shape[0]), range(shape[1])):
        assert result[b, c].count_nonzero() in (0, channel_numel)


def test_Dropout():
    _test_dropout(dnn.Dropout, torch.empty(1000))
    _test_dropout_discontiguous(dnn.Dropout)
    _test_dropout_discontiguous(dnn.Dropout, memory_format=torch.channels_last)
    _test_dropout_stride_mean_preserve(dnn.Dropout)
    _test_dropout(dnn.Dropout, torch.empty(1000).bfloat16())


def test_Dropout1d():
    N, C, L = random.randint(10, 15), random.randint(10, 15), random.randint(10, 15)
    _test_dropout(dnn.Dropout1d, torch.empty(N, C, L, dtype=torch.double))
    with pytest.raises(RuntimeError, match="Expected 2D or 3D input, but received a 4D input"):
        dnn.Dropout1d(p=0.5)(torch.rand(1, 2, 2, 2))
    with pytest.raises(RuntimeError, match="Expected 2D or 3D input, but received a 1D input"):
        dnn.Dropout1d(p=0.5)(torch.rand(2))
    input = torch.rand(50, 2)
    _test_dropoutNd_no_batch(dnn.Dropout1d(p=0.5), input)
    _test_dropoutNd_no_batch(dnn.Dropout1d(p=0.5, inplace=True), input)
    input = torch.ones(10, 4, 2)
    _test_dropoutNd_channel_zero(dnn.Dropout1d(p=0.5), input)
    _test_dropoutNd_channel_zero(dnn.Dropout1d(p=0.5, inplace=True), input)


def test_Dropout2d():
    b, w, h = random.randint(1, 5), random.randint(1, 5), random.randint(1, 5)
    input = torch.empty(1000, b, w, h)
    _test_dropout(dnn.Dropout2d, input)
    _test_dropout(dnn.Dropout2d, input, memory_format=torch.channels_last)
    _test_dropout_discontiguous(dnn.Dropout2d)
    _test_dropout_discontiguous(dnn.Dropout2d, memory_format=torch.channels_last)
    with pytest.warns(UserWarning, match="Received a 5-D input to dropout2d"):
        dnn.Dropout2d(p=0.5)(torch.rand(1, 2, 2, 2, 2))
    with pytest.warns(UserWarning, match="Received a 2-D input to dropout2d"):
        dnn.Dropout2d(p=0.5)(torch.rand(1, 2))
    with pytest.warns(UserWarning, match="assuming that channel-wise 1D dropout behavior is desired"):
        dnn.Dropout2d(p=0.5)(torch.rand(1, 2, 2))
    input = torch.ones(10, 4, 2, 2)
    _test_dropoutNd_channel_zero(dnn.Dropout2d(p=0.5), input)
    _test_dropoutNd_channel_zero(dnn.Dropout2d(p=0.5, inplace=True), input)


def test_Dropout3d():
    b, w, h, d = (random.randint(1, 5) for _ in range(4))
    input = torch.empty(1000, b, d, w, h)
    _test_dropout(dnn.Dropout3d, input)
    _test_dropout_discontiguous(dnn.Dropout3d)
    _test_dropout_discontiguous(dnn.Dropout3d, memory_format=torch.channels_last)
    with pytest.warns(UserWarning, match="Received a 6-D input to dropout3d"):
        dnn.Dropout3d(p=0.5)(torch.rand(1, 2, 2, 2, 2, 2))
    with pytest.warns(UserWarning, match="Received a 3-D input to dropout3d"):
        dnn.Dropout3d(p=0.5)(torch.rand(1, 2, 2))
    input = torch.rand(50, 2, 2, 2)
    _test_dropoutNd_no_batch(dnn.Dropout3d(p=0.5), input)
    _test_dropoutNd_no_batch(dnn.Dropout3d(p=0.5, inplace=True), input)
    input = torch.ones(10, 4, 2, 2, 2)
    _test_dropoutNd_channel_zero(dnn.Dropout3d(p=0.5), input)
    _test_dropoutNd_channel_zero(dnn.Dropout3d(p=0.5, inplace=True), input)


def test_AlphaDropout_and_FeatureAlphaDropout():
    for cls, input in [
        (dnn.AlphaDropout, torch.randn(5000)),
        (dnn.FeatureAlphaDropout, torch.randn(1000, 3, 2, 3, 4)),
        (dnn.FeatureAlphaDropout, torch.randn(50, 20, 64, 64)),
    ]:
        mean, std = input.mean(), input.std()
        for p in [0.2, 0.5, 0.8]:
            input_var = input.detach().clone().requires_grad_()
            output = cls(p)(input_var)
            assert abs(output.data.mean() - mean) < 0.1
            assert abs(output.data.std() - std) < 0.1
            output.backward(input)


def test_invalid_dropout_p_raises_value_error_like_torch():
    v = torch.ones(1)
    for cls in (dnn.Dropout, dnn.Dropout1d, dnn.Dropout2d, dnn.Dropout3d, dnn.AlphaDropout, dnn.FeatureAlphaDropout):
        for p in (-0.1, 1.1):
            with pytest.raises(ValueError):
                cls(p)
    for fn in (F.dropout, F.alpha_dropout, F.feature_alpha_dropout):
        for p in (-0.1, 1.1):
            with pytest.raises(ValueError):
                fn(v, p)


def test_statistics_match_torch():
    # same keep rate and scale as torch: compare the fraction of zeros and the kept value
    x = torch.ones(200_000)
    ours, theirs = F.dropout(x, 0.3), torch.nn.functional.dropout(x, 0.3)
    assert abs((ours == 0).float().mean() - (theirs == 0).float().mean()) < 0.01
    assert torch.equal(ours[ours != 0].unique(), theirs[theirs != 0].unique())


def test_eval_returns_the_input_itself_like_torch():
    for ours, theirs in [(dnn.Dropout(0.5).eval(), nn.Dropout(0.5).eval()), (dnn.Dropout2d(0.5).eval(), None)]:
        x = torch.randn(2, 3, 4, 4)
        assert ours(x) is x
        if theirs is not None:
            assert theirs(x) is x


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (F.dropout2d, torch.nn.functional.dropout2d),
        (F.dropout3d, torch.nn.functional.dropout3d),
        (F.feature_alpha_dropout, torch.nn.functional.feature_alpha_dropout),
    ],
)
@pytest.mark.parametrize("shape", [(), (3,)])
def test_channel_ops_check_the_rank_only_when_they_draw_a_mask_like_torch(ours, theirs, shape):
    """torch's feature dropouts need channels only to draw a mask: in eval and at p = 0 or 1 any rank passes.

    (OpInfo's ``feature_alpha_dropout`` "without_train" samples are such inputs, of shapes ``(S,)`` and ``()``.)
    """
    import warnings

    x = torch.ones(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the unusual-rank warnings, which both give
        for p, training in [(0.5, False), (0.0, True), (1.0, True)]:
            torch.testing.assert_close(ours(x, p, training), theirs(x, p, training))
        try:
            expected = theirs(x, 0.5, True)
        except RuntimeError:
            with pytest.raises(RuntimeError, match="at least"):
                ours(x, 0.5, True)
        else:
            assert ours(x, 0.5, True).shape == expected.shape


def test_integer_input_in_eval_passes_through_like_torch():
    x = torch.arange(6)
    assert F.dropout(x, 0.5, training=False) is x
    for op in (F.dropout, F.alpha_dropout, F.feature_alpha_dropout, F.dropout1d):  # p = 0: the input, any dtype
        y = x.reshape(2, 3)
        assert op(y, 0.0, True) is y and torch.nn.functional.dropout(y, 0.0, True) is y
    with pytest.raises(TypeError, match="input must be a floating-point tensor in training, but got torch.int64."):
        F.dropout(x, 0.5)


@pytest.mark.parametrize(("ours", "theirs", "f_ours", "f_theirs"), PAIRS, ids=IDS)
def test_a_torch_module_switched_to_its_twin_class_works(ours, theirs, f_ours, f_theirs):
    """``m.__class__ = twin`` (or unpickling under a remapped class) leaves no dropkit attribute set: defaults apply."""
    module = theirs(0.5)
    module.__class__ = ours
    assert repr(module) == repr(ours(0.5))
    x = torch.ones({nn.Dropout1d: (2, 3, 4), nn.Dropout3d: (2, 3, 2, 2, 2)}.get(theirs, (2, 3, 4, 4)))
    torch.manual_seed(0)
    expected = ours(0.5)(x)
    torch.manual_seed(0)
    assert torch.equal(module(x), expected)
    restored = pickle.loads(pickle.dumps(module))
    assert type(restored) is ours and torch.equal(restored.eval()(x), x)


@pytest.mark.parametrize("theirs", [nn.AlphaDropout, nn.FeatureAlphaDropout])
def test_alpha_modules_ignore_inplace_as_torchs_do(theirs):
    """torch's alpha modules store ``inplace`` but never pass it on; a swap must not start editing the input."""
    model = nn.Sequential(theirs(0.5, inplace=True))
    x = torch.ones(2, 3, 4)
    model(x)
    assert torch.equal(x, torch.ones(2, 3, 4))  # torch's module left it alone
    swapped = surgery.swap_dropout(model)
    assert swapped[0].inplace and "inplace=True" in repr(swapped[0])
    y = swapped(x)
    assert torch.equal(x, torch.ones(2, 3, 4)) and not torch.equal(y, x)
    leaf = torch.ones(2, 3, 4, requires_grad=True)  # an in-place op on a leaf would raise
    swapped(leaf).sum().backward()


def test_dispatch_subclasses_run_on_torch_ops_with_the_same_masks():
    """A subclass that handles ops in ``__torch_dispatch__`` (DTensor's kind) has no storage for the numba path."""
    from torch.testing._internal.two_tensor import TwoTensor

    x = torch.randn(4, 3, 5)
    pair = TwoTensor(x, x.clone())
    for op in (F.dropout, F.dropout1d, F.alpha_dropout, F.gaussian_dropout):
        y = op(pair, 0.5, True, seed=3)
        assert type(y) is TwoTensor
        assert torch.equal(y.a, op(x, 0.5, True, seed=3)) and torch.equal(y.b, y.a)
    module = dnn.Dropout2d(0.5, seed=4)
    assert type(module(TwoTensor(x[None], x[None].clone()))) is TwoTensor


def test_dispatch_modes_see_the_ops_and_fake_tensors_pass():
    """FLOP counters, loggers and fake-tensor tracing see torch ops; the numba kernels would be invisible to them."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    x = torch.randn(64)
    with Log():
        y = F.dropout(x, 0.5, seed=3)
    assert torch.equal(y, F.dropout(x, 0.5, seed=3)) and len(seen) > 1  # the mask is drawn by ops it saw
    with FakeTensorMode():
        fake = dnn.Dropout2d(0.5).train()(torch.ones(2, 3, 4, 4))
        assert fake.shape == (2, 3, 4, 4)


@pytest.mark.parametrize("layout", [torch.strided, torch.jagged], ids=["strided", "jagged"])
def test_nested_tensors_take_elementwise_dropout_like_torch(layout):
    """torch's test_nestedtensor.py::test_dropout: p=0 is the input, p=1 zeros, else a nested result."""
    a, b = torch.randn(2, 3), torch.randn(4, 3)
    nested = torch.nested.as_nested_tensor([a, b], layout=layout)
    assert F.dropout(nested, 0.0) is nested and F.dropout(nested, 0.5, training=False) is nested
    assert all(torch.equal(t, torch.zeros_like(t)) for t in F.dropout(nested, 1.0).unbind())
    y = F.dropout(nested, 0.5, seed=3)
    assert y.is_nested and y.layout == layout
    flat = torch.cat([t.reshape(-1) for t in y.unbind()])  # the mask the concatenated components get
    assert torch.equal(flat, F.dropout(torch.cat([a.reshape(-1), b.reshape(-1)]), 0.5, seed=3))
    assert dnn.Dropout(0.5)(nested).is_nested
    with pytest.raises(ValueError, match="element-wise dropout"):
        F.dropout2d(torch.nested.as_nested_tensor([torch.randn(2, 3, 4)], layout=layout), 0.5)
    for op in (F.alpha_dropout, F.gaussian_dropout, F.drop_path):  # a clear error, not an internal one
        with pytest.raises(ValueError, match="element-wise dropout"):
            op(nested, 0.5, True)
    with pytest.raises(ValueError, match="bias_dropout_add: nested tensors take element-wise dropout"):
        F.bias_dropout_add(nested, None, nested, 0.5, True)


def _refused_inplace_inputs():
    def no_grad_view():
        base = torch.ones(3, 4, requires_grad=True).clone()
        with torch.no_grad():
            return base[0]

    return {
        "leaf": lambda: torch.nn.Parameter(torch.ones(3, 4)),
        "view of a leaf": lambda: torch.nn.Parameter(torch.ones(3, 4))[0],
        "view made under no_grad": no_grad_view,
        "output of unbind": lambda: torch.ones(3, 4, requires_grad=True).clone().unbind(0)[0],
    }


@pytest.mark.parametrize("case", list(_refused_inplace_inputs()))
@pytest.mark.parametrize(
    "op",
    [
        lambda t, **kw: F.dropout(t, 0.5, inplace=True, **kw),
        lambda t, **kw: F.alpha_dropout(t, 0.5, True, inplace=True, **kw),
        lambda t, **kw: F.gaussian_dropout(t, 0.5, inplace=True, **kw),
        lambda t, **kw: dnn.Dropout(0.5, inplace=True)(t),
    ],
    ids=["dropout", "alpha_dropout", "gaussian_dropout", "Dropout module"],
)
def test_a_refused_inplace_call_leaves_the_tensor_untouched(case, op):
    # torch refuses these in-place edits before writing; so must dropkit (its Functions' own check comes after)
    make = _refused_inplace_inputs()[case]
    with pytest.raises(RuntimeError) as torch_error:
        torch.nn.functional.dropout(make(), 0.5, inplace=True)
    t = make()
    before = t.detach().clone()
    with pytest.raises(RuntimeError) as ours:
        op(t)
    assert torch.equal(t.detach(), before)
    assert str(ours.value).split(".")[0] == str(torch_error.value).split(".")[0]  # torch's own message


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize(
    "op",
    [F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout],
)
def test_integer_input_at_p_one_gives_zeros_as_torch(op, dtype):
    # torch's p = 1 is x * 0: no float is needed, so integer and bool tensors are taken (OpInfo's sample at p=1)
    shape = {F.dropout1d: (2, 3, 5), F.dropout3d: (2, 3, 4, 5, 2)}.get(op, (2, 3, 4, 5))
    x = torch.arange(math.prod(shape)).reshape(shape).to(dtype)
    reference = getattr(torch.nn.functional, op.__name__)(x, 1.0, True)
    out = op(x, 1.0, True)
    assert out.dtype == reference.dtype == dtype and torch.equal(out, reference)
    y = x.clone()
    assert op(y, 1.0, True, inplace=True) is y and torch.equal(y, reference)
    with pytest.raises(TypeError):  # at 0 < p < 1 the mask's scaling needs floats: refused, as before
        op(x, 0.5, True)


def test_noise_shape_zero_is_for_empty_inputs_only_in_calls():
    x = torch.ones(0, 3)
    assert F.dropout(x, 0.5, noise_shape=x.shape).shape == (0, 3)  # x.shape of an empty batch matches it
    with pytest.raises(ValueError):  # a layer's noise_shape is fixed at construction: Keras refuses a 0
        dnn.AlphaDropout(0.5, noise_shape=(4, 0))


def test_a_refused_inplace_block_drop_on_an_inference_tensor_leaves_it_untouched():
    with torch.inference_mode():
        x = torch.randn(2, 3, 6, 6)
    before = x.clone()
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor outside InferenceMode"):
        F.drop_block2d(x, 0.5, 2, inplace=True)
    assert torch.equal(x, before)


def test_training_takes_numpy_and_torch_bools():
    import numpy as np

    x = torch.ones(64)
    assert torch.equal(F.dropout(x, 0.5, np.False_), x)
    assert not torch.equal(dnn.Dropout(0.5)(x, training=np.True_), x)
    assert torch.equal(F.dropout(x, 0.5, torch.tensor(False)), x)
