"""The demo's data loading (IDX files made here), runs and report, and the demo / tune commands in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dropkit.cli import main
from dropkit.demo import data, lab

PNG = b"\x89PNG\r\n\x1a\n"


def _write_mnist_like(folder, n_train=60, n_test=30, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for stem, array in arrays.items():
        data.write_idx(folder / f"{stem}{suffix}", array)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    data.write_idx(path, array)
    assert np.array_equal(data.read_idx(path), array)


def test_idx_errors(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(data.DataError, match="bad magic number"):
        data.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 3)
    with pytest.raises(data.DataError, match="truncated"):
        data.read_idx(tmp_path / "short")


def test_load_mnist_from_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DROPKIT_DATA", str(tmp_path / "cache"))
    arrays = _write_mnist_like(tmp_path / "mnist", gz=False)
    d = data.load("mnist", data_dir=tmp_path / "mnist", download=False)
    assert d.x_train.shape == (60, 784) and d.x_test.shape == (30, 784) and d.image_shape == (28, 28)
    assert d.x_train.dtype == torch.float32 and float(d.x_train.max()) <= 1.0
    assert torch.equal(d.y_train, torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long())
    torch.testing.assert_close(
        d.x_test[0] * 255, torch.from_numpy(arrays["t10k-images-idx3-ubyte"][0]).float().flatten()
    )
    small = data.load("mnist", data_dir=tmp_path / "mnist", train_size=10, test_size=5, download=False)
    assert len(small.x_train) == 10 and len(small.x_test) == 5


def test_fashion_mnist_is_found_where_debian_installs_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DROPKIT_DATA", str(tmp_path / "cache"))
    _write_mnist_like(tmp_path / "usr-share")
    monkeypatch.setitem(data.SYSTEM_DIRS, "fashion-mnist", (tmp_path / "usr-share",))
    assert data.load("fashion-mnist", download=False).x_train.shape == (60, 784)


def test_missing_files_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DROPKIT_DATA", str(tmp_path / "cache"))
    with pytest.raises(data.DataError, match=r"mnist: the IDX files .* were not found in .*downloading is disabled"):
        data.load("mnist", download=False)
    with pytest.raises(data.DataError, match=r"--data-dir must be an existing folder, but got"):
        data.load("mnist", data_dir=tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"dataset must be one of digits, mnist, fashion-mnist, but got 'cifar'."):
        data.load("cifar")


def test_download_without_network_and_with_a_bad_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("DROPKIT_DATA", str(tmp_path / "cache"))

    def offline(url, timeout=None):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(
        data.DataError, match=r"could not download train-images-idx3-ubyte.gz: .*network is unreachable"
    ):
        data.load("mnist")

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

        def read(self):
            return b"not the real file"

    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout=None: Response())
    with pytest.raises(data.DataError, match="MD5 mismatch"):
        data.load("mnist")
    assert not list((tmp_path / "cache" / "mnist").glob("*.gz"))  # nothing unverified is kept


def test_digits_split_is_stratified_disjoint_and_seeded():
    a, b = data.load("digits", train_size=200, seed=1), data.load("digits", train_size=200, seed=1)
    assert torch.equal(a.x_train, b.x_train)
    assert torch.bincount(a.y_train).tolist() == [20] * 10
    assert len(a.x_train) + len(a.x_test) == 1797
    train_rows = {tuple(r.tolist()) for r in a.x_train}
    assert sum(tuple(r.tolist()) in train_rows for r in a.x_test) < 5  # digits has a few duplicate images
    assert not torch.equal(data.load("digits", train_size=200, seed=2).x_train, a.x_train)


def test_shifts():
    x = torch.rand(4, 64)
    torch.testing.assert_close(data.rotate(x, (8, 8), 0.0), x, atol=1e-5, rtol=0)
    assert not torch.allclose(data.rotate(x, (8, 8), 40.0), x)
    noisy = data.add_noise(x, 0.5, seed=1)
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1 and not torch.equal(noisy, x)


def test_build_mlp_variants():
    runs = {r.name: r for r in lab.default_runs(0.2, 0.5)}
    wide = lab.build_mlp(64, 10, runs["widened"], hidden=100)
    assert wide[1].out_features == 200  # n / (1 - p)
    assert isinstance(lab.build_mlp(64, 10, runs["none"], hidden=8)[0], torch.nn.Identity)
    assert type(lab.build_mlp(64, 10, runs["gaussian"], hidden=8)[3]).__name__ == "GaussianDropout"
    assert lab.build_mlp(64, 10, runs["classic"], hidden=8)[3].mode == "classic"


def test_demo_quick_writes_the_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--quick", "--out", str(out), "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "dropout on digits" in text and "inverted" in text
    for name in ("learning_curves", "reliability", "uncertainty", "certain_images"):
        png = (out / f"{name}.png").read_bytes()
        assert png.startswith(PNG) and len(png) > 5000
        assert f"({name}.png)" in (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert [r["run"] for r in results["summary"]] == ["none", "inverted", "classic", "widened", "gaussian"]
    assert results["runs"]["classic"]["fold_classic"]["max_abs_difference"] < 1e-4
    assert set(results["runs"]["inverted"]["auroc"]) == {"rotated", "noisy"}


def test_demo_on_idx_files(tmp_path, monkeypatch):
    monkeypatch.setenv("DROPKIT_DATA", str(tmp_path / "cache"))
    _write_mnist_like(tmp_path / "mnist")
    assert main(["demo", "--quick", "--dataset", "mnist", "--data-dir", str(tmp_path / "mnist"),
                 "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "out" / "results.json").read_text())["dataset"]["name"] == "mnist"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--dataset", "cifar"], "invalid choice: 'cifar'"),
        (["demo", "--p-hidden", "1.5"], "must be in [0, 1), but got 1.5"),
        (["demo", "--epochs", "0"], "must be an integer >= 1, but got 0"),
        (["demo", "--dataset", "mnist", "--data-dir", "/nonexistent/dir"], "--data-dir must be an existing folder"),
        (["tune", "--trials", "-2"], "must be an integer >= 1, but got -2"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_tune_command_runs_resumes_and_plots(tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(["tune", "--trials", "2", "--epochs", "2", "--train-size", "100", "--out", str(out)]) == 0
    assert "best of 2 trials" in capsys.readouterr().out
    assert (out / "study.db").is_file() and (out / "optimization_history.png").read_bytes().startswith(PNG)
    assert main(["tune", "--trials", "1", "--epochs", "2", "--train-size", "100", "--out", str(out)]) == 0
    assert "best of 3 trials" in capsys.readouterr().out  # the SQLite study was resumed


def test_tune_library_function_with_a_custom_model(tmp_path):
    from dropkit.tune import tune

    dataset = data.load("digits", train_size=100)
    built = []

    def build(params):
        built.append(params)
        return torch.nn.Sequential(torch.nn.Dropout(params["p_input"]), torch.nn.Linear(64, 10))

    study = tune(dataset, build_model=build, trials=2, epochs=2, out=tmp_path, plots=False)
    assert len(study.trials) == 2 and len(built) == 2
    assert set(built[0]) == {"p_input", "p_hidden", "width"} and 0.0 <= built[0]["p_input"] <= 0.8
    with pytest.raises(ValueError, match=r"^tune: trials must be an int >= 1, but got 0.$"):
        tune(dataset, trials=0, out=tmp_path)
