"""The shapes world's small CLIP: captions, hard negatives, a 3-step training run through the CLI,
and the saved folder loading back through the `clip_score` metric and reward."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from maskgrpo.cli import main
from maskgrpo.clip_train import WEIGHTS_FILE, ClipModelConfig, build_clip, load_clip_recipe
from maskgrpo.errors import MaskGRPOError, RecipeError
from maskgrpo.metrics.geneval import GenEvalMetric
from maskgrpo.registry import metrics, rewards
from maskgrpo.worlds.shapes.clip_data import caption_for, make_pair, minimal_wrong, render_variant
from maskgrpo.worlds.shapes.prompts import make_metadata, wrong_kinds
from maskgrpo.worlds.shapes.scene import render
from maskgrpo.worlds.shapes.vocabulary import TAGS

REPO = Path(__file__).resolve().parent.parent
TINY_MODEL = {"embed_dim": 16, "text_width": 16, "text_heads": 2, "text_layers": 1, "context_length": 12}


def tiny_recipe(tmp_path: Path, **train) -> Path:
    recipe = {
        "kind": "clip",
        "name": "tiny-clip",
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "model": TINY_MODEL,
        "train": {"steps": 3, "batch_size": 4, "warmup_steps": 1, "eval_every": 0, "eval_scenes": 4, **train},
        "save_to": str(tmp_path / "shapes-clip"),
    }
    path = tmp_path / "clip.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_captions_match_the_prompts_and_name_the_wrong_scene() -> None:
    rng = random.Random(0)
    for _ in range(300):
        row = make_metadata(rng.choice(TAGS), rng)
        assert caption_for(row) == row["prompt"]
    row = {"tag": "position", "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}]}
    assert caption_for(row) == "a photo of a circle left of a square"
    assert caption_for({"tag": "counting", "include": [{"class": "triangle", "count": 1}]}) == "a photo of one triangle"
    assert caption_for({"tag": "single_object", "include": []}) == "a photo of"


def test_minimal_wrong_variants_fail_the_original_prompt() -> None:
    """Each hard negative differs from its scene in the named way: the exact shapes detector
    rejects it for the original prompt, and its caption differs from the prompt."""
    rng = random.Random(1)
    metric = GenEvalMetric(detector="shapes")
    made = set()
    for _ in range(40):
        row, objects = make_pair(rng, 32)
        assert metric.evaluate([render(objects, 32)], [row])[0]["correct"]
        for kind in wrong_kinds(row):
            variant = minimal_wrong(row, objects, kind, rng, 32)
            if variant is None:
                continue
            caption, objs, flip = variant
            assert caption != row["prompt"]
            assert not metric.evaluate([render_variant(objs, 32, 0, flip)], [row])[0]["correct"], (row, kind)
            made.add(kind)
    assert made == {"count", "color", "side", "class"}


@pytest.mark.parametrize("mode", ["minimal", "make_wrong", "none"])
def test_training_batches_pair_each_scene_with_a_wrong_variant(mode: str) -> None:
    from maskgrpo.worlds.shapes.clip_data import training_batch

    images, captions = training_batch(random.Random(0), 6, 32, mode, tag_weights={"position": 2.0})
    assert len(images) == len(captions) and all(im.size == (32, 32) for im in images)
    assert len(images) == 6 if mode == "none" else 9 <= len(images) <= 12
    assert all(c.startswith("a photo of") for c in captions)
    assert len(set(captions[6:]) & set(captions[:6])) <= 1  # wrong captions name other scenes


def test_three_steps_train_save_and_load_through_clip_score(tmp_path: Path, capsys) -> None:
    assert main(["train-clip", str(tiny_recipe(tmp_path))]) == 0
    saved = tmp_path / "shapes-clip"
    assert {"open_clip_config.json", "tokenizer.json", WEIGHTS_FILE} <= {p.name for p in saved.iterdir()}
    assert (saved / WEIGHTS_FILE).stat().st_mode & 0o044 == 0o044  # readable like any other file
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left
    run = tmp_path / "run"
    rows = [yaml.safe_load(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "eval/text_acc/all" not in rows[0]  # eval_every 0: evaluated at the end only
    assert 0 <= rows[-1]["eval/text_acc/all"] <= 1 and 0 <= rows[-1]["eval/image_acc/all"] <= 1
    assert (run / "model" / WEIGHTS_FILE).is_file()

    # the parameters moved away from the seed's initialisation
    torch.manual_seed(0)
    init, _, _ = build_clip(ClipModelConfig(**TINY_MODEL))
    trained = load_file(str(saved / WEIGHTS_FILE))
    moved = [k for k, v in init.state_dict().items() if not torch.equal(v, trained[k])]
    assert len(moved) > 0.8 * len(trained)

    # the metric and the reward load the folder offline with their usual spec
    images = [render(make_pair(random.Random(i), 32)[1], 32) for i in range(3)]
    prompts = ["a photo of a red circle", "a photo of two squares", "a photo of a triangle left of a circle"]
    metric = metrics.build({"type": "clip_score", "model": f"local-dir:{saved}"})
    scores = metric.score(images, prompts)
    assert len(scores) == 3 and all(0 <= s <= 100 for s in scores)
    reward = rewards.build({"type": "clip_score", "model": f"local-dir:{saved}"})
    values = reward(prompts, images)
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values == pytest.approx([s / 100 for s in scores])
    # same weights as the training run's: the metric's model reproduces the saved tensors
    assert all(torch.equal(v, trained[k]) for k, v in metric.net.state_dict().items())


def test_scoring_preprocesses_images_exactly_as_training(tmp_path: Path) -> None:
    from maskgrpo.clip_train import save_clip
    from maskgrpo.metrics.clip_score import ClipScore

    cfg = ClipModelConfig(**TINY_MODEL)
    model, train_transform, train_tokenizer = build_clip(cfg)
    save_clip(model, cfg, tmp_path / "clip")
    metric = ClipScore(model=f"local-dir:{tmp_path / 'clip'}")
    image = render(make_pair(random.Random(3), 32)[1], 32)
    x_train, x_score = train_transform(image), metric.preprocess(image)
    assert x_train.shape == (3, 32, 32) and torch.equal(x_train, x_score)
    # no resampling of the 32x32 render, then the configured normalisation
    expected = (torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1) - 0.5) / 0.25
    assert torch.allclose(x_score, expected, atol=1e-6)
    captions = ["a photo of three circles", "a photo of a Blue square right of a dog"]
    assert torch.equal(train_tokenizer(captions), metric.tokenizer(captions))
    tokens = metric.tokenizer(captions)
    assert tokens.shape == (2, 12) and (tokens == 2).sum(1).tolist() == [1, 1]  # one <eos> each
    assert tokens[1].tolist().count(1) == 1  # "dog" is unknown


def test_bad_recipes_are_clear_errors(tmp_path: Path) -> None:
    path = tiny_recipe(tmp_path)
    with pytest.raises(RecipeError, match=r"train\.stepz: unknown field"):
        load_clip_recipe(path, ["train.stepz=3"])
    with pytest.raises(RecipeError, match=r"train\.hard_negatives"):
        load_clip_recipe(path, ["train.hard_negatives=some"])
    with pytest.raises(RecipeError, match=r"model\.timm_model_name: unknown timm model 'test_convnxt'.*test_convnext"):
        load_clip_recipe(path, ["model.timm_model_name=test_convnxt"])
    with pytest.raises(RecipeError, match=r"model: .*multiple of text_heads"):
        load_clip_recipe(path, ["model.text_heads=3"])
    assert main(["check", str(path), "--set", "model.embed_dimm=8"]) == 2
    with pytest.raises(MaskGRPOError, match="not a trained CLIP folder"):
        from maskgrpo.clip_train import load_trained_clip

        load_trained_clip(tmp_path)


def test_shipped_recipe_validates() -> None:
    recipe = load_clip_recipe(REPO / "recipes" / "shapes-clip.yaml")
    assert recipe.kind == "clip" and recipe.save_to == "maskgrpo/checkpoints/shapes-clip"
    assert main(["check", str(REPO / "recipes" / "shapes-clip.yaml")]) == 0


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / WEIGHTS_FILE))


def test_batches_are_a_function_of_seed_and_step(tmp_path: Path) -> None:
    from maskgrpo.clip_train import step_batch

    recipe = load_clip_recipe(tiny_recipe(tmp_path))
    a, b = step_batch(recipe, 5), step_batch(recipe, 5)
    assert a[1] == b[1] and [im.tobytes() for im in a[0]] == [im.tobytes() for im in b[0]]
    assert step_batch(recipe, 6)[1] != a[1]
    assert step_batch(recipe.model_copy(update={"seed": 1}), 5)[1] != a[1]


def test_interrupted_run_resumes_to_the_uninterrupted_one(tmp_path: Path, monkeypatch) -> None:
    """SIGINT after step 2 saves a checkpoint and exits 130; `--resume` then ends where an
    uninterrupted run of the same recipe ends: the same losses and the same weights."""
    import signal

    from maskgrpo.runtime import StopSignal

    full = tiny_recipe(tmp_path / "full", steps=4)
    assert main(["train-clip", str(full), "--no-progress"]) == 0

    requested, calls = StopSignal.requested, []

    def interrupt_after_step_2(self: StopSignal) -> bool:
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)  # through the real handler
        return requested(self)

    cut = tiny_recipe(tmp_path / "cut", steps=4)
    monkeypatch.setattr(StopSignal, "requested", interrupt_after_step_2)
    assert main(["train-clip", str(cut), "--no-progress"]) == 130
    monkeypatch.undo()
    assert _losses(tmp_path / "cut" / "run").keys() == {1, 2}
    assert not (tmp_path / "cut" / "run" / "model").exists()  # no export from an interrupted run
    assert main(["train-clip", str(cut), "--no-progress", "--resume"]) == 0

    a, b = _losses(tmp_path / "full" / "run"), _losses(tmp_path / "cut" / "run")
    assert list(b) == [1, 2, 3, 4] and b == a
    wa, wb = _weights(tmp_path / "full" / "run"), _weights(tmp_path / "cut" / "run")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_shorter_run_extended_with_resume_equals_the_longer_run(tmp_path: Path) -> None:
    """With a constant learning rate a 2-step run is the start of a 4-step one: resumed with
    train.steps=4 it ends with the 4-step run's weights."""
    full = tiny_recipe(tmp_path / "full", steps=4, schedule="constant", save_every=1)
    assert main(["train-clip", str(full), "--no-progress"]) == 0
    short = tiny_recipe(tmp_path / "short", steps=2, schedule="constant")
    assert main(["train-clip", str(short), "--no-progress"]) == 0
    assert main(["train-clip", str(short), "--no-progress", "--resume", "--set", "train.steps=4"]) == 0
    a, b = _losses(tmp_path / "full" / "run"), _losses(tmp_path / "short" / "run")
    assert list(b) == [1, 2, 3, 4] and b == a
    wa, wb = _weights(tmp_path / "full" / "run"), _weights(tmp_path / "short" / "run")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert yaml.safe_load((tmp_path / "short" / "run" / "recipe.yaml").read_text())["train"]["steps"] == 4


