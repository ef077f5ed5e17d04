"""The GRPO trainer end to end on tiny models: it learns, logs, resumes, and fails loudly."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from maskgrpo.cli import main
from maskgrpo.errors import MaskGRPOError
from maskgrpo.recipe import load_recipe
from maskgrpo.rewards.combine import RewardError
from maskgrpo.trainer import GRPOTrainer

from .conftest import tiny_grpo_recipe, vary_rewards

SEVEN_PLUGIN = """
from maskgrpo.registry import rewards

@rewards.register("count_sevens")
def count_sevens(prompts, completions, **columns):
    '''How many 7s the completion has (a reward any policy can learn quickly).'''
    return [float(c.count("7")) for c in completions]
"""

HOSTILE_PLUGIN = """
from maskgrpo.registry import rewards

@rewards.register("explodes")
def explodes(prompts, completions, **columns):
    '''Raises on the third sample.'''
    if len(completions) > 2 or "boom" in completions[0]:
        for i, c in enumerate(completions):
            if i == 2 or len(completions) == 1 and columns.get("index", [None])[0] == 2:
                raise ValueError("bad sample")
    return [0.0] * len(completions)

@rewards.register("nan_reward")
def nan_reward(prompts, completions, **columns):
    '''Returns NaN.'''
    return [float("nan")] * len(completions)
