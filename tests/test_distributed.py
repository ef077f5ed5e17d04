"""Several processes through accelerate: 2 CPU processes (gloo, one thread each) equal one process
on the same global batch, write every file once, resume exactly, and refuse another count.

The runs go through the command users type (`accelerate launch --config_file
configs/accelerate/cpu-2proc.yaml -m maskgrpo train RECIPE`), so the shipped config is tested too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

from maskgrpo.cli import main

from .conftest import REPO, tiny_grpo_recipe

pytestmark = pytest.mark.slow

# Each test's recipe folder has its own copy of this plugin, and plugins are keyed by their path
# (two files, two plugins), so a second copy loaded in this process must not register again.
SEVENS = """
from maskgrpo.registry import rewards


def count_sevens(prompts, completions, **columns):
    '''How many 7s a completion has: varies inside every group, so every step updates.'''
    return [float(c.count("7")) for c in completions]


if "count_sevens_dist" not in rewards:
    rewards.register("count_sevens_dist")(count_sevens)
"""


def launch(*args: str, port: int) -> subprocess.CompletedProcess:
    accelerate = Path(sys.executable).parent / "accelerate"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [str(accelerate), "launch", "--config_file", str(REPO / "configs/accelerate/cpu-2proc.yaml"), "--main_process_port", str(port)]
    return subprocess.run([*cmd, "-m", "maskgrpo", *args], env=env, capture_output=True, text=True, timeout=600)


def recipe(tmp_path: Path, steps: int = 2, **train) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "sevens.py").write_text(SEVENS)
    return tiny_grpo_recipe(
        tmp_path,
        plugins=["sevens.py"],
        task={"type": "arithmetic", "levels": [1], "n_eval": 6},
        rewards=[{"type": "count_sevens_dist"}, {"type": "math_accuracy", "weight": 0.5}],
        grpo={"group_size": 4, "num_iterations": 2, "advantage_std": "batch"},
        optim={"lr": 3e-3, "grad_accum": 2},
        train={"steps": steps, "prompts_per_step": 4, "eval_every": 1, "report_to": [], **train},
    )


def weights(run: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(run / "checkpoint/policy.safetensors"))


def metrics(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_equal_one_on_the_same_global_batch(tmp_path: Path) -> None:
    one = recipe(tmp_path / "one")
    assert main(["train", str(one), "--no-progress"]) == 0
    two = recipe(tmp_path / "two")
    done = launch("train", str(two), "--no-progress", port=29531)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = weights(tmp_path / "one/run"), weights(tmp_path / "two/run")
    start = torch.load(tmp_path / "two/run/checkpoint/trainer_state.pt", weights_only=True)
    assert start["world_size"] == 2
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    rows_a, rows_b = metrics(tmp_path / "one/run"), metrics(tmp_path / "two/run")
    assert [r["step"] for r in rows_b] == [1, 2]  # written once, not once per process
    for ra, rb in zip(rows_a, rows_b):
        for key in ("reward/mean", "reward/count_sevens_dist/mean", "frac_zero_std", "eval/accuracy"):
            assert ra[key] == pytest.approx(rb[key], abs=1e-6), key
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5)
        assert ra["reward/std"] > 0  # the step really updated
    assert done.stdout.count("held-out greedy accuracy before training") == 1


def test_resume_under_two_processes_equals_an_uninterrupted_run_and_refuses_another_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    straight = recipe(tmp_path / "straight", steps=2, save_every=1)
    assert launch("train", str(straight), "--no-progress", port=29532).returncode == 0
    halves = recipe(tmp_path / "halves", steps=2, save_every=1)
    first = launch("train", str(halves), "--no-progress", "--set", "train.steps=1", port=29533)
    assert first.returncode == 0, first.stderr[-3000:]
    assert main(["train", str(halves), "--no-progress", "--resume"]) == 2  # one process: refused
    assert "was written by 2 process(es), this run has 1" in capsys.readouterr().err
    second = launch("train", str(halves), "--no-progress", "--resume", port=29534)
    assert second.returncode == 0, second.stderr[-3000:]
    a, b = weights(tmp_path / "straight/run"), weights(tmp_path / "halves/run")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(metrics(tmp_path / "straight/run")) == strip(metrics(tmp_path / "halves/run"))


def test_prompts_that_do_not_split_over_the_processes_are_refused(tmp_path: Path) -> None:
    bad = recipe(tmp_path, steps=1)
    done = launch("train", str(bad), "--no-progress", "--set", "train.prompts_per_step=3", port=29535)
    assert done.returncode != 0
    assert "train.prompts_per_step: 3 do not split over 2 processes; use a multiple of 2" in done.stderr


def sft_recipe(tmp_path: Path, **sft) -> Path:
    import yaml

    recipe = {
        "kind": "sft",
        "name": "tiny-sft",
        "output_dir": str(tmp_path / "run"),
        "backbone": {"type": "transformer", "max_length": 16, "d_model": 32, "n_layers": 1, "n_heads": 2},
        "tokenizer": {"type": "char"},
        "task": {"type": "arithmetic", "levels": [1], "n_eval": 6},
        "sampler": {"type": "low_confidence", "gen_length": 8, "block_length": 8, "steps": 8},
        "sft": {"steps": 3, "batch_size": 8, "lr": 3e-3, "warmup_steps": 1, "eval_every": 2, "report_to": [], "weighting": "masked_mean", **sft},
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_two_process_sft_equals_one_and_resumes(tmp_path: Path) -> None:
    """SFT is data-parallel the same way: a global batch split by rank, the loss normalised over
    both shares; resume under 2 processes continues exactly."""
    assert main(["sft", str(sft_recipe(tmp_path / "one")), "--no-progress"]) == 0
    done = launch("sft", str(sft_recipe(tmp_path / "two")), "--no-progress", port=29536)
    assert done.returncode == 0, done.stderr[-3000:]
    load = lambda run: safetensors.torch.load_file(str(run / "checkpoint/model.safetensors"))  # noqa: E731
    a, b = load(tmp_path / "one/run"), load(tmp_path / "two/run")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    rows_a, rows_b = metrics(tmp_path / "one/run"), metrics(tmp_path / "two/run")
    assert [r["step"] for r in rows_b] == [1, 2, 3]
    for ra, rb in zip(rows_a, rows_b):
        assert ra["loss"] == pytest.approx(rb["loss"], abs=1e-5)
    assert rows_a[1]["eval/accuracy"] == rows_b[1]["eval/accuracy"]
    halves = sft_recipe(tmp_path / "halves", schedule="constant")  # cosine decays over the total: not exact
    straight = sft_recipe(tmp_path / "straight", schedule="constant")
    assert launch("sft", str(straight), "--no-progress", port=29539).returncode == 0
    b = load(tmp_path / "straight/run")
    assert launch("sft", str(halves), "--no-progress", "--set", "sft.steps=2", port=29537).returncode == 0
    again = launch("sft", str(halves), "--no-progress", "--resume", port=29538)
    assert again.returncode == 0, again.stderr[-3000:]
    c = load(tmp_path / "halves/run")
    for k in b:
        assert torch.equal(b[k], c[k]), k


@pytest.mark.parametrize("name", ["1gpu", "8gpu-ddp", "8gpu-fsdp", "8gpu-zero2", "8gpu-zero3", "cpu-2proc"])
def test_shipped_accelerate_configs_load_and_plan(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """GPU configs cannot run here: they are checked by accelerate's own config loader and by the
    planner that reads them (process count, sharding)."""
    from accelerate.commands.config.config_args import load_config_from_file

    path = REPO / "configs/accelerate" / f"{name}.yaml"
    config = load_config_from_file(str(path))
    expected = {"1gpu": 1, "cpu-2proc": 2}.get(name, 8)
    assert config.num_processes == expected
    if name.startswith("8gpu-zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
    if name == "8gpu-fsdp":
        assert config.fsdp_config["fsdp_version"] == 2
    recipe = REPO / "recipes/llada-gsm8k.yaml"
    assert main(["check", str(recipe), "--set", f"train.accelerate_config={path}"]) == 0
    assert f"{expected} process" in capsys.readouterr().out
