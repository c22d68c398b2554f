"""The benchmark scripts keep working: a quick smoke run, in-process (timings are not asserted)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cpu.py"


def test_bench_cpu_quick_runs_and_reports_zero_bytes_kept(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_cpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_cpu"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    out = tmp_path / "results.md"
    results = module.main(["--quick", "--out", str(out)])
    dropkit_saved = [r for r in results["saved"] if r["op"] == "dropkit"]
    assert dropkit_saved and all(r["bytes"] == 0 for r in dropkit_saved)
    assert any(r["op"] == "torch" and r["bytes"] > 0 for r in results["saved"])
    assert "Training step" in capsys.readouterr().out
    assert out.read_text().count("|") > 20