"""


def params(trainer: GRPOTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}


def test_two_steps_change_parameters_and_log_finite_metrics(tmp_path: Path) -> None:
    recipe = load_recipe(tiny_grpo_recipe(tmp_path))
    trainer = GRPOTrainer(recipe, progress=False)
    before = params(trainer)
    vary_rewards(trainer)
    trainer.train()
    after = params(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["frac_zero_std"] == 0.0 for r in rows)
    required = ["reward/mean", "reward/math_accuracy/mean", "reward/format/mean", "loss", "kl", "clip_ratio", "frac_zero_std", "lr", "seconds"]
    for r in rows:
        for key in required:
            assert isinstance(r[key], float) and math.isfinite(r[key]), key
    assert "eval/accuracy" in rows[-1]
    run = tmp_path / "run"
    for name in ["recipe.yaml", "report.md", "curves.png", "model/config.json", "model/char_tokenizer.json", "checkpoint/trainer_state.pt"]:
        assert (run / name).is_file(), name
    assert load_recipe(run / "recipe.yaml").grpo.group_size == 4  # the saved recipe is itself valid


def test_reward_rises_on_a_learnable_reward(tmp_path: Path) -> None:
    (tmp_path / "sevens.py").write_text(SEVEN_PLUGIN)
    path = tiny_grpo_recipe(
        tmp_path,
        plugins=["sevens.py"],
        rewards=[{"type": "count_sevens"}],
        grpo={"group_size": 8, "num_iterations": 2},
        optim={"lr": 3e-3},
        train={"steps": 12, "prompts_per_step": 4, "eval_every": 0},
    )
    trainer = GRPOTrainer(load_recipe(path), progress=False)
    rewards = [trainer.train_step(s)["reward/mean"] for s in range(12)]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 1.0, rewards


def test_sft_coef_teaches_the_reference_completions_when_the_reward_is_silent(tmp_path: Path) -> None:
    """Equal rewards give zero advantages, so with beta 0 only the PPO-ptx term can move the
    policy: without it nothing changes; with it the parameters move and its loss falls."""
    def run(sft_coef: float, sub: str) -> tuple[GRPOTrainer, dict[str, torch.Tensor], list[dict]]:
        path = tiny_grpo_recipe(tmp_path / sub, grpo={"group_size": 4, "num_iterations": 2, "sft_coef": sft_coef}, optim={"lr": 3e-3})
        trainer = GRPOTrainer(load_recipe(path), progress=False)
        trainer.rewards.terms[0].fn = lambda prompts, completions, **kw: [1.0] * len(completions)
        trainer.rewards.terms[1].fn = lambda prompts, completions, **kw: [0.0] * len(completions)
        before = params(trainer)
        return trainer, before, [trainer.train_step(s) for s in range(10)]

    silent, before, rows = run(0.0, "off")
    assert all(torch.equal(before[k], v) for k, v in params(silent).items()) and "sft_loss" not in rows[0]
    taught, before, rows = run(1.0, "on")
    assert any(not torch.equal(before[k], v) for k, v in params(taught).items())
    # scored are exactly the masked completion tokens, against the reference completion
    examples = [taught.task.train_example(i) for i in range(4)]
    batch = taught._sft_batch(examples, step=0)
    select, inputs, targets = batch["select"], batch["inputs"], batch["targets"]
    assert select.any() and torch.equal(inputs[select], torch.full_like(inputs[select], taught.mask_id))
    assert torch.equal(inputs[~select], targets[~select]) and not select[:, : inputs.shape[1] - 8].any()
    assert torch.equal(targets[:, -8:], taught.modality.targets(examples, 8, "cpu"))
    with pytest.raises(MaskGRPOError, match="grpo.sft_coef: the task gives no reference completions"):
        taught._sft_batch([dataclasses.replace(e, target="") for e in examples], step=0)
    losses = [r["sft_loss"] for r in rows]
    assert all(math.isfinite(x) and x > 0 for x in losses) and sum(losses[-3:]) < 0.8 * sum(losses[:3]), losses


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    straight = load_recipe(tiny_grpo_recipe(tmp_path / "a", train={"steps": 4, "prompts_per_step": 2, "eval_every": 2}))
    GRPOTrainer(straight, progress=False).train()
    half = tiny_grpo_recipe(tmp_path / "b", train={"steps": 4, "prompts_per_step": 2, "eval_every": 2})
    GRPOTrainer(load_recipe(half, ["train.steps=2"]), progress=False).train()
    resumed = GRPOTrainer(load_recipe(half), progress=False)
    resumed.train(resume=True)

    def rows(run: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in (run / "metrics.jsonl").read_text().splitlines()]

    assert rows(tmp_path / "a" / "run") == rows(tmp_path / "b" / "run")
    a = torch.load(tmp_path / "a/run/checkpoint/trainer_state.pt", weights_only=False)
    b = torch.load(tmp_path / "b/run/checkpoint/trainer_state.pt", weights_only=False)
    assert a["step"] == b["step"] == 4 and a["eval_history"] == b["eval_history"]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(tiny_grpo_recipe(tmp_path)), "--resume", "--no-progress"]) == 2
    assert "--resume: no checkpoint" in capsys.readouterr().err


def test_old_reference_and_current_policies_see_identical_inputs(tmp_path: Path) -> None:
    recipe = load_recipe(tiny_grpo_recipe(tmp_path, grpo={"group_size": 4, "num_iterations": 3, "beta": 0.1}))
    trainer = GRPOTrainer(recipe, progress=False)
    seen: dict[str, list[torch.Tensor]] = {"policy": [], "reference": []}
    for name, model in [("policy", trainer.policy), ("reference", trainer.reference)]:
        original = model.hidden

        def spy(tokens, attention_mask=None, _orig=original, _name=name):
            seen[_name].append(tokens.clone())
            return _orig(tokens, attention_mask)

        model.hidden = spy
    trainer.train_step(0)
    # policy calls: rollout steps, then 3 "old" passes, then 3 training passes
    policy_inputs = seen["policy"][-6:]
    assert len(seen["reference"]) == 3
    for j in range(3):
        assert torch.equal(policy_inputs[j], seen["reference"][j])  # old == reference input
        assert torch.equal(policy_inputs[j], policy_inputs[3 + j])  # old == current input
    assert not torch.equal(policy_inputs[0], policy_inputs[1])  # a new mask per iteration


@pytest.mark.parametrize("loss_agg", ["token", "seq"])
def test_gradient_accumulation_matches_one_big_batch(tmp_path: Path, loss_agg: str) -> None:
    """16 rollouts in 1, 2 or 3 micro-batches (6 + 6 + 4 rows): the same gradient in a step
    that really moves the parameters. (Gradients, not parameters, are compared: Adam's first
    step is lr * sign(g), which turns float noise in near-zero gradients into lr-sized moves.)"""
    grads = []
    for accum in (1, 2, 3):
        recipe = load_recipe(
            tiny_grpo_recipe(tmp_path / str(accum), optim={"lr": 1e-3, "grad_accum": accum}, grpo={"group_size": 4, "num_iterations": 1, "loss_agg": loss_agg})
        )
        trainer = GRPOTrainer(recipe, progress=False)
        vary_rewards(trainer)
        initial = params(trainer)
        row = trainer.train_step(0)
        assert row["frac_zero_std"] < 1
        assert row["ratio/first_max_dev"] == 0.0  # old log-probs come from the same micro-batches
        assert any(not torch.equal(initial[k], v) for k, v in params(trainer).items())
        grads.append({n: p.grad.clone() for n, p in trainer.policy.named_parameters()})
    for other in grads[1:]:
        for k in grads[0]:
            assert torch.allclose(grads[0][k], other[k], rtol=1e-4, atol=1e-8), k
    assert any(g.abs().max() > 1e-4 for g in grads[0].values())


def test_reward_that_raises_names_reward_and_sample(tmp_path: Path) -> None:
    (tmp_path / "hostile.py").write_text(
        "from maskgrpo.registry import rewards\n"
        "@rewards.register('explodes_on_answer_3')\n"
        "def explodes(prompts, completions, answer, **columns):\n"
        "    '''Raises when the gold answer is 3.'''\n"
        "    if '3' in answer:\n"
        "        raise ValueError('cannot score')\n"
        "    return [0.0] * len(completions)\n"
    )
    path = tiny_grpo_recipe(tmp_path, plugins=["hostile.py"], rewards=[{"type": "explodes_on_answer_3"}], task={"type": "arithmetic", "levels": [1]})
    trainer = GRPOTrainer(load_recipe(path), progress=False)
    with pytest.raises(RewardError, match=r"reward 'explodes_on_answer_3' raised ValueError: cannot score on sample \d+ \(prompt '\d\+\d='"):
        for step in range(20):
            trainer.train_step(step)


def test_nan_rewards_skip_the_step(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "nan.py").write_text(HOSTILE_PLUGIN)
    path = tiny_grpo_recipe(tmp_path, plugins=["nan.py"], rewards=[{"type": "nan_reward"}])
    trainer = GRPOTrainer(load_recipe(path), progress=False)
    before = params(trainer)
    row = trainer.train_step(0)
    assert row["skipped"] == "non-finite reward"
    assert "non-finite reward" in capsys.readouterr().out
    assert all(torch.equal(before[k], v) for k, v in params(trainer).items())


def test_elbo_is_refused_for_training(tmp_path: Path) -> None:
    with pytest.raises(MaskGRPOError, match="elbo"):
        GRPOTrainer(load_recipe(tiny_grpo_recipe(tmp_path, estimator="elbo")), progress=False)


@pytest.mark.parametrize(
    "estimator", ["d1", "unigrpo", "random", "trace", {"type": "trace", "shrink": 1, "schedule": "cycle"}, {"type": "d1", "stop_at_eos": False}]
)
def test_every_training_estimator_runs_a_step(tmp_path: Path, estimator) -> None:
    trainer = GRPOTrainer(load_recipe(tiny_grpo_recipe(tmp_path, estimator=estimator)), progress=False)
    vary_rewards(trainer)
    before = params(trainer)
    row = trainer.train_step(0)
    assert row["frac_zero_std"] < 1
    assert math.isfinite(row["loss"]) and math.isfinite(row["clip_ratio"])
    assert row["ratio/first_max_dev"] < 1e-5  # the first inner iteration starts at ratio 1 ...
    assert any(not torch.equal(before[k], v) for k, v in params(trainer).items())  # ... and moves


def test_trace_trains_on_every_step_group(tmp_path: Path) -> None:
    """With shrink 1 and 4 decode steps there are 4 step groups: every inner iteration's loss
    covers all of them (TraceRL), so the policy sees 4 masked inputs per rollout row."""
    recipe = load_recipe(tiny_grpo_recipe(tmp_path, estimator={"type": "trace", "shrink": 1}))
    trainer = GRPOTrainer(recipe, progress=False)
    vary_rewards(trainer)
    rows_seen: list[int] = []
    original = trainer.policy.hidden

    def spy(tokens, attention_mask=None):
        rows_seen.append(tokens.shape[0])
        return original(tokens, attention_mask)

    trainer.policy.hidden = spy
    trainer.train_step(0)
    # 4 rollout steps on 16 rows, then 2 "old" and 2 training passes over 4 groups x 16 rows
    assert rows_seen[-4:] == [64, 64, 64, 64]


def test_lora_dropout_is_off_so_the_ratio_is_exactly_one(tmp_path: Path) -> None:
    """LoRA with dropout 0.3 in the recipe, mu = 1, several steps after the adapter has moved:
    old and current log-probs agree exactly and nothing is clipped (dropout is disabled, as in
    TRL's GRPO). With `disable_dropout: false` the ratio moves away from 1."""
    lora = {"r": 4, "alpha": 8, "dropout": 0.3, "target_modules": ["qkv", "fc1"]}
    path = tiny_grpo_recipe(tmp_path, lora=lora, grpo={"group_size": 4, "num_iterations": 1}, optim={"lr": 1e-2})
    trainer = GRPOTrainer(load_recipe(path), progress=False)
    vary_rewards(trainer)
    rows = [trainer.train_step(s) for s in range(4)]
    assert all(r["ratio/first_max_dev"] == 0.0 and r["ratio/max_dev"] == 0.0 and r["clip_ratio"] == 0.0 for r in rows), rows
    noisy = GRPOTrainer(load_recipe(path, ["grpo.disable_dropout=false"]), progress=False)
    vary_rewards(noisy)
    assert max(noisy.train_step(s)["ratio/first_max_dev"] for s in range(4)) > 0.01


def test_lora_trains_only_the_adapter_and_uses_the_base_as_reference(tmp_path: Path) -> None:
    path = tiny_grpo_recipe(tmp_path, lora={"r": 4, "alpha": 8, "target_modules": ["qkv", "fc1"]}, grpo={"group_size": 4, "num_iterations": 2, "beta": 0.1})
    trainer = GRPOTrainer(load_recipe(path), progress=False)
    assert trainer.reference is None
    vary_rewards(trainer)
    before = params(trainer)
    for step in range(3):
        trainer.train_step(step)
    changed = {k for k, v in params(trainer).items() if not torch.equal(before[k], v)}
    assert changed and all("lora_" in k for k in changed)


def test_interrupt_saves_a_checkpoint_that_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tiny_grpo_recipe(tmp_path, train={"steps": 3, "prompts_per_step": 2, "eval_every": 0})
    trainer = GRPOTrainer(load_recipe(path), progress=False)
    original = trainer.train_step

    def interrupt_at_second(step: int):
        if step == 1:
            raise KeyboardInterrupt
        return original(step)

    monkeypatch.setattr(trainer, "train_step", interrupt_at_second)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    state = torch.load(tmp_path / "run/checkpoint/trainer_state.pt", weights_only=False)
    assert state["step"] == 1
    resumed = GRPOTrainer(load_recipe(path), progress=False)
    resumed.train(resume=True)
    assert resumed.step == 3


def test_reference_sync_copies_the_policy(tmp_path: Path) -> None:
    path = tiny_grpo_recipe(tmp_path, grpo={"group_size": 4, "num_iterations": 2, "beta": 0.1, "ref_sync_steps": 2})
    trainer = GRPOTrainer(load_recipe(path), progress=False)
    initial = {k: v.clone() for k, v in trainer.reference.state_dict().items()}
    vary_rewards(trainer)
    trainer.train()
    synced = trainer.reference.state_dict()
    assert all(torch.equal(synced[k], v) for k, v in trainer.policy.state_dict().items())
    assert any(not torch.equal(initial[k], synced[k]) for k in initial)
    with pytest.raises(MaskGRPOError, match="ref_sync_steps"):
        GRPOTrainer(load_recipe(path, ["grpo.beta=0"]), progress=False)


def test_a_task_without_eval_data_reports_no_evaluation_not_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"question": f"{a}+1=", "answer": f"#### {a + 1}"}) + "\n" for a in range(8)))
    path = tiny_grpo_recipe(tmp_path, task={"type": "jsonl", "train_path": str(data)})
    summary = GRPOTrainer(load_recipe(path), progress=False).train()
    out = capsys.readouterr().out
    assert "no evaluation: task JsonlTask has no eval data" in out and "0.000" not in out
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and not any("eval/accuracy" in r for r in rows)
    assert "no evaluation" in (tmp_path / "run" / "report.md").read_text()
    assert math.isnan(summary["before"]) and math.isnan(summary["after"])


