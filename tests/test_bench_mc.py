"""The MC-dropout benchmark keeps working: a quick smoke run, in-process (timings are not asserted)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_mc.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_mc", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_mc"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_mc_quick_runs_every_case(tmp_path, capsys):
    module = _load()
    out, raw = tmp_path / "results.md", tmp_path / "raw.json"
    results = module.main(["--quick", "--out", str(out), "--json", str(raw)])

    ref = results["reference"]
    assert ref["samples"] == 5 and ref["path"] == "stacked 5 per forward, prefix once"
    timing = ref["timing"]
    assert timing.errors == {}
    assert set(timing.times) == {"loop", "stacked-torch", "floor", "dropkit", "copy"}
    for times in timing.times.values():
        assert len(times) == 2 and all(t > 0 for t in times)
    for num, den, _ in module.A_RATIOS:
        assert timing.ratio(num, den)["median"] > 0

    fallbacks = {r["name"]: r for r in results["fallbacks"]}
    assert set(fallbacks) == {"cnn", "backbone", "bn-train", "transformer", "lstm", "lstm-seq-first"}
    assert fallbacks["bn-train"]["path"].startswith("Python loop")
    assert fallbacks["lstm-seq-first"]["path"] == "stacked 5 per forward, whole model, in dim 1"
    assert fallbacks["lstm"]["path"] == "stacked 5 per forward, whole model"
    assert fallbacks["cnn"]["path"] == fallbacks["transformer"]["path"] == "stacked 5 per forward, whole model"
    for r in fallbacks.values():
        t = r["timing"]
        assert t.errors == {}
        assert {"loop", "dropkit", "copy"} <= set(t.times)
        assert t.ratio("dropkit", "copy")["median"] > 0
        assert all(x > 0 for times in t.times.values() for x in times)
        assert t.ratio("loop", "dropkit")["median"] > 0
    assert "stacked-torch" not in fallbacks["bn-train"]["timing"].times
    assert "stacked-torch" not in fallbacks["lstm-seq-first"]["timing"].times

    text = capsys.readouterr().out
    assert "loop/dropkit" in text and "dropkit/floor" in text and "dropkit/copy" in text
    md = out.read_text()
    assert md.startswith("## MC-dropout sampling speed") and md.count("|") > 40
    dumped = json.loads(raw.read_text())
    assert dumped["config"]["rounds"] == 2
    contenders = {"loop", "stacked-torch", "floor", "dropkit", "copy"}
    assert set(dumped["reference"]["timing"]["seconds_per_call"]) == contenders
    faults = dumped["reference"]["timing"]["minor_faults_per_call"]
    assert set(faults) == contenders and all(len(f) == 2 for f in faults.values())
    assert "page faults per call" in md and "allocator: glibc defaults" in md


def test_bench_mc_steady_heap_reruns_itself_with_the_glibc_tunables(tmp_path):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = tmp_path / "steady.md"
    subprocess.run([sys.executable, str(BENCH), "--quick", "--steady-heap", "--out", str(out)], env=env, check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    assert f"allocator: GLIBC_TUNABLES={_load().STEADY_HEAP}" in out.read_text()


def test_predict_path_follows_the_rule_at_full_size():
    module = _load()
    cfg = module.Config()
    models = {name: (model, x) for name, _, model, x, _ in module._b_models(cfg)}
    cnn, x = models["cnn"]  # 64 x 32 x 28 x 28 feature maps per sample: more than the budget, so the loop
    assert module.predict_path(cnn, x, cfg.samples_b) == "loop of samples, whole model"
    assert module.predict_path(cnn, x[:16], cfg.samples_b) == "loop of samples, whole model"  # 2 would fit
    assert module.predict_path(cnn, x[:4], cfg.samples_b) == "stacked 10 per forward, whole model"
    backbone, x = models["backbone"]  # the features run once: only their 64 x 8 x 8 output is repeated per chunk
    assert module.predict_path(backbone, x, cfg.samples_b) == "stacked 4 per forward, whole model"
    mlp = module.mlp().eval()
    x = module.torch.randn(cfg.batch_a, module.MLP_SIZES[0])
    assert module.predict_path(mlp, x, cfg.samples_a) == "stacked 4 per forward, prefix once"


def test_contenders_draw_probabilities_of_the_same_shape():
    module = _load()
    model = module.mlp().eval()
    x = module.torch.randn(4, module.MLP_SIZES[0])
    for make in (module.loop_call, module.stacked_call, module.floor_call):
        probs = make(model, x, 3)()
        assert probs.shape == (3, 4, module.MLP_SIZES[-1])
        assert module.torch.allclose(probs.sum(-1), module.torch.ones(3, 4))
    assert not model.training  # the baselines restore the mode they found
    result = module.dropkit_call(model, x, 3)()
    assert result.mean.shape == (4, module.MLP_SIZES[-1])


def test_copy_moves_every_dropout_modules_input_t_times():
    module = _load()
    model = module.SmallTransformer(16).eval()  # eval would take the fused path past the dropout modules
    x = module.torch.randn(2, 3, 16)
    shapes = module.dropout_inputs(model, x)
    # the layer's three dropout modules: attention output, feed-forward hidden, feed-forward output
    assert sorted(s.numel() for s in shapes) == [2 * 3 * 16, 2 * 3 * 16, 2 * 3 * 64]
    assert not any(m.training for m in model.modules())  # modes restored
    copied = module.copy_call(model, x, 5)()
    assert sorted(c.numel() for c in copied) == [5 * 2 * 3 * 16, 5 * 2 * 3 * 16, 5 * 2 * 3 * 64]
    mlp = module.mlp().eval()
    assert [c.numel() for c in module.copy_call(mlp, module.torch.randn(4, 784), 3)()] == [3 * 4 * 1024] * 2
