"""Training the image tokenizer (a diffusers VQModel) on shapes-world renders.

Loss: L1 + MSE reconstruction plus the quantiser's codebook and commitment terms (VQ-VAE's
straight-through recipe, as diffusers' VectorQuantizer computes it). The recipe is its own small
schema (`kind: vq`): `maskgrpo train-vq recipes/shapes-vq.yaml`. The renders come from the world
(`maskgrpo.worlds.shapes.vq_data`).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import Field, field_validator
from tqdm.auto import tqdm

from .recipe import MAX_IMAGE_SIDE, MAX_ROWS, MAX_STEPS, Spec, _Strict, read_schema
from .registry import tokenizers
from .runtime import RunDirectory, StopSignal, local_share, lr_lambda, make_accelerator, reduce_sum, stop_interrupted
from .utils import make_generator
from .worlds.shapes.vq_data import render_batch


class VQTrainConfig(_Strict):
    steps: int = Field(1500, ge=1, le=MAX_STEPS)
    batch_size: int = Field(32, ge=1, le=MAX_ROWS, description="global: each process renders and trains on its share")
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(50, ge=0, le=MAX_STEPS)
    eval_every: int = Field(500, ge=0, le=MAX_STEPS)
    eval_images: int = Field(120, ge=1, le=MAX_ROWS, description="fresh renders scored by the shapes detector at each evaluation")
    restart_dead_codes_every: int = Field(
        100, ge=0, le=MAX_STEPS, description="every this many steps, codes no batch picked since the last check move onto encoder outputs (0: never)"
    )
    save_every: int = Field(0, ge=0, le=MAX_STEPS, description="checkpoint every N steps (0: only at the end or when stopped)")
    device: str = "cpu"
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    report_to: list[Literal["tensorboard", "wandb"]] = ["tensorboard"]

    _yaml_no = field_validator("mixed_precision", mode="before")(lambda cls, v: "no" if v is False else v)


class VQRecipe(_Strict):
    kind: Literal["vq"]
    name: str
    seed: int = 0
    output_dir: str
    tokenizer: Spec
    image_size: int = Field(32, ge=8, le=MAX_IMAGE_SIDE)
    train: VQTrainConfig = VQTrainConfig()
    save_to: str | None = None


def load_vq_recipe(path: str | Path, overrides: list[str] | None = None) -> VQRecipe:
    recipe = read_schema(path, VQRecipe, overrides, {"tokenizer": "spec"})  # relative paths: recipe.py
    tokenizers.validate(recipe.tokenizer, where="tokenizer")
    return recipe


def reconstruction_agreement(tokenizer: Any, n: int, size: int, seed: int = 12345) -> float:
    """How often the shapes detector's GenEval verdict on a reconstruction equals its verdict on
    the original render: the tokenizer is good enough when the reward cannot tell them apart."""
    from .metrics.geneval import GenEvalMetric

    images, rows = render_batch(random.Random(seed), n, size)
    with torch.no_grad():
        recon = tokenizer.to_pil(tokenizer.decode(tokenizer.encode(images)))
    metric = GenEvalMetric(detector="shapes")
    original = [r["correct"] for r in metric.evaluate(images, rows)]
    rebuilt = [r["correct"] for r in metric.evaluate(recon, rows)]
    return sum(a == b for a, b in zip(original, rebuilt)) / n


def restart_dead_codes(quantizer: torch.nn.Module, latents: torch.Tensor, used: torch.Tensor, generator: torch.Generator | None = None) -> int:
    """Move every code not in `used` onto a random encoder output from `latents`.

    Why: a VQ codebook trained by gradient alone collapses (the shapes tokenizer used 130 of 512
    codes), and unused codes never receive gradient again. Re-seeding them where the encoder's
    outputs actually are gives them a chance to win a nearest-neighbour search."""
    dead = ~used
    n = int(dead.sum())
    if n == 0:
        return 0
    weight = quantizer.embedding.weight
    flat = latents.detach().permute(0, 2, 3, 1).reshape(-1, weight.shape[1])
    pick = torch.randint(len(flat), (n,), generator=generator)
    with torch.no_grad():
        weight[dead] = flat[pick].to(weight.dtype)
    return n


class VQLoss(torch.nn.Module):
    """Reconstruction + codebook loss of a batch as a module, so DDP wraps what is differentiated;
    also returns the latents and code indices that dead-code restarts need."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        latents = self.model.encode(x).latents
        quant, vq_loss, (_, _, indices) = self.model.quantize(latents)
        recon = self.model.decode(quant, force_not_quantize=True).sample
        loss = (recon - x).abs().mean() + ((recon - x) ** 2).mean() + vq_loss.mean()
        return loss, latents, indices