@pytest.mark.parametrize(
    "spec,key",
    [({"type": "math_accuracy"}, "accuracy"), ({"type": "geneval", "detector": "shapes"}, "overall"), ({"type": "clip_score", "model": "local-dir:maskgrpo/checkpoints/shapes-clip"}, "clip_score")],
)
def test_metrics_on_an_empty_set_are_nan_not_zero(spec: dict, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from maskgrpo.registry import metrics

    from .conftest import REPO

    monkeypatch.chdir(REPO)
    result = metrics.build(spec).compute()
    assert result["n"] == 0 and math.isnan(result[key])


class _Payload:
    """A pickle that runs code when loaded (what a crafted trainer_state.pt would carry)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_grpo_recipe(tmp_path, train={"steps": 1, "prompts_per_step": 2, "eval_every": 0})
    assert main(["train", str(path), "--no-progress"]) == 0
    state = tmp_path / "run/checkpoint/trainer_state.pt"
    marker = tmp_path / "pwned"
    torch.save({"step": 0, "evil": _Payload(marker)}, state)
    assert main(["train", str(path), "--resume", "--no-progress"]) == 2
    assert "is not a plain trainer state" in capsys.readouterr().err
    assert not marker.exists()


def test_a_second_run_refuses_to_wipe_the_first_without_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_grpo_recipe(tmp_path, train={"steps": 1, "prompts_per_step": 2, "eval_every": 0})
    assert main(["train", str(path), "--no-progress"]) == 0
    metrics = (tmp_path / "run/metrics.jsonl").read_text()
    assert main(["train", str(path), "--no-progress", "--set", "seed=5"]) == 2
    assert "--resume or replace it with --overwrite" in capsys.readouterr().err
    assert (tmp_path / "run/metrics.jsonl").read_text() == metrics  # nothing lost
    assert main(["train", str(path), "--no-progress", "--resume", "--overwrite"]) == 2
    assert main(["train", str(path), "--no-progress", "--overwrite", "--set", "seed=5"]) == 0
    assert (tmp_path / "run/metrics.jsonl").read_text() != metrics


def test_lora_export_loads_back_and_scores_like_the_trained_policy(tmp_path: Path) -> None:
    """A LoRA run's model/ is the adapter merged into its base: `load_model` (what eval/sample
    --model use) gives the logits of the trained policy, adapter on."""
    from maskgrpo.components import load_model

    path = tiny_grpo_recipe(tmp_path, lora={"r": 4, "alpha": 8, "target_modules": ["qkv", "fc1"]}, optim={"lr": 1e-2})
    trainer = GRPOTrainer(load_recipe(path), progress=False)
    vary_rewards(trainer)
    trainer.train()
    tokens = torch.randint(0, trainer.tokenizer.vocab_size, (3, 12), generator=torch.Generator().manual_seed(0))
    trainer.policy.eval()
    with torch.no_grad():
        trained = trainer.policy(tokens)
        trainer.policy.disable_adapters()
        base = trainer.policy(tokens)
        trainer.policy.enable_adapters()
    backbone, _ = load_model(str(tmp_path / "run/model"))
    with torch.no_grad():
        loaded = backbone.eval()(tokens)
    assert (trained - base).abs().max() > 1e-4  # the adapter moved
    assert torch.allclose(loaded, trained, atol=1e-5)
    assert main(["sample", "--model", str(tmp_path / "run/model"), "--prompt", "1+2="]) == 0


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path: Path) -> None:
    grads, forwards = [], []
    for checkpointing in (False, True):
        path = tiny_grpo_recipe(tmp_path / str(checkpointing), grpo={"group_size": 4, "num_iterations": 1})
        trainer = GRPOTrainer(load_recipe(path, [f"train.gradient_checkpointing={str(checkpointing).lower()}"]), progress=False)
        assert trainer.policy.gradient_checkpointing is checkpointing
        vary_rewards(trainer)
        calls = []
        trainer.policy.blocks[0].attn.register_forward_hook(lambda *a: calls.append(torch.is_grad_enabled()))
        trainer.train_step(0)
        grads.append({n: p.grad.clone() for n, p in trainer.policy.named_parameters()})
        forwards.append(len(calls))
    for k in grads[0]:
        assert torch.allclose(grads[0][k], grads[1][k], atol=1e-7), k
    assert forwards[1] == forwards[0] + 1  # the block ran once more: recomputed in the backward pass


def test_bf16_autocast_trains_with_fp32_master_weights_and_ratio_one(tmp_path: Path) -> None:
    """mixed_precision bf16 (accelerate autocast, also on a CPU): weights stay float32, old and
    current log-probs agree at the first inner iteration, the update is close to float32's."""
    results = {}
    for precision in ("no", "bf16"):
        path = tiny_grpo_recipe(tmp_path / precision, grpo={"group_size": 4, "num_iterations": 1})
        trainer = GRPOTrainer(load_recipe(path, [f"train.mixed_precision={precision}"]), progress=False)
        vary_rewards(trainer)
        row = trainer.train_step(0)
        assert row["ratio/first_max_dev"] == 0.0
        assert all(p.dtype == torch.float32 for p in trainer.policy.parameters())
        results[precision] = {n: p.grad.clone() for n, p in trainer.policy.named_parameters()}
    cos = torch.nn.functional.cosine_similarity(
        torch.cat([g.flatten() for g in results["no"].values()]), torch.cat([g.flatten() for g in results["bf16"].values()]), dim=0
    )
    differs = any(not torch.equal(results["no"][k], results["bf16"][k]) for k in results["no"])
    assert differs and cos > 0.95  # bf16 really ran, and computed nearly the same gradient


