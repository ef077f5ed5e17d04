"""Image mode: the shapes task, codebook placement, and a short text-to-image SFT run."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

from maskgrpo.cli import main
from maskgrpo.components import build_backbone, build_sampler, build_tokenizer
from maskgrpo.errors import MaskGRPOError
from maskgrpo.recipe import load_recipe
from maskgrpo.registry import tasks
from maskgrpo.trainer import GRPOTrainer
from maskgrpo.worlds.shapes.vocabulary import TAGS

from .conftest import REPO, vary_rewards


@pytest.fixture(scope="module")
def tiny_vq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vq")
    vq = build_tokenizer({"type": "vq", "block_out_channels": [8, 16, 16], "latent_channels": 4, "num_vq_embeddings": 32, "norm_num_groups": 4})
    vq.save_pretrained(path)
    return path


def test_shapes_task_is_seeded_and_carries_metadata_and_image() -> None:
    task = tasks.build({"type": "shapes", "tags": ["counting", "position"]})
    a, b = task.train_example(5), task.train_example(5)
    assert a.prompt == b.prompt and a.columns["metadata"] == b.columns["metadata"]
    assert a.columns["image"].size == (32, 32) and a.columns["metadata"]["tag"] in ("counting", "position")
    assert {e.columns["metadata"]["tag"] for e in task.eval_examples()} == {"counting", "position"}
    with pytest.raises(MaskGRPOError, match="unknown tag"):
        tasks.build({"type": "shapes", "tags": ["colours"]})


def test_hold_out_keeps_suite_prompts_of_large_tags_out_of_training() -> None:
    task = tasks.build({"type": "shapes", "tags": ["colors", "position", "color_attr"], "hold_out": True})
    suite = {e.prompt for e in task.eval_examples()}
    assert len(task.held_out) == 30 and task.held_out <= suite
    prompts = {task.train_example(i).prompt for i in range(400)}
    assert not prompts & task.held_out
    assert tasks.build({"type": "shapes", "tags": ["colors"]}).held_out == set()
    # without hold-out the same stream does meet suite prompts (30 colour prompts, 10 in the suite)
    plain = tasks.build({"type": "shapes", "tags": ["colors"]})
    assert {plain.train_example(i).prompt for i in range(100)} & suite


def test_trained_colors_suite_is_the_colour_prompts_training_keeps() -> None:
    from maskgrpo.worlds.shapes.prompts import trained_color_rows

    task = tasks.build({"type": "shapes", "tags": ["colors"], "hold_out": True})
    shipped = [json.loads(x) for x in (REPO / "maskgrpo/suites/shapes-colors-trained/metadata.jsonl").read_text().splitlines()]
    assert shipped == trained_color_rows([e.columns["metadata"] for e in task.eval_examples()])
    trained = {r["prompt"] for r in shipped}
    assert len(trained) == 20 and not trained & task.held_out
    assert {task.train_example(i).prompt for i in range(400)} == trained  # what the colors stream draws


def test_tag_weights_set_the_training_mix_and_are_checked() -> None:
    from collections import Counter

    def shares(**config: object) -> Counter:
        task = tasks.build({"type": "shapes", "tags": ["single_object", "colors", "counting"], **config})
        return Counter(task.train_example(i).columns["metadata"]["tag"] for i in range(900))

    plain = shares()
    assert all(250 < plain[t] < 350 for t in ("single_object", "colors", "counting"))
    weighted = shares(tag_weights={"colors": 4, "counting": 0})  # single_object keeps weight 1
    assert weighted["counting"] == 0 and 650 < weighted["colors"] < 790 and weighted["single_object"] > 110
    for bad, message in (({"position": 2}, "not among task.tags"), ({"colors": -1}, ">= 0"), ({"colors": float("nan")}, "finite")):
        with pytest.raises(MaskGRPOError, match=message):
            tasks.build({"type": "shapes", "tags": ["single_object", "colors"], "tag_weights": bad})


@pytest.mark.parametrize("tag", TAGS)
def test_canonical_scenes_are_upright_on_the_token_grid_and_correct(tag: str) -> None:
    from maskgrpo.metrics.geneval import GenEvalMetric
    from maskgrpo.worlds.shapes.placement import CANONICAL_GRID
    from maskgrpo.worlds.shapes.prompts import make_example
    from maskgrpo.worlds.shapes.scene import render

    rows, images = [], []
    for seed in range(40):
        metadata, objects = make_example(tag, seed, canonical=True)
        assert all(o.rotation == 0 for o in objects)
        if len(objects) <= 2:  # crowded scenes fall back to a cell layout, off the grid
            assert all(o.cx % CANONICAL_GRID == 0 and o.cy % CANONICAL_GRID == 0 for o in objects)
        rows.append(metadata)
        images.append(render(objects))
    metric = GenEvalMetric(detector="shapes")
    metric.update({"images": images, "metadata": rows})
    assert metric.compute()["overall"] == 1.0


def test_codebook_follows_the_text_vocabulary(tiny_vq: Path) -> None:
    words = build_tokenizer("word")
    vq = build_tokenizer({"type": "vq", "path": str(tiny_vq)})
    backbone = build_backbone({"type": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2, "max_length": 80}, words, vq)
    assert backbone.vocab_size == words.vocab_size + 32
    sampler = build_sampler({"type": "emerge", "image_tokens": 64}, words, vq)
    assert sampler.codebook == (words.vocab_size, words.vocab_size + 32)
    text_sampler = build_sampler({"type": "low_confidence", "gen_length": 8, "block_length": 8, "steps": 8}, words, vq)
    assert not hasattr(text_sampler, "codebook")


BLIND_DETECTOR = """
from maskgrpo.registry import detectors

