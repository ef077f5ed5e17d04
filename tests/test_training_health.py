"""Issue 16's training health: the KL to the reference is watched even at beta 0 without
changing the update, the rollouts' entropy is logged, `model-best/` keeps the best evaluation,
and a recipe's `eval:` suite gives in training the number `maskgrpo eval` gives on the model."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskgrpo.components import load_model
from maskgrpo.errors import MaskGRPOError
from maskgrpo.eval.harness import evaluate_suite
from maskgrpo.recipe import load_recipe
from maskgrpo.trainer import GRPOTrainer

from .conftest import tiny_grpo_recipe, vary_rewards


def rows_of(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def trained(tmp_path: Path, **grpo) -> tuple[GRPOTrainer, list[dict]]:
    path = tiny_grpo_recipe(tmp_path, grpo={"group_size": 4, "num_iterations": 2, **grpo}, optim={"lr": 1e-2})
    trainer = GRPOTrainer(load_recipe(path), progress=False)
    vary_rewards(trainer)
    trainer.train()
    return trainer, rows_of(tmp_path / "run")


def test_kl_is_watched_at_beta_zero_without_changing_the_update(tmp_path: Path) -> None:
    watched, rows = trained(tmp_path / "watched")
    assert watched.reference is not None and all(math.isfinite(r["kl"]) for r in rows)
    assert rows[-1]["kl"] > 0  # the policy moved away from its start
    assert all(r["entropy"] > 0 and math.isfinite(r["entropy"]) for r in rows)
    plain, plain_rows = trained(tmp_path / "plain", monitor_kl=False)
    assert plain.reference is None and all("kl" not in r for r in plain_rows)
    # watching is not using: the same losses and the same parameters
    assert [r["loss"] for r in rows] == [r["loss"] for r in plain_rows]
    for (name, a), b in zip(watched.policy.state_dict().items(), plain.policy.state_dict().values()):
        assert torch.equal(a, b), name


def test_entropy_falls_when_the_policy_sharpens(tmp_path: Path) -> None:
    """A policy trained hard on one reward concentrates its predictions: the logged entropy
    must follow (a metric that did not move here would not warn of a collapse)."""
    path = tiny_grpo_recipe(tmp_path, grpo={"group_size": 4, "num_iterations": 4}, optim={"lr": 3e-2}, train={"steps": 6, "prompts_per_step": 4, "eval_every": 0})
    trainer = GRPOTrainer(load_recipe(path), progress=False)
    vary_rewards(trainer)
    trainer.train()
    rows = rows_of(tmp_path / "run")
    assert rows[-1]["entropy"] < rows[0]["entropy"]


def test_keep_best_keeps_the_best_evaluation_and_the_report_names_its_step(tmp_path: Path) -> None:
    path = tiny_grpo_recipe(tmp_path, train={"steps": 3, "prompts_per_step": 4, "eval_every": 1, "keep_best": True})
    trainer = GRPOTrainer(load_recipe(path), progress=False)
    vary_rewards(trainer)
    scores = iter([0.2, 0.5, 0.3, 0.1])  # steps 0..3: the best is step 1
    at_best: dict[str, torch.Tensor] = {}

    def scripted() -> float:
        score = next(scores)
        if score == 0.5:
            at_best.update({k: v.clone() for k, v in trainer.policy.state_dict().items()})
        return score

    trainer.evaluate = scripted  # type: ignore[method-assign]
    trainer.train()
    run = tmp_path / "run"
    best, _ = load_model(str(run / "model-best"))
    for name, value in best.state_dict().items():
        assert torch.equal(value, at_best[name]), name
    final, _ = load_model(str(run / "model"))
    assert any(not torch.equal(a, b) for a, b in zip(final.state_dict().values(), best.state_dict().values()))
    assert "0.500 at step 1" in (run / "report.md").read_text()
    assert not list(run.glob(".model-best.tmp*"))


def test_eval_suite_in_training_equals_maskgrpo_eval_on_the_saved_model(tmp_path: Path) -> None:
    path = tiny_grpo_recipe(tmp_path, eval={"suite": "arith", "set": ["samples_per_prompt=1"]})
    trainer = GRPOTrainer(load_recipe(path), progress=False)
    vary_rewards(trainer)
    trainer.train()
    run = tmp_path / "run"
    in_run = rows_of(run)[-1]["eval/accuracy"]
    saved = json.loads((run / "eval" / "step00002" / "results.json").read_text())
    assert saved["n"] == 125 and saved["metrics"]["accuracy"] == in_run
    again = evaluate_suite("arith", model=str(run / "model"), out=tmp_path / "again", overrides=["samples_per_prompt=1"])
    assert again["metrics"]["accuracy"] == in_run


@pytest.mark.parametrize(
    ("suite", "message"),
    [("shapes", "'shapes' is an image suite; this is a text recipe"), ("nonexistent", "eval.suite:")],
)
def test_a_wrong_eval_suite_is_a_one_line_error(tmp_path: Path, suite: str, message: str) -> None:
    with pytest.raises(MaskGRPOError, match=message):
        load_recipe(tiny_grpo_recipe(tmp_path, eval={"suite": suite}))


def test_presets_load_on_first_lookup() -> None:
    """No caller has to remember `load_presets()`: a fresh interpreter finds the shipped presets."""
    code = "from maskgrpo.registry import backbones; print('arith-small' in backbones, backbones.expand('arith-small')['type'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "transformer"]


def test_shapes_health_counts_colours_only_where_the_prompt_names_none() -> None:
    from maskgrpo.health import health_shares
    from maskgrpo.worlds.shapes.scene import ShapeObject, render
    from maskgrpo.worlds.shapes.task import ShapesTask

    two_reds = render([ShapeObject("circle", "red", 8, 16, 7), ShapeObject("square", "red", 24, 16, 7)])
    one_blue = render([ShapeObject("triangle", "blue", 16, 16, 8)])
    free = {"tag": "two_object", "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1}]}
    named = {"tag": "colors", "include": [{"class": "triangle", "count": 1, "color": "blue"}]}
    counts = ShapesTask().health_counts([two_reds, one_blue], {"metadata": [free, named]})
    assert counts["color"]["red"] == 2 and counts["color"]["blue"] == 0  # the blue was asked for
    assert (counts["class"]["circle"], counts["class"]["square"], counts["class"]["triangle"]) == (1, 1, 1)

    class OneProcess:
        num_processes = 1

    row = health_shares(OneProcess(), counts)
    assert row["health/color/red"] == 1.0 and row["health/color/distinct"] == 1.0
    assert row["health/class/circle"] == pytest.approx(1 / 3) and row["health/class/distinct"] == 3.0
