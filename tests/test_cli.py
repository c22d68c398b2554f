"""The dropkit command line, called in-process."""

from __future__ import annotations

import pytest
import torch

from dropkit import functional as F
from dropkit.cli import main


def test_explain_walks_through_the_worked_example(capsys):
    assert main(["explain", "--values", "2", "4", "6", "8", "--p", "0.5", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    expected = F.dropout(torch.tensor([2.0, 4.0, 6.0, 8.0], dtype=torch.float64), 0.5, seed=0)
    row = " ".join(f"{v:g}" for v in expected.tolist())
    assert row in out  # the inverted training output, computed by the library itself
    for text in ("coin u", "kept", "dropped", "× 1/(1-p) = × 2", "evaluation output", "1 2 3 4", "2 4 6 8"):
        assert text in out


def test_explain_is_reproducible_and_seed_dependent(capsys):
    main(["explain", "--values", "1", "2", "3", "4", "5", "6", "--p", "0.3", "--seed", "5"])
    first = capsys.readouterr().out
    main(["explain", "--values", "1", "2", "3", "4", "5", "6", "--p", "0.3", "--seed", "5"])
    assert capsys.readouterr().out == first
    main(["explain", "--values", "1", "2", "3", "4", "5", "6", "--p", "0.3", "--seed", "6"])
    assert capsys.readouterr().out != first


def test_explain_at_p_one_says_what_holds_there(capsys):
    assert main(["explain", "--values", "1", "2", "--p", "1", "--seed", "0"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "p = 1 drops every unit" in out and "E[y] = 0" in out and "only classic dropout matches" in out
    assert "the expected output equals the input" not in out and "Both make evaluation match" not in out
    assert "averaged over many draws it is 0" in out


def test_explain_rejects_a_bad_p(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["explain", "--p", "1.5"])
    assert exit_info.value.code == 2
    assert "dropout: p must be in [0, 1], but got 1.5." in capsys.readouterr().err


def test_command_is_required(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
