"""Image mode: the shapes task, codebook placement, and a short text-to-image SFT run."""

from __future__ import annotations

import json
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


def test_codebook_follows_the_text_vocabulary(tiny_vq: Path) -> None:
    words = build_tokenizer("word")
    vq = build_tokenizer({"type": "vq", "path": str(tiny_vq)})
    backbone = build_backbone({"type": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2, "max_length": 80}, words, vq)
    assert backbone.vocab_size == words.vocab_size + 32
    sampler = build_sampler({"type": "emerge", "image_tokens": 64}, words, vq)
    assert sampler.codebook == (words.vocab_size, words.vocab_size + 32)
    text_sampler = build_sampler({"type": "low_confidence", "gen_length": 8, "block_length": 8, "steps": 8}, words, vq)
    assert not hasattr(text_sampler, "codebook")


def test_short_image_sft_run(tiny_vq: Path, tmp_path: Path) -> None:
    recipe = {
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
    assert 0 <= rows[-1]["eval/geneval"] <= 1
    assert (tmp_path / "run/samples_step12.png").is_file() and (tmp_path / "run/model/word_tokenizer.json").is_file()


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
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    # a reward with variance inside a group: the first image of each group is "right"
    trainer.rewards.terms[0].fn = lambda prompts, completions, **kw: [float(i % 4 == 0) for i in range(len(completions))]
    trainer.train()
    after = trainer.policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["loss"] == r["loss"] for r in rows)
    assert "eval/geneval" in rows[-1]
    assert sorted(p.name for p in (tmp_path / "run/samples").iterdir()) == ["step00000.png", "step00002.png"]


def test_geneval_reward_scores_images_like_the_metric() -> None:
    from maskgrpo.registry import rewards
    from maskgrpo.tasks.shapes import make_example, make_wrong, render

    metadata, objects = make_example("counting", 3)
    wrong = make_wrong(metadata, "count", 3)
    reward = rewards.build({"type": "geneval", "detector": "shapes"})
    images = [render(objects, size=32), render(wrong, size=32)]
    assert reward([metadata["prompt"]] * 2, images, metadata=[metadata] * 2) == [1.0, 0.0]