def test_run_directory_contract(tmp_path: Path, capsys) -> None:
    """recipe.yaml is YAML; an earlier run is neither overwritten without --overwrite nor
    resumed from nothing; TensorBoard events sit beside metrics.jsonl."""
    path = tiny_recipe(tmp_path, steps=1)
    assert main(["train-clip", str(path), "--no-progress"]) == 0
    run = tmp_path / "run"
    text = (run / "recipe.yaml").read_text()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    assert yaml.safe_load(text) == load_clip_recipe(path).model_dump(mode="json")
    assert (run / "checkpoint").is_dir() and list((run / "tb").rglob("events.out.tfevents.*"))

    metrics_before = (run / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["train-clip", str(path), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (run / "metrics.jsonl").read_bytes() == metrics_before
    assert main(["train-clip", str(path), "--resume", "--overwrite"]) == 2
    assert (run / "metrics.jsonl").read_bytes() == metrics_before
    assert main(["train-clip", str(path), "--no-progress", "--overwrite", "--set", "train.steps=2"]) == 0
    assert list(_losses(run)) == [1, 2]

    empty = tiny_recipe(tmp_path / "empty", steps=1)
    assert main(["train-clip", str(empty), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_more_than_one_process_is_refused(tmp_path: Path, capsys, monkeypatch) -> None:
    import types

    import maskgrpo.clip_train as clip_train

    monkeypatch.setattr(clip_train, "make_accelerator", lambda *a, **k: types.SimpleNamespace(num_processes=2, is_main_process=True))
    assert main(["train-clip", str(tiny_recipe(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert "train-clip:" in err and "one process" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()
