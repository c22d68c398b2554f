"""The recurrent-dropout example runs end to end in its --quick mode."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rnn_language_model.py"


def test_rnn_language_model_quick_reports_a_perplexity_per_variant(capsys):
    spec = importlib.util.spec_from_file_location("rnn_language_model", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["rnn_language_model"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    rows = module.main(["--quick"])
    assert [r["variant"] for r in rows] == list(module.VARIANTS)
    vocab = len(set(module.corpus()[: module.Config.quick().chars]))
    for row in rows:
        # a few steps from a uniform guess: finite, above 1, and not worse than twice the uniform model
        assert math.isfinite(row["valid_ppl"]) and 1.0 < row["valid_ppl"] < 2 * vocab
    out = capsys.readouterr().out
    assert "valid ppl" in out and "Zen" not in out
