"""Masked-diffusion supervised training (LLaDA's objective), used to make the small policies.

Per example: t ~ U(t_min, 1); every completion token is masked with probability t; the loss is
the cross-entropy at masked positions weighted by 1/t, summed and divided by the number of
completion tokens (an unbiased bound on the negative log-likelihood). `weighting: masked_mean`
drops the 1/t and averages over the masked tokens instead (MaskGIT's image objective): the
bound's weights reach 1/t_min (1,000 by default), so a few lightly masked examples dominate a
batch's gradient. The prompt is not masked,
except that with probability `prompt_dropout` an example's whole prompt is (padding kept), which
is exactly the unconditional input `guided_logits` builds: without it, classifier-free guidance
extrapolates away from logits the model never learnt.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .components import build_backbone, build_eval_metric, build_sampler, build_tokenizer
from .data import encode_completions, encode_prompts
from .generation import evaluate_accuracy, evaluate_images
from .recipe import Recipe
from .registry import tasks
from .report import save_image_grid
from .utils import atomic_write_text, make_generator, resolve_device


def masked_diffusion_loss(
    backbone,
    prompt: torch.Tensor,
    prompt_attn: torch.Tensor,
    target: torch.Tensor,
    generator: torch.Generator,
    t_min: float,
    prompt_dropout: float = 0.0,
    weighting: str = "elbo",
) -> torch.Tensor:
    batch, length = target.shape
    t = t_min + (1 - t_min) * torch.rand(batch, 1, generator=generator, device=generator.device).to(target.device)
    masked = torch.rand(batch, length, generator=generator, device=generator.device).to(target.device) < t
    if prompt_dropout > 0:
        drop = torch.rand(batch, 1, generator=generator, device=generator.device).to(target.device) < prompt_dropout
        prompt = prompt.masked_fill(drop & prompt_attn.bool(), backbone.mask_token_id)
    noisy = target.masked_fill(masked, backbone.mask_token_id)
    tokens = torch.cat([prompt, noisy], dim=1)
    attn = torch.cat([prompt_attn, torch.ones_like(noisy, dtype=torch.bool)], dim=1)
    hidden = backbone.hidden(tokens, attn)[:, prompt.shape[1] :]
    logits = backbone.logits_from_hidden(hidden[masked])
    ce = torch.nn.functional.cross_entropy(logits.float(), target[masked], reduction="none")
    if weighting == "masked_mean":
        return ce.sum() / masked.sum().clamp(min=1)
    if weighting != "elbo":
        raise ValueError(f"weighting must be 'elbo' or 'masked_mean', got {weighting!r}")
    weights = (1.0 / t).expand(batch, length)[masked]
    return (ce * weights).sum() / (batch * length)


def lr_lambda(warmup: int, total: int, schedule: str = "cosine"):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return f


def run_sft(recipe: Recipe) -> dict:
    """Train, evaluate greedily on the held-out set, save. Returns the final metrics."""
    cfg = recipe.sft
    assert cfg is not None
    torch.manual_seed(recipe.seed)
    device = resolve_device(cfg.device)
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.yaml", recipe.resolved_yaml())

    tokenizer = build_tokenizer(recipe.tokenizer)
    image_tokenizer = build_tokenizer(recipe.image_tokenizer) if recipe.image_tokenizer is not None else None
    backbone = build_backbone(recipe.backbone, tokenizer, image_tokenizer).to(device)
    task = tasks.build(recipe.task, where="task")
    sampler = build_sampler(recipe.sampler, tokenizer, image_tokenizer)
    eval_sampler = build_sampler(recipe.eval_sampler or recipe.sampler, tokenizer, image_tokenizer, where="eval_sampler")
    eval_set = task.eval_examples()
    eval_metric = build_eval_metric(recipe.eval_metric, task) if image_tokenizer is not None and eval_set else None

    def targets(examples: list) -> torch.Tensor:
        """Completion ids: the text target padded with EOS, or the image's VQ codes placed
        after the text vocabulary."""
        if image_tokenizer is None:
            return encode_completions(tokenizer, [e.target for e in examples], sampler.gen_length, device)
        return image_tokenizer.encode([e.columns["image"] for e in examples]).to(device) + tokenizer.vocab_size

    def evaluate() -> tuple[str, float]:
        if image_tokenizer is None:
            return "eval/accuracy", evaluate_accuracy(backbone, tokenizer, eval_sampler, eval_set, device=device).accuracy
        scores, images, _ = evaluate_images(backbone, tokenizer, image_tokenizer, eval_sampler, eval_set, eval_metric, device=device)
        save_image_grid(images[:32], [e.prompt for e in eval_set for _ in range(2)][:32], out / f"samples_step{step + 1}.png")
        return "eval/geneval", scores["overall"]

    opt = torch.optim.AdamW(backbone.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, cfg.steps))
    n_params = sum(p.numel() for p in backbone.parameters())
    print(f"sft: {n_params / 1e6:.2f} M parameters, {cfg.steps} steps of batch {cfg.batch_size}, {len(eval_set)} held-out problems")

    log = (out / "metrics.jsonl").open("w")
    start = time.time()
    final: dict = {}
    bar = tqdm(range(cfg.steps), desc="sft", dynamic_ncols=True)
    for step in bar:
        backbone.train()
        examples = [task.train_example(step * cfg.batch_size + i) for i in range(cfg.batch_size)]
        prompt, attn = encode_prompts(tokenizer, [e.prompt for e in examples], device)
        target = targets(examples)
        loss = masked_diffusion_loss(
            backbone, prompt, attn, target, make_generator(recipe.seed, step), cfg.min_mask_rate, cfg.prompt_dropout, cfg.weighting
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), 1.0)
        opt.step()
        sched.step()
        row = {"step": step + 1, "loss": loss.item(), "lr": sched.get_last_lr()[0], "seconds": time.time() - start}
        last = step + 1 == cfg.steps
        if ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last) and eval_set:
            key, value = evaluate()
            row[key] = value
            bar.write(f"step {step + 1}: loss {row['loss']:.4f}  {key} {value:.3f}")
        log.write(json.dumps(row) + "\n")
        log.flush()
        bar.set_postfix(loss=f"{row['loss']:.3f}")
        final = row
    log.close()

    for target_dir in [out / "model"] + ([Path(cfg.save_to)] if cfg.save_to else []):
        backbone.save_pretrained(target_dir)
        tokenizer.save_pretrained(target_dir)
        print(f"saved model and tokenizer to {target_dir}")
    return final
