"""bench.learning and bench.estimator_variance: the ablation's curves and the log-likelihood
noise measurement, on tiny recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import estimator_variance, learning
from maskgrpo.components import build_run
from maskgrpo.data import encode_prompts
from maskgrpo.recipe import load_recipe
from maskgrpo.registry import estimators
from maskgrpo.utils import RowGenerators

from .conftest import tiny_grpo_recipe


def _recipes(tmp_path: Path, **named: dict) -> dict[str, str]:
    return {name: str(tiny_grpo_recipe(tmp_path / name, estimator=spec)) for name, spec in named.items()}


def test_sequence_estimate_is_the_sum_of_scored_log_probs(tmp_path: Path) -> None:
    """d1 without prompt masking scores every completion token of the fully masked input once per
    iteration: the estimate is that sum, computed here by hand from the logits."""
    recipe = load_recipe(tiny_grpo_recipe(tmp_path, estimator={"type": "d1", "p_mask_prompt": 0.0, "stop_at_eos": False}))
    parts = build_run(recipe)
    model = parts.backbone.eval()
    ids, attn = encode_prompts(parts.tokenizer, ["1+2=", "13+4="], torch.device("cpu"))
    rollout = parts.sampler.sample(model, ids, RowGenerators.seeded(0, 0, rows=torch.arange(2)), attention_mask=attn)
    estimate, scored = estimator_variance.sequence_estimates(model, estimators.build(recipe.estimator), rollout, 2, 7, model.mask_token_id, None)
    masked = rollout.tokens.clone()
    masked[:, rollout.prompt_length :] = model.mask_token_id
    with torch.no_grad():
        logp = torch.log_softmax(model(masked, rollout.attention_mask).float(), dim=-1)
    completion = rollout.tokens[:, rollout.prompt_length :]
    by_hand = logp[:, rollout.prompt_length :].gather(-1, completion[..., None]).squeeze(-1).sum(1)
    assert torch.allclose(estimate.float(), by_hand, atol=1e-4)
    assert scored.tolist() == [completion.shape[1]] * 2


def test_variance_rows_trace_is_deterministic_elbo_is_not(tmp_path: Path) -> None:
    recipes = _recipes(tmp_path, fading_out={"type": "fading_out", "min_mask_rate": 0.6}, trace={"type": "trace"})
    rows = {r["estimator"]: r for r in estimator_variance.measure(recipes, prompts=2, group_size=2, draws=3)}
    assert list(rows) == ["elbo", "fading_out", "trace"]
    assert rows["elbo"]["std"] > 0 and rows["fading_out"]["std"] > 0
    assert rows["trace"]["std"] == pytest.approx(0.0, abs=1e-9)  # the decode order fixes its masks
    assert rows["trace"]["tokens"] == 8  # every completion token, each iteration
    assert 0 < rows["fading_out"]["tokens"] < 8
    assert rows["elbo"]["corr(ELBO)"] == pytest.approx(1.0)
    assert rows["elbo"]["std / ELBO std"] == pytest.approx(1.0)


def test_reward_curves_become_one_png(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    run.joinpath("metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "reward/mean": s / 10}) for s in (1, 2, 3)) + "\n")
    assert learning.reward_curve(run) == [0.1, 0.2, 0.3]
    png = learning.plot_curves({"a": [[0.1, 0.2, 0.3], [0.2, 0.3, 0.4]], "b": [[0.0, 0.1]]}, tmp_path / "c.png", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob("*.tmp.png"))


@pytest.mark.parametrize("world", sorted(learning.WORLDS))
def test_every_world_recipe_exists(world: str) -> None:
    root = Path(__file__).resolve().parent.parent
    for path in learning.WORLDS[world].values():
        assert load_recipe(root / path).kind == "grpo"


def test_cache_accuracy_rows_compare_each_mode_with_the_uncached_run() -> None:
    from bench import cache_accuracy

    rows = cache_accuracy.measure(["chain-small"], [None, 0.9], limit=2)
    assert [(r["cache"], r["threshold"]) for r in rows] == [(c, t) for t in ("off", 0.9) for c in cache_accuracy.MODES]
    assert rows[0]["vs none (points)"] == 0 and rows[0]["speed-up"] == 1
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and r["seconds"] > 0
        assert r["vs none (points)"] == pytest.approx(100 * (r["accuracy"] - rows[0]["accuracy"]))
    assert rows[-1]["speed-up"] > 1  # dual cache + threshold: fewer, smaller forwards


def test_combine_merges_parallel_halves_and_names_a_bad_file(tmp_path: Path) -> None:
    def run(estimator: str, seed: int, after: float) -> dict:
        return {"estimator": estimator, "seed": seed, "before": 0.1, "after": after, "seconds": 10.0, "rewards": [0.1, 0.2]}

    half_a, half_b = tmp_path / "a.json", tmp_path / "b.json"
    half_a.write_text(json.dumps({"runs": [run("d1", 0, 0.2), run("fading_out", 0, 0.3)]}))
    half_b.write_text(json.dumps({"runs": [run("d1", 1, 0.4)]}))
    rows, curves = learning.summarise(learning.read_runs(half_a) + learning.read_runs(half_b))
    assert [(r["estimator"], r["seeds"]) for r in rows] == [("d1", 2), ("fading_out", 1)]
    assert rows[0]["after mean"] == pytest.approx(0.3) and rows[0]["gain"] == pytest.approx(0.2)
    assert rows[0]["after std"] == pytest.approx(0.1414, abs=1e-4) and rows[1]["after std"] == 0.0
    assert len(curves["d1"]) == 2
    (tmp_path / "torn.json").write_text('{"runs": [')
    with pytest.raises(SystemExit, match="torn.json: not a bench.learning result"):
        learning.read_runs(tmp_path / "torn.json")