def test_tensorboard_gets_the_scalars_and_samples(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = tiny_grpo_recipe(tmp_path, train={"steps": 2, "prompts_per_step": 4, "eval_every": 1})
    trainer = GRPOTrainer(load_recipe(path), progress=False)
    vary_rewards(trainer)
    trainer.train()
    events = list((tmp_path / "run" / "tb").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent)).Reload()
    tags = acc.Tags()
    assert {"reward/mean", "loss", "eval/accuracy", "ratio/first_max_dev"} <= set(tags["scalars"])
    assert [e.step for e in acc.Scalars("reward/mean")] == [1, 2]
    assert any("samples" in t for t in tags["tensors"])  # the sample completions, as text


def test_resume_survives_a_crash_mid_write(tmp_path: Path) -> None:
    """A torn last line in metrics.jsonl, a half-written checkpoint temporary, and a kill between
    the two renames of a save (only .checkpoint.old left): --resume recovers from each."""
    path = tiny_grpo_recipe(tmp_path, train={"steps": 2, "prompts_per_step": 2, "eval_every": 0, "report_to": []})
    GRPOTrainer(load_recipe(path, ["train.steps=1"]), progress=False).train()
    run = tmp_path / "run"
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2, "loss": 0.1')  # the crash cut this line
    (run / ".checkpoint.tmpab12").mkdir()
    (run / ".checkpoint.tmpab12" / "policy.safetensors").write_bytes(b"half")
    (run / "checkpoint").rename(run / ".checkpoint.old")
    resumed = GRPOTrainer(load_recipe(path), progress=False)
    resumed.train(resume=True)
    assert resumed.step == 2
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert not list(run.glob(".checkpoint.*"))


