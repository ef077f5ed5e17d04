"""One path rule: a relative path is relative to the file that names it (recipe, suite, preset);
a `--set` value is relative to the working directory; users add preset and suite folders with
MASKGRPO_PRESETS / MASKGRPO_SUITES."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from maskgrpo.eval import bundled_suites, load_suite
from maskgrpo.paths import package_dir, preset_dirs, suite_dirs
from maskgrpo.recipe import load_recipe
from maskgrpo.registry import REGISTRIES, load_presets

from .conftest import REPO


def _recipe(folder: Path, **sections) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    recipe = {
        "kind": "grpo",
        "name": "paths",
        "output_dir": "runs/paths",
        "plugins": ["my_rewards.py", "json"],
        "backbone": {"type": "transformer", "path": "../models/policy"},
        "tokenizer": {"type": "hf", "path": "GSAI-ML/LLaDA-8B-Instruct"},
        "task": {"type": "jsonl", "train_path": "data/train.jsonl", "eval_path": "./data/eval.jsonl"},
        "sampler": "low_confidence",
        "estimator": "fading_out",
        "rewards": [
            {"type": "clip_score", "model": "local-dir:../clip", "pretrained": "openai"},
            {"type": "geneval", "detector": {"type": "torchvision", "weights_path": "w/det.pth"}},
        ],
        "train": {"accelerate_config": "acc.yaml"},
    }
    recipe.update(sections)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_recipe_paths_are_relative_to_the_recipe_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _recipe(tmp_path / "recipes")
    monkeypatch.chdir(tmp_path)  # the working directory plays no part
    r = load_recipe(Path("recipes/recipe.yaml"), check_components=False)
    base = (tmp_path / "recipes").resolve()
    assert r.backbone["path"] == str((base / "../models/policy").resolve())
    assert r.task["train_path"] == str(base / "data/train.jsonl") and r.task["eval_path"] == str(base / "data/eval.jsonl")
    assert r.rewards[0].model_extra["model"] == f"local-dir:{(base / '../clip').resolve()}"
    assert r.rewards[1].model_extra["detector"]["weights_path"] == str(base / "w/det.pth")
    assert r.plugins == [str(base / "my_rewards.py"), "json"]  # a module name is not a path
    assert r.train.accelerate_config == str(base / "acc.yaml")
    # a hub id and an open_clip tag that name nothing here are passed on unchanged
    assert r.tokenizer["path"] == "GSAI-ML/LLaDA-8B-Instruct" and r.rewards[0].model_extra["pretrained"] == "openai"
    assert r.output_dir == "runs/paths"  # where a run writes: relative to the working directory
    assert path.is_file()


def test_set_values_are_relative_to_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _recipe(tmp_path / "recipes")
    cwd = tmp_path / "here"
    (cwd / "mine").mkdir(parents=True)
    monkeypatch.chdir(cwd)
    overrides = [
        "task.train_path=train.jsonl",
        "backbone.path=mine",
        "rewards.0.model=local-dir:clip",
        "rewards.1={type: geneval, detector: {type: torchvision, weights_path: det.pth}}",
        "train.accelerate_config=acc.yaml",
    ]
    r = load_recipe(tmp_path / "recipes" / "recipe.yaml", overrides, check_components=False)
    here = cwd.resolve()
    assert r.task["train_path"] == str(here / "train.jsonl") and r.backbone["path"] == str(here / "mine")
    assert r.rewards[0].model_extra["model"] == f"local-dir:{here / 'clip'}"
    assert r.rewards[1].model_extra["detector"]["weights_path"] == str(here / "det.pth")
    assert r.train.accelerate_config == str(here / "acc.yaml")


def test_a_path_found_only_in_the_working_directory_still_works_with_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "checkpoints" / "m").mkdir(parents=True)
    _recipe(tmp_path / "recipes", backbone={"type": "transformer", "path": "checkpoints/m"})
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match=r"write '\.\./checkpoints/m'"):
        r = load_recipe("recipes/recipe.yaml", check_components=False)
    assert r.backbone["path"] == str((tmp_path / "checkpoints" / "m").resolve())
    with warnings.catch_warnings():  # the shipped recipes name nothing that way
        warnings.simplefilter("error")
        for recipe in sorted((REPO / "recipes").glob("*.yaml")):
            if yaml.safe_load(recipe.read_text())["kind"] in ("grpo", "sft"):
                load_recipe(recipe, check_components=False)


def test_suite_paths_and_user_suite_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "my-suites"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "rows.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n')
    (folder / "tiny-arith.yaml").write_text(
        "name: tiny-arith\nmodality: text\ndata: data/rows.jsonl\nmetrics: [math_accuracy]\n"
        "sampler: {type: low_confidence, gen_length: 8, block_length: 8, steps: 8, temperature: 0.0}\n"
    )
    monkeypatch.setenv("MASKGRPO_SUITES", str(folder))
    assert folder in suite_dirs() and "tiny-arith" in bundled_suites() and "gsm8k" in bundled_suites()
    suite = load_suite("tiny-arith")
    assert suite.data_path == (folder / "data" / "rows.jsonl").resolve()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "other.jsonl").write_text('{"prompt": "2+2=", "answer": "4"}\n')
    assert load_suite("tiny-arith", ["data=other.jsonl"]).data_path == (tmp_path / "other.jsonl").resolve()
    # the bundled image suite names its tokenizer by preset; the geneval suite its weights relative to itself
    assert load_suite("shapes").image_tokenizer == "shapes-vq"
    geneval = load_suite("geneval", check_components=False)
    assert geneval.metrics[0]["detector"]["weights_path"] == str((REPO / "weights" / "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth").resolve())


def test_user_preset_folders_and_the_shipped_model_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "my-presets"
    folder.mkdir()
    (folder / "backbones.yaml").write_text("my-policy:\n  type: transformer\n  path: policy\n")
    (folder / "policy").mkdir()
    monkeypatch.setenv("MASKGRPO_PRESETS", f"{folder}{__import__('os').pathsep}{REPO / 'registry'}")
    dirs = preset_dirs()
    assert dirs[0] == package_dir("presets") and folder in dirs and len(dirs) == 2  # registry/ links to maskgrpo/presets
    backbones = REGISTRIES["backbones"]
    try:
        load_presets([folder])
        assert backbones.expand("my-policy")["path"] == str((folder / "policy").resolve())
    finally:
        backbones._presets.pop("my-policy", None)
    load_presets()
    shipped = package_dir("checkpoints")
    assert backbones.expand("shapes-small")["path"] == str((shipped / "shapes-small").resolve())
    assert REGISTRIES["tokenizers"].expand("shapes-vq")["path"] == str((shipped / "shapes-vq").resolve())
    assert REGISTRIES["rewards"].expand("shapes-clip")["model"] == f"local-dir:{(shipped / 'shapes-clip').resolve()}"
    assert REGISTRIES["metrics"].expand("shapes-clip")["type"] == "clip_score"


def test_model_presets_load_like_their_folders() -> None:
    from maskgrpo.components import load_model

    backbone, tokenizer = load_model("shapes-small")
    assert type(tokenizer).__name__ == "WordTokenizer" and backbone.vocab_size > tokenizer.vocab_size  # image codes follow the words
