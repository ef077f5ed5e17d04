"""Recipes: bundled ones validate, overrides are typed, every mistake is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskgrpo.cli import main
from maskgrpo.errors import MaskGRPOError, RecipeError
from maskgrpo.recipe import apply_override, load_recipe

from .conftest import REPO

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_bundled_recipes_check(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(path)]) == 0
    assert "ok" in capsys.readouterr().out


@pytest.mark.parametrize("main_recipe", ["arith-grpo", "chain-grpo"])
def test_ablation_recipes_differ_only_in_the_estimator(main_recipe: str) -> None:
    """bench.learning compares estimators: any other difference (a budget, a seed, a sampler
    setting) would be tuning one more than another."""
    reference = load_recipe(REPO / "recipes" / f"{main_recipe}.yaml").model_dump()
    family = sorted((REPO / "recipes").glob(f"{main_recipe}-*.yaml"))
    assert len(family) >= 4
    for path in family:
        recipe = load_recipe(path).model_dump()
        assert recipe["estimator"] != reference["estimator"], path.name
        differ = {key for key in reference if reference[key] != recipe[key]} - {"name", "output_dir", "source"}
        assert differ == {"estimator"}, f"{path.name}: also differs in {sorted(differ - {'estimator'})}"


def test_overrides_are_typed_against_the_schema() -> None:
    recipe = load_recipe(REPO / "recipes/arith-grpo.yaml", ["grpo.beta=0.01", "train.steps=3", "optim.betas=[0.9, 0.95]"])
    assert recipe.grpo.beta == 0.01 and recipe.train.steps == 3 and recipe.optim.betas == (0.9, 0.95)
    with pytest.raises(RecipeError, match=r"train\.steps: .*integer"):
        load_recipe(REPO / "recipes/arith-grpo.yaml", ["train.steps=many"])
    with pytest.raises(RecipeError, match=r"grpo\.betta: unknown field"):
        load_recipe(REPO / "recipes/arith-grpo.yaml", ["grpo.betta=0.1"])
    # a section's field given at the top level: the error names where it lives
    with pytest.raises(RecipeError, match=r"mixed_precision: unknown field; did you mean train\.mixed_precision\?$"):
        load_recipe(REPO / "recipes/arith-grpo.yaml", ["mixed_precision=bf16"])
    with pytest.raises(RecipeError, match=r"colour: unknown field$"):
        load_recipe(REPO / "recipes/arith-grpo.yaml", ["colour=red"])


def test_override_turns_a_named_component_into_a_mapping() -> None:
    data = {"estimator": "fading_out", "rewards": [{"type": "format"}]}
    apply_override(data, "estimator.min_mask_rate=0.5")
    apply_override(data, "rewards.0.weight=2")
    assert data == {"estimator": {"type": "fading_out", "min_mask_rate": 0.5}, "rewards": [{"type": "format", "weight": 2}]}
    with pytest.raises(RecipeError, match="no list item"):
        apply_override(data, "rewards.3.weight=1")
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        apply_override(data, "rewards")


def test_component_options_are_checked_without_building() -> None:
    with pytest.raises(RecipeError, match=r"estimator\.min_mask_rat: unknown field"):
        load_recipe(REPO / "recipes/arith-grpo.yaml", ["estimator.min_mask_rat=0.5"])
    with pytest.raises(MaskGRPOError, match=r"sampler: unknown sampler 'low_confidance'; did you mean 'low_confidence'"):
        load_recipe(REPO / "recipes/arith-grpo.yaml", ["sampler.type=low_confidance"])


BROKEN = {
    "bad_yaml": ("kind: grpo\nname: [unclosed\n", "invalid YAML"),
    "unknown_key": ("kind: sft\nname: x\nbogus: 1\n", "bogus: unknown field"),
    "missing_field": ("kind: sft\nname: x\n", "field required"),
    "wrong_type": (
        (REPO / "recipes/arith-grpo.yaml").read_text().replace("group_size: 8", "group_size: eight"),
        "grpo.group_size: Input should be a valid integer",
    ),
    "unknown_component": (
        (REPO / "recipes/arith-grpo.yaml").read_text().replace("type: fading_out", "type: fading_in"),
        "estimator: unknown estimator 'fading_in'; did you mean 'fading_out'",
    ),
    "unknown_reward": (
        (REPO / "recipes/arith-grpo.yaml").read_text().replace("type: math_accuracy", "type: math_acuracy"),
        "rewards.0: unknown reward 'math_acuracy'",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_recipes_exit_2_with_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = BROKEN[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err and str(path) in err and "Traceback" not in err


def test_missing_recipe_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "no/such/recipe.yaml"]) == 2
    assert "no/such/recipe.yaml: file not found" in capsys.readouterr().err


def test_debug_flag_shows_the_traceback(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("kind: sft\n")
    with pytest.raises(RecipeError):
        main(["--debug", "check", str(path)])


def test_list_shows_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for needle in ["backbones:", "samplers:", "estimators:", "rewards:", "metrics:", "fading_out", "low_confidence", "arith-small", "llada-8b-instruct"]:
        assert needle in out
    assert main(["list", "estimatorz"]) == 2
