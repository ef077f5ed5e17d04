"""bench.seeds --combine: single-seed result files become one table; mismatched runs are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import seeds

BEFORE = {"colors": 0.2, "position": 0.0, "overall": 0.11}


def result(tmp_path: Path, seed: int, overall: float, colors: float, before: dict = BEFORE) -> str:
    run = {"seed": seed, "train_seconds": 1.0, "after": {"colors": colors, "position": 0.05, "overall": overall}, "in_run": [[50, 0.3], [100, 0.2]], "last_over_best": 2 / 3}
    meta = {"recipe": "r.yaml", "overrides": [], "suite": "shapes", "eval_set": [], "threads": 1, "held_out": ["colors", "position"], "min_gain": 0.1}
    path = tmp_path / f"{seed}.json"
    path.write_text(json.dumps({**meta, "before": before, "runs": [run]}))
    return str(path)


def test_combine_merges_seeds_and_reports_the_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(seeds, "RESULTS", tmp_path / "results")
    seeds.combine("ab", [result(tmp_path, 1, 0.25, 0.1), result(tmp_path, 0, 0.3, 0.2)])
    summary = json.loads((tmp_path / "results" / "seeds-ab.json").read_text())
    assert summary["seeds"] == [0, 1]
    assert summary["gains"] == pytest.approx([0.19, 0.14])
    assert summary["every_seed_gains"] is True
    assert summary["stays_up"] is False  # last 0.2 < 0.8 x best 0.3
    assert summary["held_out_falls"] == {"colors": pytest.approx(-0.05)}  # position rose
    assert "colors -0.050" in capsys.readouterr().out


def test_combine_refuses_runs_with_different_starting_scores(tmp_path: Path) -> None:
    other = dict(BEFORE, overall=0.2)
    with pytest.raises(SystemExit, match="differs .* in before"):
        seeds.combine("ab", [result(tmp_path, 0, 0.3, 0.2), result(tmp_path, 1, 0.3, 0.2, before=other)])


def test_combine_names_an_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "torn.json").write_text('{"runs": [')
    with pytest.raises(SystemExit, match="cannot read .*torn.json"):
        seeds.combine("ab", [result(tmp_path, 0, 0.3, 0.2), str(tmp_path / "torn.json")])
    with pytest.raises(SystemExit, match="cannot read .*missing.json"):
        seeds.combine("ab", [str(tmp_path / "missing.json")])