SEEN = []

@detectors.register("blind_counter")
class BlindCounter:
    'Sees nothing; counts the images it was shown.'
    def detect(self, image):
        SEEN.append(image.size)
        return []
"""


def test_short_image_sft_run(tiny_vq: Path, tmp_path: Path) -> None:
    """The in-run evaluation scores with the recipe's `eval_metric`: a detector that sees nothing
    is shown every evaluation image (4 prompts x 2 images, at steps 6 and 12) and scores 0."""
    (tmp_path / "blind.py").write_text(BLIND_DETECTOR)
    recipe = {
        "plugins": ["blind.py"],
        "eval_metric": {"type": "geneval", "detector": "blind_counter"},
        "kind": "sft",
        "name": "tiny-image-sft",
        "output_dir": str(tmp_path / "run"),
        "backbone": {"type": "transformer", "max_length": 80, "d_model": 32, "n_layers": 1, "n_heads": 2},
        "tokenizer": {"type": "word"},
        "image_tokenizer": {"type": "vq", "path": str(tiny_vq)},
        "task": {"type": "shapes", "tags": ["single_object", "colors"], "n_eval": 4},
        "sampler": {"type": "emerge", "image_tokens": 64, "steps": 4, "cfg_scale": 1.0},
        "sft": {"steps": 12, "batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "eval_every": 6},
    }
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["sft", str(path)]) == 0
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert sum(r["loss"] for r in rows[-3:]) < sum(r["loss"] for r in rows[:3])
    assert rows[-1]["eval/geneval"] == 0.0 and rows[5]["eval/geneval"] == 0.0
    seen = next(m for m in sys.modules.values() if getattr(m, "__file__", None) == str(tmp_path / "blind.py")).SEEN
    assert seen == [(32, 32)] * 16
    assert (tmp_path / "run/samples/step00012.png").is_file() and (tmp_path / "run/model/word_tokenizer.json").is_file()


def test_two_step_image_grpo_changes_parameters(tiny_vq: Path, tmp_path: Path) -> None:
    recipe = {
        "kind": "grpo",
        "name": "tiny-image-grpo",
        "output_dir": str(tmp_path / "run"),
        "backbone": {"type": "transformer", "max_length": 80, "d_model": 32, "n_layers": 1, "n_heads": 2},
        "tokenizer": {"type": "word"},
        "image_tokenizer": {"type": "vq", "path": str(tiny_vq)},
        "task": {"type": "shapes", "tags": ["single_object", "two_object"], "n_eval": 4},
        "sampler": {"type": "emerge", "image_tokens": 64, "steps": 4, "cfg_scale": 1.0},
        "estimator": {"type": "random", "min_mask_rate": 0.8},
        "rewards": [{"type": "geneval", "detector": "shapes"}],
        "grpo": {"group_size": 4, "num_iterations": 2},
        "optim": {"lr": 1e-3},
        "train": {"steps": 2, "prompts_per_step": 2, "eval_every": 0},
    }
    path = tmp_path / "grpo.yaml"
    path.write_text(yaml.safe_dump(recipe))
    trainer = GRPOTrainer(load_recipe(path), progress=False)
    (tmp_path / "run/samples").mkdir(parents=True)
    (tmp_path / "run/samples/step00300.png").write_bytes(b"an older run's grid")
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    vary_rewards(trainer, term=0)
    trainer.train()
    after = trainer.policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    assert "eval/geneval" in rows[-1]
    assert sorted(p.name for p in (tmp_path / "run/samples").iterdir()) == ["step00000.png", "step00002.png"]
    # the health of an image run: KL at beta 0, entropy, and the colours/classes the policy drew
    for r in rows:
        assert math.isfinite(r["kl"]) and r["entropy"] > 0
        classes = [r[k] for k in r if k.startswith("health/class/") and not k.endswith("distinct")]
        assert not classes or abs(sum(classes) - 1) < 1e-9


def test_image_recipe_needs_an_eval_metric_when_the_task_has_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """GenEval prompts from JSONL have no detector of their own: `check` says so (exit 2) instead
    of the run scoring them with the shapes detector; with no eval data it notes that instead."""
    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"prompt": "a photo of a cat", "tag": "single_object", "include": [{"class": "cat", "count": 1}]}) + "\n")
    recipe = {
        "kind": "grpo",
        "name": "jsonl-images",
        "output_dir": str(tmp_path / "run"),
        "backbone": {"type": "transformer", "max_length": 80, "d_model": 32, "n_layers": 1, "n_heads": 2},
        "tokenizer": {"type": "word"},
        "image_tokenizer": {"type": "vq", "path": str(REPO / "maskgrpo/checkpoints/shapes-vq")},
        "task": {"type": "jsonl", "train_path": str(data), "eval_path": str(data), "prompt_field": "prompt", "answer_field": None, "row_column": "metadata"},
        "sampler": {"type": "emerge", "image_tokens": 64},
        "estimator": "random",
        "rewards": [{"type": "geneval", "detector": "shapes"}],
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["check", str(path)]) == 2
    assert "eval_metric: task JsonlTask has no default image metric" in capsys.readouterr().err
    assert main(["check", str(path), "--set", "eval_metric={type: geneval, detector: shapes}"]) == 0
    assert main(["check", str(path), "--set", "task.eval_path=null"]) == 0
    assert "task has no eval data; the run reports no evaluation" in capsys.readouterr().out


def test_geneval_reward_scores_images_like_the_metric() -> None:
    from maskgrpo.registry import rewards
    from maskgrpo.worlds.shapes.prompts import make_example, make_wrong
    from maskgrpo.worlds.shapes.scene import render

    metadata, objects = make_example("counting", 3)
    wrong = make_wrong(metadata, "count", 3)
    reward = rewards.build({"type": "geneval", "detector": "shapes"})
    images = [render(objects, size=32), render(wrong, size=32)]
    assert reward([metadata["prompt"]] * 2, images, metadata=[metadata] * 2) == [1.0, 0.0]


def test_eval_generates_images_from_a_saved_model_and_scores_them(tiny_vq: Path, tmp_path: Path) -> None:
    """`maskgrpo eval SUITE --model DIR` on an image suite: the suite's sampler and VQ tokenizer
    make `samples_per_prompt` images per row in GenEval's layout, which are then scored."""
    from maskgrpo.eval import evaluate_suite

    words = build_tokenizer("word")
    image_tokenizer = build_tokenizer({"type": "vq", "path": str(tiny_vq)})
    torch.manual_seed(0)
    model = build_backbone({"type": "transformer", "max_length": 80, "d_model": 32, "n_layers": 1, "n_heads": 2}, words, image_tokenizer)
    model.save_pretrained(tmp_path / "model")
    words.save_pretrained(tmp_path / "model")
    rows = (REPO / "maskgrpo" / "suites" / "shapes" / "metadata.jsonl").read_text().splitlines()[:3]
    (tmp_path / "rows.jsonl").write_text("\n".join(rows) + "\n")
    suite = {
        "name": "tiny-shapes",
        "modality": "image",
        "data": "rows.jsonl",
        "fields": {"prompt": "prompt", "answer": None},
        "metrics": [{"type": "geneval", "detector": "shapes"}],
        "sampler": {"type": "emerge", "steps": 4, "cfg_scale": 1.0},
        "image_tokenizer": {"type": "vq", "path": str(tiny_vq)},
        "samples_per_prompt": 2,
    }
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    runs = [evaluate_suite(tmp_path / "suite.yaml", model=str(tmp_path / "model"), out=tmp_path / f"out{k}") for k in range(2)]
    assert runs[0]["n"] == 6 and 0 <= runs[0]["metrics"]["overall"] <= 1
    folders = sorted((tmp_path / "out0" / "images").iterdir())
    assert [f.name for f in folders] == ["00000", "00001", "00002"]
    assert all(len(list((f / "samples").glob("*.png"))) == 2 for f in folders)
    png = lambda k: (tmp_path / f"out{k}" / "images" / "00001" / "samples" / "0001.png").read_bytes()  # noqa: E731
    assert png(0) == png(1)  # seeded
    del suite["image_tokenizer"]
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    with pytest.raises(MaskGRPOError, match="image_tokenizer"):
        evaluate_suite(tmp_path / "suite.yaml", model=str(tmp_path / "model"), out=tmp_path / "out2")
