"""Training the image tokenizer (a diffusers VQModel) on shapes-world renders.

Loss: L1 + MSE reconstruction plus the quantiser's codebook and commitment terms (VQ-VAE's
straight-through recipe, as diffusers' VectorQuantizer computes it). The recipe is its own small
schema (`kind: vq`): `maskgrpo train-vq recipes/shapes-vq.yaml`.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from tqdm.auto import tqdm

from .recipe import Spec, _Strict, read_schema
from .registry import load_presets, tokenizers
from .runtime import lr_lambda
from .utils import atomic_write_text


class VQTrainConfig(_Strict):
    steps: int = Field(1500, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    eval_every: int = Field(500, ge=0)
    eval_images: int = Field(120, ge=1, description="fresh renders scored by the shapes detector at each evaluation")
    restart_dead_codes_every: int = Field(
        100, ge=0, description="every this many steps, codes no batch picked since the last check move onto encoder outputs (0: never)"
    )


class VQRecipe(_Strict):
    kind: Literal["vq"]
    name: str
    seed: int = 0
    output_dir: str
    tokenizer: Spec
    image_size: int = Field(32, ge=8)
    train: VQTrainConfig = VQTrainConfig()
    save_to: str | None = None


def load_vq_recipe(path: str | Path, overrides: list[str] | None = None) -> VQRecipe:
    recipe = read_schema(path, VQRecipe, overrides)
    load_presets()
    tokenizers.validate(recipe.tokenizer, where="tokenizer")
    return recipe


def render_batch(rng: random.Random, n: int, size: int) -> tuple[list[Any], list[dict]]:
    """Correct renders for random GenEval-style prompts, all six tags."""
    from .tasks.shapes import sample_scene

    scenes = [sample_scene(rng, size=size) for _ in range(n)]
    return [image for _, image in scenes], [metadata for metadata, _ in scenes]


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


def train_vq(recipe: VQRecipe) -> dict[str, Any]:
    torch.manual_seed(recipe.seed)
    cfg = recipe.train
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.yaml", json.dumps(recipe.model_dump(mode="json"), indent=2))
    tokenizer = tokenizers.build(recipe.tokenizer, where="tokenizer")
    model = tokenizer.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, cfg.steps))
    rng = random.Random(recipe.seed)
    print(f"vq: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {cfg.steps} steps of batch {cfg.batch_size}")
    log = (out / "metrics.jsonl").open("w")
    start = time.time()
    row: dict[str, Any] = {}
    used = torch.zeros(model.quantize.embedding.num_embeddings, dtype=torch.bool)
    restart_generator = torch.Generator().manual_seed(recipe.seed)
    for step in tqdm(range(cfg.steps), desc="vq", dynamic_ncols=True):
        images, _ = render_batch(rng, cfg.batch_size, recipe.image_size)
        x = tokenizer.to_tensor(images) * 2 - 1
        latents = model.encode(x).latents
        quant, vq_loss, (_, _, indices) = model.quantize(latents)
        used[indices.flatten()] = True
        recon = model.decode(quant, force_not_quantize=True).sample
        loss = (recon - x).abs().mean() + ((recon - x) ** 2).mean() + vq_loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        row = {"step": step + 1, "loss": loss.item(), "seconds": time.time() - start}
        # no restarts in the last tenth: let the moved codes settle before the final evaluation
        every = cfg.restart_dead_codes_every
        if every and (step + 1) % every == 0:
            if step + 1 <= 0.9 * cfg.steps:
                row["codes/restarted"] = restart_dead_codes(model.quantize, latents, used, restart_generator)
            row["codes/used"] = int(used.sum())
            used.zero_()
        if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == cfg.steps:
            model.eval()
            row["eval/agreement"] = reconstruction_agreement(tokenizer, cfg.eval_images, recipe.image_size)
            model.train()
            codes = f"  codes used since the last check {row['codes/used']}" if "codes/used" in row else ""
            tqdm.write(f"step {step + 1}: loss {row['loss']:.4f}  detector agreement on reconstructions {row['eval/agreement']:.3f}{codes}")
        log.write(json.dumps(row) + "\n")
        log.flush()
    log.close()
    model.eval()
    for target in [out / "tokenizer"] + ([Path(recipe.save_to)] if recipe.save_to else []):
        tokenizer.save_pretrained(target)
        print(f"saved the VQ tokenizer to {target}")
    return row
