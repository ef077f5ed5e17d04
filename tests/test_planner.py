"""The batch and memory planner of `maskgrpo check`: hand-checked batch arithmetic, one-line
refusals (exit 2), the llada-gsm8k fit verdicts, parameter counts against real models, and the
estimate moving the right way with LoRA, bf16, ZeRO and gradient checkpointing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from maskgrpo.cli import main
from maskgrpo.errors import MaskGRPOError
from maskgrpo.planner import (
    KNOWN_ARCHITECTURES,
    Workload,
    estimate_memory,
    estimate_peak_bytes,
    llada_shape,
    plan_recipe,
    read_accelerate_config,
    transformer_shape,
)
from maskgrpo.recipe import load_recipe

from .conftest import REPO

GiB = 2**30


def _recipe(tmp_path: Path, name: str = "r.yaml", base: str = "arith-grpo.yaml", accelerate: dict | None = None, **sections: dict) -> Path:
    """A bundled recipe with some sections updated, written to tmp_path (with an accelerate
    config beside it when given)."""
    data = yaml.safe_load((REPO / "recipes" / base).read_text())
    for key, values in sections.items():
        data[key] = {**data.get(key, {}), **values} if isinstance(values, dict) else values
    if accelerate is not None:
        (tmp_path / "acc.yaml").write_text(yaml.safe_dump({"compute_environment": "LOCAL_MACHINE", "machine_rank": 0, "num_machines": 1, **accelerate}))
        data.setdefault("train", {})["accelerate_config"] = "acc.yaml"
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["check", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


# -- batch arithmetic -----------------------------------------------------------------------------


def test_arith_grpo_batch_plan(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _check(capsys, str(REPO / "recipes" / "arith-grpo.yaml"))
    assert code == 0
    # 32 prompts x G 8 = 256 rows, one process, grad_accum 1, mu 4, 150 steps -> 600 optimizer steps
    assert "256 completions" in out and "rollout rows per process   256 = 32 x 8 / 1" in out
    assert "1 (optim.grad_accum) of 256 loss rows" in out
    assert "4 per rollout batch (one per inner iteration), 600 in the run" in out
    # d 128, 3 layers, vocab 21, max_length 32: 604,565 parameters x 4 bytes = 2.3 MiB
    assert "0.6 M params" in out and "parameters                 2.3 MiB" in out
    assert "prompt up to 24 tokens (max_length 32 - 8)" in out
    assert "fits one 80 GB GPU" not in out  # a CPU recipe gets no GPU verdicts


def test_accelerate_config_sets_processes_and_sharding(tmp_path: Path) -> None:
    acc = {"distributed_type": "DEEPSPEED", "num_processes": 4, "deepspeed_config": {"zero_stage": 2}, "mixed_precision": "bf16"}
    path = _recipe(tmp_path, accelerate=acc, train={"prompts_per_step": 8}, grpo={"group_size": 4}, optim={"grad_accum": 2})
    plan = plan_recipe(load_recipe(path))
    text = "\n".join(plan.lines())
    # 8 prompts x 4 / 4 processes = 8 rows, 2 micro-batches of 4
    assert "batch plan (4 processes, DeepSpeed ZeRO-2; accelerate config acc.yaml)" in text
    assert "rollout rows per process   8 = 8 x 4 / 4" in text and "2 (optim.grad_accum) of 4 loss rows" in text
    assert "sharded / 4" in text and "mixed_precision bf16, the recipe no: the recipe's applies" in text
    # --num-processes overrides the count and keeps the config's sharding
    text = "\n".join(plan_recipe(load_recipe(path), num_processes=2).lines())
    assert "2 processes, DeepSpeed ZeRO-2; --num-processes 2 with acc.yaml" in text and "16 = 8 x 4 / 2" in text


def test_trace_all_multiplies_loss_rows_and_llada_splits_over_8(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _check(capsys, str(REPO / "recipes" / "arith-grpo-trace.yaml"))
    # 8 sampler steps over mu 4: shrink 2, 4 step groups, each stacked: 256 x 4 = 1024 loss rows
    assert code == 0 and "of 1024 loss rows (256 x 4 / 1)" in out and "stacks 4 step groups" in out
    code, out, _ = _check(capsys, str(REPO / "recipes" / "llada-gsm8k.yaml"), "--num-processes", "8")
    # 8 prompts x G 6 / 8 = 6 rows per process; grad_accum 6 -> 1 row per micro-batch; mu 12 x 1000 steps
    assert code == 0 and "6 = 8 x 6 / 8" in out and "6 (optim.grad_accum) of 1 loss rows" in out
    assert "12 per rollout batch (one per inner iteration), 12000 in the run" in out


def test_uneven_micro_batches_are_noted(tmp_path: Path) -> None:
    # 2 prompts x 3 = 6 rows in 4 micro-batches: chunks of 2, so 3 micro-batches really run
    path = _recipe(tmp_path, train={"prompts_per_step": 2}, grpo={"group_size": 3}, optim={"grad_accum": 4})
    text = "\n".join(plan_recipe(load_recipe(path)).lines())
    assert "6 loss rows do not split evenly: micro-batches of 2, 3 of them (not 4)" in text


def test_sft_plan(tmp_path: Path) -> None:
    path = _recipe(tmp_path, base="arith-sft.yaml", accelerate={"distributed_type": "MULTI_CPU", "num_processes": 2})
    text = "\n".join(plan_recipe(load_recipe(path)).lines())
    assert "2 processes, DDP on CPUs (gloo)" in text and "rows per process           64 = 128 / 2" in text
    assert "loss activations" in text and "rollout" not in text


def test_unknown_model_size_is_said(tmp_path: Path) -> None:
    plan = plan_recipe(load_recipe(REPO / "recipes" / "amused-geneval.yaml"))
    assert plan.memory == ["memory per process: model size unknown (backbone type 'amused': no local architecture the planner can read)"]
    assert plan.verdicts == [] and "72 = 8 x 9 / 1" in "\n".join(plan.batch)


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_bundled_recipe_plans(path: Path) -> None:
    if yaml.safe_load(path.read_text())["kind"] in ("grpo", "sft"):
        assert plan_recipe(load_recipe(path)).batch[0].startswith("batch plan")


# -- refusals ---------------------------------------------------------------------------------------


def _refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, _, err = _check(capsys, *argv)
    assert code == 2 and err.count("\n") == 1, err
    return err


def test_prompts_that_do_not_split_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _recipe(tmp_path, train={"prompts_per_step": 30})
    err = _refused(capsys, str(path), "--num-processes", "4")
    assert "train.prompts_per_step: 30 prompts do not split over 4 processes; use a multiple of 4" in err
    path = _recipe(tmp_path, "acc.yaml.recipe", accelerate={"distributed_type": "MULTI_GPU", "num_processes": 4}, train={"prompts_per_step": 30})
    assert "use a multiple of 4" in _refused(capsys, str(path))
    assert _check(capsys, str(path), "--num-processes", "5")[0] == 0  # 30 prompts split over 5
    path = _recipe(tmp_path, base="arith-sft.yaml", sft={"batch_size": 30})
    assert "sft.batch_size: 30 examples do not split over 4 processes; use a multiple of 4" in _refused(capsys, str(path), "--num-processes", "4")


def test_more_micro_batches_than_rows_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _recipe(tmp_path, train={"prompts_per_step": 8}, grpo={"group_size": 2}, optim={"grad_accum": 8})
    assert _check(capsys, str(path))[0] == 0  # 16 rows, 8 micro-batches
    err = _refused(capsys, str(path), "--num-processes", "4")  # 4 rows per process
    assert "optim.grad_accum: 8 micro-batches but only 4 rollout rows per process (8 prompts x G 2 / 4); use grad_accum <= 4" in err


def test_other_inconsistencies_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arith = str(REPO / "recipes" / "arith-grpo.yaml")
    assert "exceed the backbone's max_length 32" in _refused(capsys, arith, "--prompt-length", "30")
    assert "lora.target_modules: ['q_proj'] matches no linear module" in _refused(capsys, arith, "--set", "lora={r: 4, target_modules: [q_proj]}")
    path = _recipe(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["train"]["accelerate_config"] = "configs/missing.yaml"
    path.write_text(yaml.safe_dump(data))
    assert "missing.yaml: file not found (a relative path is relative to the recipe file; in --set, to the working directory)" in _refused(capsys, str(path))
    path = _recipe(tmp_path, accelerate={"distributed_type": "FSDP", "num_processes": 2, "fsdp_config": {"fsdp_sharding_strategy": "HALF_SHARD"}})
    assert "fsdp sharding strategy 'HALF_SHARD' unknown" in _refused(capsys, str(path))


# -- llada-gsm8k: does it fit? ------------------------------------------------------------------------


def test_llada_gsm8k_fits_one_and_eight_80gb_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    # the hand computation below is for fp32 activations on one process (the recipe itself asks for bf16)
    code, out, _ = _check(capsys, str(REPO / "recipes" / "llada-gsm8k.yaml"), "--set", "train.mixed_precision=no", "--num-processes", "1")
    assert code == 0
    assert "llada-8b-instruct: 8.02 B params" in out and "352.3 M LoRA" in out
    one = next(line for line in out.splitlines() if line.startswith("fits one 80 GB GPU: "))
    eight = next(line for line in out.splitlines() if line.startswith("fits 8 x 80 GB GPUs ("))
    assert one.startswith("fits one 80 GB GPU: yes (estimate ") and "(8 processes, DeepSpeed ZeRO-2): yes" in eight
    # by hand: 8.016 B x 2 B + 352 M x 4 B (params) + 352 M x 4 (grads) + 352 M x 8 (AdamW) = 20.2 GiB;
    # loss, 8 rows x 512 tokens: 32 x (8 x 4096 + 4 x 12288) x 2 B = 20.0 GiB + logits 8 x 256 x 126464 x 14 B = 3.4 GiB
    assert "persistent 20.2 GiB + loss 23.4 GiB" in out and "estimate 43.6 GiB" in one


def test_llada_gsm8k_with_the_shipped_zero2_config(capsys: pytest.CaptureFixture[str]) -> None:
    recipe = str(REPO / "recipes" / "llada-gsm8k.yaml")
    # a --set path is relative to the working directory; the plan names it as the recipe would
    code, out, _ = _check(capsys, recipe, "--set", f"train.accelerate_config={REPO / 'configs/accelerate/8gpu-zero2.yaml'}")
    assert code == 0 and "batch plan (8 processes, DeepSpeed ZeRO-2; accelerate config ../configs/accelerate/8gpu-zero2.yaml)" in out
    # LoRA gradients 352 M x 4 B and AdamW 352 M x 8 B, each over 8 processes
    assert "gradients                  0.2 GiB (352.3 M trainable (LoRA r 128), sharded / 8)" in out
    assert "fits 8 x 80 GB GPUs (8 processes, DeepSpeed ZeRO-2): yes" in out and "fits one 80 GB GPU: yes" in out


def test_full_finetune_8b_does_not_fit_one_gpu_but_fits_eight_with_zero3(tmp_path: Path) -> None:
    # without LoRA: bf16 weights + bf16 grads + fp32 AdamW + a frozen bf16 reference = 16 x 8 B > 72 GiB
    zero3 = {"distributed_type": "DEEPSPEED", "num_processes": 8, "deepspeed_config": {"zero_stage": 3}}
    path = _recipe(tmp_path, base="llada-gsm8k.yaml", accelerate=zero3, lora=None)
    plan = plan_recipe(load_recipe(path))
    one, eight = plan.verdicts
    assert one.startswith("fits one 80 GB GPU: no (estimate 1") and eight.startswith("fits 8 x 80 GB GPUs (8 processes, DeepSpeed ZeRO-3): yes")


def test_known_architectures_are_about_8b() -> None:
    llada = llada_shape(KNOWN_ARCHITECTURES["llada-8b-instruct"])
    mmada = llada_shape(KNOWN_ARCHITECTURES["mmada-8b"])
    # 2 x 126464 x 4096 (wte, ff_out) + 32 x (4 x 4096^2 + 3 x 4096 x 12288 + 2 x 4096) + 4096
    assert llada.n_params == 8_015_581_184 and llada.vocab == 126464
    assert mmada.n_params - llada.n_params == 2 * 8192 * 4096 and mmada.vocab == 134656


# -- counts against real models ---------------------------------------------------------------------


def _trainable_after_lora(model: torch.nn.Module, r: int, targets: list[str] | str) -> int:
    from peft import LoraConfig

    model.add_adapter(LoraConfig(r=r, lora_alpha=r, target_modules=targets))
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def test_transformer_counts_match_the_shipped_model() -> None:
    from maskgrpo.backbones.transformer import MaskedTransformer

    model = MaskedTransformer.from_pretrained(str(REPO / "maskgrpo" / "checkpoints" / "arith-small"))
    cfg = json.loads((REPO / "maskgrpo" / "checkpoints" / "arith-small" / "config.json").read_text())
    shape = transformer_shape(cfg["vocab_size"], cfg["d_model"], cfg["n_layers"], cfg["n_heads"], cfg["mlp_ratio"], cfg["max_length"])
    assert shape.n_params == sum(p.numel() for p in model.parameters())
    assert shape.lora_params(4, ["qkv", "fc2"]) == _trainable_after_lora(model, 4, ["qkv", "fc2"])
    fresh = MaskedTransformer.from_pretrained(str(REPO / "maskgrpo" / "checkpoints" / "arith-small"))
    assert shape.lora_params(4, "all-linear") == _trainable_after_lora(fresh, 4, "all-linear")


def test_llada_counts_match_the_native_backbone() -> None:
    from maskgrpo.backbones.llada import LLaDABackbone

    config = {**KNOWN_ARCHITECTURES["llada-8b-instruct"], "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "mlp_hidden_size": 48,
              "vocab_size": 100, "embedding_size": 112, "mask_token_id": 1}  # fmt: skip
    model = LLaDABackbone.from_config(config)
    shape = llada_shape(config)
    assert shape.n_params == sum(p.numel() for p in model.parameters())
    targets = ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"]  # the recipe's; ff_out also hits the head
    assert shape.lora_params(3, targets) == _trainable_after_lora(model, 3, targets)


def test_accelerate_configs_are_read(tmp_path: Path) -> None:
    def read(**data: object) -> tuple[int, int, bool]:
        (tmp_path / "a.yaml").write_text(yaml.safe_dump(data))
        par = read_accelerate_config(tmp_path / "a.yaml")
        return par.processes, par.shard_stage, par.offload_optimizer

    assert read(distributed_type="NO", num_processes=1) == (1, 0, False)
    assert read(distributed_type="MULTI_GPU", num_processes=8) == (8, 0, False)
    assert read(distributed_type="DEEPSPEED", num_processes=8, deepspeed_config={"zero_stage": 2, "offload_optimizer_device": "cpu"}) == (8, 2, True)
    assert read(distributed_type="FSDP", num_processes=8, fsdp_config={"fsdp_sharding_strategy": "FULL_SHARD"}) == (8, 3, False)
    assert read(distributed_type="FSDP", num_processes=8, fsdp_config={"fsdp_version": 2, "fsdp_reshard_after_forward": False}) == (8, 2, False)
    (tmp_path / "ds.json").write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    assert read(distributed_type="DEEPSPEED", num_processes=4, deepspeed_config={"deepspeed_config_file": "ds.json"}) == (4, 3, False)
    (tmp_path / "a.yaml").write_text("num_processes: 2\nmixed_precision: no\n")  # YAML's bare `no` is false
    assert read_accelerate_config(tmp_path / "a.yaml").mixed_precision == "no"
    shipped = {p.stem: read_accelerate_config(p) for p in (REPO / "configs" / "accelerate").glob("*.yaml")}
    stages = {name: (par.processes, par.shard_stage) for name, par in shipped.items()}
    assert stages == {"1gpu": (1, 0), "8gpu-ddp": (8, 0), "8gpu-fsdp": (8, 3), "8gpu-zero2": (8, 2), "8gpu-zero3": (8, 3), "cpu-2proc": (2, 0)}


# -- the estimate moves the right way --------------------------------------------------------------


MID = transformer_shape(32000, d_model=512, n_layers=8, n_heads=8, max_length=512)  # bench/scale.py's mid-size model
STEP = {"rows": 8, "prompt_length": 32, "gen_length": 256, "block_length": 32, "micro_batches": 2}


def test_lora_bf16_zero3_and_checkpointing_lower_the_peak() -> None:
    full = estimate_peak_bytes(MID, **STEP)
    assert estimate_peak_bytes(MID, **STEP, lora_r=8) < full
    assert estimate_peak_bytes(MID, **STEP, mixed_precision="bf16") < full
    per_stage = [estimate_peak_bytes(MID, **STEP, processes=8, shard_stage=s) for s in range(4)]
    assert per_stage == sorted(per_stage, reverse=True) and len(set(per_stage)) == 4
    plain = estimate_memory(MID, Workload(**STEP)).phases["loss"]
    # checkpointing keeps each layer's input (d per token) and one layer's tensors: 4 x 288 x (8 x 512 + 8 x 512 + 2 x 2048) x 4 B
    checkpointed = estimate_memory(MID, Workload(**STEP, gradient_checkpointing=True)).phases["loss"]
    assert plain - checkpointed == 4 * 288 * (8 * (8 * 512 + 2 * 2048) - (8 * 512 + 8 * 512 + 2 * 2048)) * 4
    one = {**STEP, "micro_batches": 1}  # then the loss is the largest phase, and the peak falls with it
    assert estimate_peak_bytes(MID, **one, gradient_checkpointing=True) < estimate_peak_bytes(MID, **one)
    # a frozen reference copy (beta > 0 without LoRA) costs one set of weights
    assert estimate_peak_bytes(MID, **STEP, reference=True) - full == MID.n_params * 4
    assert estimate_peak_bytes(MID, **STEP, reference=True, lora_r=8) == estimate_peak_bytes(MID, **STEP, lora_r=8)


def test_the_estimate_is_arithmetic() -> None:
    """By hand for one micro-batch: 4 rows x 288 tokens x 8 layers x (8 x 512 + 2 x 2048) x 4 B,
    plus 4 x 256 positions x 32000 x (4 + 12) B of logits."""
    est = estimate_memory(MID, Workload(rows=8, prompt_length=32, gen_length=256, micro_batches=2, rollout=False))
    assert est.phases == {"loss": 4 * 288 * 8 * (8 * 512 + 2 * 2048) * 4 + 4 * 256 * 32000 * 16}
    assert est.parameters == est.gradients == MID.n_params * 4 and est.optimizer == MID.n_params * 8
    with pytest.raises(MaskGRPOError, match="matches no linear module"):
        estimate_peak_bytes(MID, **STEP, lora_r=8, lora_targets=["q_proj"])
