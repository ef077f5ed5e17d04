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

import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .components import build_run, write_manifest
from .data import encode_prompts
from .evaluation import InTrainingEvaluation
from .recipe import Recipe
from .runtime import RunDirectory, StopSignal, local_share, lr_lambda, make_accelerator, reduce_sum, stop_interrupted
from .utils import Generator, draw_uniform



def draw_masks(batch: int, length: int, generator: Generator, t_min: float, prompt_dropout: float, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(t [B, 1], masked [B, L], prompt dropped [B, 1]) for one batch: per row from RowGenerators,
    so an example's noise is the same on any process."""
    t = t_min + (1 - t_min) * draw_uniform((batch, 1), generator, device)
    masked = draw_uniform((batch, length), generator, device) < t
    drop = draw_uniform((batch, 1), generator, device) < prompt_dropout if prompt_dropout > 0 else torch.zeros(batch, 1, dtype=torch.bool, device=device)
    return t, masked, drop


class MaskedDiffusionTerms(torch.nn.Module):
    """(numerator, denominator) of the SFT loss as a module, so DDP wraps what is differentiated:
    the loss is numerator / denominator, both summed over processes."""

    def __init__(self, backbone: torch.nn.Module, weighting: str = "elbo"):
        super().__init__()
        if weighting not in ("elbo", "masked_mean"):
            raise ValueError(f"weighting must be 'elbo' or 'masked_mean', got {weighting!r}")
        self.backbone, self.weighting = backbone, weighting

    def forward(self, prompt, prompt_attn, target, t, masked, drop) -> tuple[torch.Tensor, torch.Tensor]:
        backbone = self.backbone
        batch, length = target.shape
        prompt = prompt.masked_fill(drop & prompt_attn.bool(), backbone.mask_token_id)
        noisy = target.masked_fill(masked, backbone.mask_token_id)
        tokens = torch.cat([prompt, noisy], dim=1)
        attn = torch.cat([prompt_attn, torch.ones_like(noisy, dtype=torch.bool)], dim=1)
        hidden = backbone.hidden(tokens, attn)[:, prompt.shape[1] :]
        logits = backbone.logits_from_hidden(hidden[masked])
        ce = torch.nn.functional.cross_entropy(logits.float(), target[masked], reduction="none")
        if self.weighting == "masked_mean":
            return ce.sum(), masked.sum().to(ce.dtype)
        weights = (1.0 / t).expand(batch, length)[masked]
        return (ce * weights).sum(), torch.tensor(float(batch * length), device=ce.device)


def masked_diffusion_loss(
    backbone,
    prompt: torch.Tensor,
    prompt_attn: torch.Tensor,
    target: torch.Tensor,
    generator: Generator,
    t_min: float,
    prompt_dropout: float = 0.0,
    weighting: str = "elbo",
) -> torch.Tensor:
    """The SFT loss of one batch on one process."""
    t, masked, drop = draw_masks(target.shape[0], target.shape[1], generator, t_min, prompt_dropout, target.device)
    numerator, denominator = MaskedDiffusionTerms(backbone, weighting)(prompt, prompt_attn, target, t, masked, drop)
    return numerator / denominator.clamp(min=1)


def run_sft(recipe: Recipe, resume: bool = False, overwrite: bool = False, progress: bool = True) -> dict:
    """Train, evaluate greedily on the held-out set, save. Returns the final metrics row.
    `sft.batch_size` is global: each process trains on its share of every batch."""
    from .utils import RowGenerators

    cfg = recipe.sft
    assert cfg is not None
    torch.manual_seed(recipe.seed)
    out = Path(recipe.output_dir)
    acc = make_accelerator(cfg.device, cfg.mixed_precision, cfg.report_to, out)
    device, is_main = acc.device, acc.is_main_process
    share = local_share(cfg.batch_size, acc, "sft.batch_size")
    run_dir = RunDirectory(out, acc)
    run_dir.prepare(recipe.resolved_yaml(), resume, overwrite)

    parts = build_run(recipe)
    tokenizer, modality, task, eval_set = parts.tokenizer, parts.modality, parts.task, parts.eval_set
    backbone = parts.backbone.to(device)

    evaluation = InTrainingEvaluation(recipe, parts, acc, out, batch_size=128)

    optimizer = torch.optim.AdamW(backbone.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps, cfg.steps, cfg.schedule))
    terms, opt = acc.prepare(MaskedDiffusionTerms(backbone, cfg.weighting), optimizer)

    def save_checkpoint(step: int) -> None:
        run_dir.save({"model": backbone}, {"step": step, "opt": opt.state_dict(), "sched": sched.state_dict()})

    start_step, rows = 0, []
    if resume:
        _, start_step, rows = run_dir.resume({"model": backbone}, opt, sched)
    if cfg.report_to:
        acc.init_trackers("tb")
    n_params = sum(p.numel() for p in backbone.parameters())
    if is_main:
        print(f"sft: {n_params / 1e6:.2f} M parameters, {cfg.steps} steps of batch {cfg.batch_size} on {acc.num_processes} process(es), {len(eval_set)} held-out problems")

    started = time.time()
    final: dict[str, Any] = rows[-1] if rows else {}
    step = start_step
    bar = tqdm(total=cfg.steps, initial=start_step, desc="sft", dynamic_ncols=True, disable=not (progress and is_main))
    interrupted = False
    try:
        with run_dir.metrics_log(rows) as log, StopSignal(acc) as stop:
            while step < cfg.steps:
                backbone.train()
                examples = [task.train_example(step * cfg.batch_size + i) for i in share]
                prompt, attn = encode_prompts(tokenizer, [e.prompt for e in examples], device)
                target = modality.targets(examples, parts.sampler.gen_length, device)
                noise = RowGenerators.seeded(recipe.seed, step, rows=share)
                t, masked, drop = draw_masks(len(examples), target.shape[1], noise, cfg.min_mask_rate, cfg.prompt_dropout, device)
                with acc.autocast():
                    numerator, denominator = terms(prompt, attn, target, t, masked, drop)
                total = max(reduce_sum(acc, denominator.item()), 1.0)
                loss = numerator / total
                opt.zero_grad(set_to_none=True)
                acc.backward(loss * acc.num_processes)  # DDP averages gradients; the sum is the global loss's
                acc.clip_grad_norm_(backbone.parameters(), 1.0)
                opt.step()
                sched.step()
                step += 1
                row = {"step": step, "loss": reduce_sum(acc, loss.item()), "lr": sched.get_last_lr()[0], "seconds": time.time() - started}
                if ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps) and evaluation.enabled:
                    backbone.eval()
                    key, value = evaluation.key, evaluation(backbone, step)
                    row[key] = value
                    if is_main:
                        bar.write(f"step {step}: loss {row['loss']:.4f}  {key} {value:.3f}")
                log(row)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.3f}")
                final = row
                if stop.after_step(step, cfg.steps, cfg.save_every, lambda: save_checkpoint(step)):
                    interrupted = True
                    break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    save_checkpoint(step)
    if interrupted:
        stop_interrupted(acc, run_dir.checkpoint, step)
    if is_main:
        for target_dir in [out / "model"] + ([Path(cfg.save_to)] if cfg.save_to else []):
            backbone.save_pretrained(target_dir)
            tokenizer.save_pretrained(target_dir)
            write_manifest(target_dir, recipe, modality)
            print(f"saved model and tokenizer to {target_dir}")
    acc.wait_for_everyone()
    acc.end_training()  # last: it also ends the process group
    return final
