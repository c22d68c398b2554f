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
    rows = re.findall(r"^(no dropout|Dropout2d|Dropout)\s+test accuracy (\S+)\s+test loss (\S+)$", out, re.MULTILINE)
    assert [r[0] for r in rows] == ["no dropout", "Dropout", "Dropout2d"]
    for _, acc, loss in rows:
        assert 0.2 < float(acc) <= 1.0  # two epochs on 200 digits: far above chance (0.1), not yet good
        assert float(loss) > 0


def test_cnn_builds_the_dropout_it_names():
    module = _load("cnn_spatial_dropout")
    import dropkit.nn as dnn

    kinds = {kind: [type(m) for m in module.make_cnn(kind, 0.2) if "Dropout" in type(m).__name__]
             for kind in ("none", "element", "channel")}  # fmt: skip
    assert kinds == {"none": [], "element": [dnn.Dropout] * 2, "channel": [dnn.Dropout2d] * 2}
    assert module.make_cnn("channel", 0.2)(torch.randn(3, 1, 8, 8)).shape == (3, 10)


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


@pytest.mark.parametrize("name", ["cnn_spatial_dropout", "mc_active_learning"])
def test_examples_document_their_quick_mode(name):
    text = (EXAMPLES / f"{name}.py").read_text()
    assert f"python examples/{name}.py --quick" in text
