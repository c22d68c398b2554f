"""The example scripts run in their quick mode and print what their docstrings promise."""

import importlib.util
import pathlib
import re

import pytest
import torch

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_quick(name: str, capsys) -> str:
    module = _load(name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: intra-op threads only contend on a loaded machine
    try:
        assert module.main(["--quick"]) == 0
    finally:
        torch.set_num_threads(threads)
    return capsys.readouterr().out


def test_cnn_spatial_dropout_quick(capsys):
    out = _run_quick("cnn_spatial_dropout", capsys)
    pattern = r"^(no dropout|Dropout2d|DropBlock2d|Dropout)\s+test accuracy (\S+)\s+test loss (\S+)$"
    rows = re.findall(pattern, out, re.MULTILINE)
    assert [r[0] for r in rows] == ["no dropout", "Dropout", "Dropout2d", "DropBlock2d"]
    for _, acc, loss in rows:
        assert 0.2 < float(acc) <= 1.0  # two epochs on 200 digits: far above chance (0.1), not yet good
        assert float(loss) > 0


def test_cnn_builds_the_dropout_it_names():
    module = _load("cnn_spatial_dropout")
    import dropkit.nn as dnn

    kinds = {kind: [type(m) for m in module.make_cnn(kind, 0.2) if "Drop" in type(m).__name__]
             for kind, _ in module.KINDS}  # fmt: skip
    assert kinds == {
        "none": [], "element": [dnn.Dropout] * 2, "channel": [dnn.Dropout2d] * 2, "block": [dnn.DropBlock2d] * 2,
    }  # fmt: skip
    blocks = [m for m in module.make_cnn("block", 0.2) if isinstance(m, dnn.DropBlock2d)]
    assert [(m.p, m.block_size) for m in blocks] == [(0.2, 3), (0.2, 2)]  # 3x3 on the 8x8 maps, 2x2 on the 4x4
    for kind, _ in module.KINDS:
        assert module.make_cnn(kind, 0.2)(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_mc_active_learning_quick(capsys):
    out = _run_quick("mc_active_learning", capsys)
    rows = re.findall(r"^\s*(\d+)\s+(\d\.\d+)\s+(\d\.\d+)$", out, re.MULTILINE)
    assert [int(r[0]) for r in rows] == [20, 30, 40]  # 2 per class, then +10 per round
    assert rows[0][1] == rows[0][2]  # both strategies start from the same labelled set and model
    for _, bald, rand in rows:
        assert 0.2 < float(bald) <= 1.0 and 0.2 < float(rand) <= 1.0


def test_bald_acquires_the_highest_mutual_information():
    module = _load("mc_active_learning")
    from dropkit import mc

    x_pool, y_pool, _, _ = module.load_digits(0)
    start = module.initial_labels(y_pool, 2)
    assert len(start) == 20 and sorted(y_pool[start].tolist()) == sorted(list(range(10)) * 2)
    model = module.fit(x_pool[start], y_pool[start], 0.5, 20, 0)
    mi = mc.predict(model, x_pool[:200], samples=8, seed=0).mutual_information
    # the acquisition rule of the example: top-k mutual information among the candidates
    assert torch.equal(mi.topk(5).indices.sort().values, (mi >= mi.topk(5).values.min()).nonzero().flatten())


def test_transformer_block_quick(capsys):
    out = _run_quick("transformer_block", capsys)
    if torch.cuda.is_available():
        assert "device cuda (dropout + add + LayerNorm: fused Triton kernel)" in out
    else:
        assert "device cpu (dropout + add + LayerNorm: composed ops)" in out
    row = r"train acc (\S+) loss (\S+)\s+test acc (\S+) loss (\S+)\s+gap (\S+)"
    rows = re.findall(rf"^(p = 0|regularised)\s+{row}$", out, re.MULTILINE)
    assert [r[0] for r in rows] == ["p = 0", "regularised"]
    for _, train_acc, train_loss, test_acc, test_loss, gap in rows:
        # two epochs on 200 digits: above chance (0.1), far from fitted; the gap is test minus train loss
        assert 0.15 < float(train_acc) <= 1.0 and 0.15 < float(test_acc) <= 1.0
        assert 0 < float(train_loss) < 2.3  # below the loss of a uniform guess, ln 10
        assert float(gap) == pytest.approx(float(test_loss) - float(train_loss), abs=2e-4)


def test_transformer_block_wires_the_fused_norm_drop_path_and_attention_dropout():
    module = _load("transformer_block")
    import dropkit.nn as dnn
    from dropkit.functional import drop_path_rates

    model = module.DigitsTransformer(p=0.1, attn_p=0.2, drop_path=0.3, depth=4)
    norms = [m for m in model.modules() if isinstance(m, dnn.DropoutAddLayerNorm)]
    assert len(norms) == 2 * 4 + 1 and all(m.p == 0.1 for m in norms)
    assert [m.prenorm for m in norms] == [True] * 8 + [False]
    assert [m.p for m in model.modules() if isinstance(m, dnn.Dropout)] == [0.2] * 4  # attention dropout
    # DropPath in module order: each block's (incoming branch, attention branch), then the final norm's
    rates = drop_path_rates(0.3, 4)
    expected = [r for i in range(4) for r in ((rates[i - 1] if i else 0.0), rates[i])] + [rates[-1]]
    assert [m.p for m in model.modules() if isinstance(m, dnn.DropPath)] == expected
    x = torch.randn(5, 8, 8)
    assert model(x).shape == (5, 10)
    model.eval()
    torch.testing.assert_close(model(x), model(x))  # eval: deterministic
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(0)
    torch.testing.assert_close(model(x), a)  # training: torch.manual_seed reproduces every mask
    assert not torch.allclose(model(x), a)  # and the next call draws new ones


def test_transformer_block_at_p0_is_the_plain_pre_norm_block():
    # every rate 0: the fused ops reduce to residual adds and LayerNorms; check against a hand-written pre-norm
    # transformer (x + attn(LN(x)), x + mlp(LN(x)), final LN) with the same weights
    module = _load("transformer_block")
    torch.manual_seed(0)
    model = module.DigitsTransformer(0.0, 0.0, 0.0, depth=2).train()
    x = torch.randn(3, 8, 8)
    stream = torch.cat([model.cls.expand(3, -1, -1), model.embed(x)], dim=1) + model.pos
    for block in model.blocks:
        ln1 = torch.nn.functional.layer_norm(stream, (64,), block.norm1.weight, block.norm1.bias)
        stream = stream + block.attn(ln1)
        ln2 = torch.nn.functional.layer_norm(stream, (64,), block.norm2.weight, block.norm2.bias)
        stream = stream + block.mlp(ln2)
    out = torch.nn.functional.layer_norm(stream, (64,), model.norm_f.weight, model.norm_f.bias)
    torch.testing.assert_close(model(x), model.head(out[:, 0]))


@pytest.mark.parametrize("name", ["cnn_spatial_dropout", "mc_active_learning", "transformer_block"])
def test_examples_document_their_quick_mode(name):
    text = (EXAMPLES / f"{name}.py").read_text()
    assert f"python examples/{name}.py --quick" in text


def test_transformer_block_samples_under_mc_dropout():
    # every stochastic path of the block (fused-norm dropout, DropPath rowscale, attention dropout) is a dropkit
    # op, so MC dropout turns them on in an eval model and seeds make the samples reproducible
    module = _load("transformer_block")
    from dropkit import mc

    torch.manual_seed(0)
    model = module.DigitsTransformer(0.1, 0.1, 0.2).eval()
    x = torch.randn(3, 8, 8)
    result = mc.predict(model, x, samples=6, seed=0, keep_samples=True)
    assert result.samples.shape == (6, 3, 10) and float(result.samples.std(0).mean()) > 1e-3
    torch.testing.assert_close(mc.predict(model, x, samples=6, seed=0).mean, result.mean)
    assert not model.training and not model.blocks[0].drop_path1.training  # flags restored