def test_the_model_folder_describes_itself_and_load_model_reads_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from maskgrpo.components import MANIFEST, load_model

    path = tiny_grpo_recipe(tmp_path, lora={"r": 4, "alpha": 8, "target_modules": ["qkv"]})
    GRPOTrainer(load_recipe(path), progress=False).train()
    folder = tmp_path / "run" / "model"
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["backbone"] == "transformer" and manifest["tokenizer"] == "char" and manifest["adapter"] == "merged"
    assert manifest["image_tokenizer"] is None and manifest["codebook_offset"] is None and manifest["recipe"] == "tiny"
    backbone, tokenizer = load_model(str(folder))
    assert backbone.vocab_size == tokenizer.vocab_size
    (folder / MANIFEST).write_text(json.dumps({**manifest, "backbone": "transfomer"}))  # the manifest decides
    assert main(["sample", "--model", str(folder), "--prompt", "1+2="]) == 2
    err = capsys.readouterr().err
    assert MANIFEST in err and "did you mean 'transformer'" in err


def test_resume_refuses_a_changed_recipe_and_allows_more_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_grpo_recipe(tmp_path, train={"steps": 1, "prompts_per_step": 2, "eval_every": 0, "report_to": []})
    assert main(["train", str(path), "--no-progress"]) == 0
    capsys.readouterr()
    for change in (["grpo.group_size=8"], ["optim.lr=0.5"], ["seed=3"], ["backbone.d_model=64"]):
        assert main(["train", str(path), "--no-progress", "--resume", "--set", change[0]]) == 2
        err = capsys.readouterr().err
        assert "--resume: the recipe changed since the checkpoint: " + change[0].split("=")[0] in err, err
    assert main(["train", str(path), "--no-progress", "--resume", "--set", "train.steps=2"]) == 0
    assert "resume: train.steps 1 -> 2 (allowed)" in capsys.readouterr().out