def step_renders(seed: int, step: int, indices: range, size: int) -> list[Any]:
    """The renders of batch `step`, example i from its own seeded stream: the same whichever
    process draws it, and the same after `--resume`."""
    return [render_batch(random.Random(seed * 1_000_003 + step * 65_537 + i), 1, size)[0][0] for i in indices]


def train_vq(recipe: VQRecipe, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    from accelerate.utils import broadcast

    torch.manual_seed(recipe.seed)
    cfg = recipe.train
    out = Path(recipe.output_dir)
    acc = make_accelerator(cfg.device, cfg.mixed_precision, cfg.report_to, out)
    is_main = acc.is_main_process
    share = local_share(cfg.batch_size, acc, "train.batch_size")
    run_dir = RunDirectory(out, acc)
    run_dir.prepare(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), resume, overwrite)
    tokenizer = tokenizers.build(recipe.tokenizer, where="tokenizer")
    model = tokenizer.model.to(acc.device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, cfg.steps))
    vq_loss, opt = acc.prepare(VQLoss(model), optimizer)
    codebook = model.quantize.embedding.weight
    used = torch.zeros(model.quantize.embedding.num_embeddings, dtype=torch.bool, device=acc.device)
    step, rows = 0, []
    if resume:
        state, step, rows = run_dir.resume({"model": model}, opt, sched)
        used = state["used"].to(acc.device)
    if cfg.report_to:
        acc.init_trackers("tb")
    if is_main:
        print(f"vq: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {cfg.steps} steps of batch {cfg.batch_size} on {acc.num_processes} process(es)")

    def save() -> None:
        run_dir.save({"model": model}, {"step": step, "opt": opt.state_dict(), "sched": sched.state_dict(), "used": used.cpu()})

    start = time.time()
    row: dict[str, Any] = rows[-1] if rows else {}
    bar = tqdm(total=cfg.steps, initial=step, desc="vq", dynamic_ncols=True, disable=not (progress and is_main))
    interrupted = False
    try:
        with run_dir.metrics_log(rows) as log, StopSignal(acc) as stop:
            while step < cfg.steps:
                x = tokenizer.to_tensor(step_renders(recipe.seed, step, share, recipe.image_size)).to(acc.device) * 2 - 1
                with acc.autocast():
                    loss, latents, indices = vq_loss(x)
                used[indices.flatten()] = True
                opt.zero_grad(set_to_none=True)
                acc.backward(loss)  # equal shares: DDP's mean over processes is the global batch mean
                acc.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                step += 1
                row = {"step": step, "loss": reduce_sum(acc, loss.item()) / acc.num_processes, "seconds": time.time() - start}
                # no restarts in the last tenth: let the moved codes settle before the final evaluation
                every = cfg.restart_dead_codes_every
                if every and step % every == 0:
                    used = acc.reduce(used.float(), reduction="sum") > 0 if acc.num_processes > 1 else used
                    if step <= 0.9 * cfg.steps:
                        # the main process picks the new codes; every process takes its codebook
                        row["codes/restarted"] = restart_dead_codes(model.quantize, latents, used, make_generator(recipe.seed, step))
                        if acc.num_processes > 1:
                            with torch.no_grad():
                                codebook.copy_(broadcast(codebook.detach().clone(), from_process=0))
                    row["codes/used"] = int(used.sum())
                    used = torch.zeros_like(used)
                if is_main and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
                    model.eval()
                    row["eval/agreement"] = reconstruction_agreement(tokenizer, cfg.eval_images, recipe.image_size)
                    model.train()
                    codes = f"  codes used since the last check {row['codes/used']}" if "codes/used" in row else ""
                    bar.write(f"step {step}: loss {row['loss']:.4f}  detector agreement on reconstructions {row['eval/agreement']:.3f}{codes}")
                log(row)
                bar.update(1)
                if stop.after_step(step, cfg.steps, cfg.save_every, save):
                    interrupted = True
                    break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    save()
    if interrupted:
        stop_interrupted(acc, run_dir.checkpoint, step)
    model.eval()
    if is_main:
        for target in [out / "model"] + ([Path(recipe.save_to)] if recipe.save_to else []):
            tokenizer.save_pretrained(target)
            print(f"saved the VQ tokenizer to {target}")
    acc.wait_for_everyone()
    acc.end_training()
    return row
