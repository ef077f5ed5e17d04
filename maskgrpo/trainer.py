"""The GRPO training loop for masked-diffusion models, readable top to bottom.

One step: sample prompts -> roll out G completions each (no grad) -> score with the rewards ->
group advantages -> for each of mu inner iterations the estimator hides some completion tokens
(old and reference log-probs for those exact inputs were computed at rollout time) -> clipped
importance-sampled loss -> AdamW step.

On several processes (`accelerate launch` / `torchrun`, DESIGN.md section 9):
`train.prompts_per_step` is global and each process rolls out a contiguous share of whole
groups; rewards are gathered before advantages are normalised; old/reference log-probs stay
local; the loss is normalised by global token counts and DDP all-reduces gradients; the main
process writes every file; evaluation prompts are sharded and gathered. Every random draw is a
function of (seed, step, iteration, global row), so N processes equal one on the same global
batch and `--resume` replays an interrupted run exactly without saving RNG state.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from .backbones.base import TokenScorer
from .components import build_backbone, build_eval_metric, build_sampler, build_tokenizer, write_manifest
from .data import encode_prompts
from .errors import MaskGRPOError
from .estimators.masking import ELBOEstimator, MaskedView
from .generation import codes_to_images, evaluate_sharded
from .grpo import aggregate, group_advantages, grpo_token_loss
from .recipe import Recipe, validate_components
from .registry import estimators, tasks
from .report import save_image_grid
from .rewards.combine import RewardSet, finite
from .runtime import (
    RunDirectory,
    StopSignal,
    gather_list,
    stop_interrupted,
    local_share,
    lr_lambda,
    make_accelerator,
    reduce_sum,
    tensorboard_writer,
)
from .tokenizers.base import decode_completion
from .utils import RowGenerators, make_generator

def apply_lora(backbone: Any, lora: Any) -> Any:
    """Attach a LoRA adapter through the `add_adapter` API that diffusers and transformers models
    share (peft underneath); only adapter weights stay trainable."""
    from peft import LoraConfig

    if not hasattr(backbone, "add_adapter"):
        raise MaskGRPOError(f"lora: backbone {type(backbone).__name__} does not support adapters")
    targets = lora.target_modules
    backbone.add_adapter(LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets))
    for name, p in backbone.named_parameters():
        p.requires_grad_("lora_" in name)
    return backbone


def merged_copy(backbone: torch.nn.Module) -> torch.nn.Module:
    """A copy of a LoRA-adapted backbone with every adapter merged into its base layer and the
    peft wrappers removed: the backbone's own class and config, so its `save_pretrained` folder
    loads like any other model folder."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = copy.deepcopy(backbone)
    for name, module in list(merged.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent_name) if parent_name else merged, child, module.get_base_layer())
    for module in merged.modules():  # forget the adapter, so savers write the whole model
        if getattr(module, "_hf_peft_config_loaded", False):
            module._hf_peft_config_loaded = False
        if hasattr(module, "peft_config"):
            del module.peft_config
    return merged


def disable_dropout(model: torch.nn.Module) -> int:
    """Zero every dropout (LoRA's included), as TRL's GRPO does by default: old, reference and
    current log-probs then come from one deterministic function, so the ratio is 1 at mu = 1.
    Returns how many dropout modules there were."""
    found = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
            found += 1
    return found


def enable_gradient_checkpointing(backbone: Any) -> None:
    if not hasattr(backbone, "gradient_checkpointing_enable"):
        raise MaskGRPOError(f"train.gradient_checkpointing: backbone {type(backbone).__name__} does not support it")
    backbone.gradient_checkpointing_enable()


class GRPOTrainer:
    def __init__(self, recipe: Recipe, progress: bool = True):
        if recipe.kind != "grpo":
            raise MaskGRPOError(f"{recipe.source}: kind is '{recipe.kind}', `maskgrpo train` needs a grpo recipe")
        validate_components(recipe)
        self.recipe, self.cfg, t = recipe, recipe.grpo, recipe.train
        self.out = Path(recipe.output_dir)
        self.acc = make_accelerator(t.device, t.mixed_precision, t.report_to, self.out)
        self.device, self.is_main = self.acc.device, self.acc.is_main_process
        self.progress = progress and self.is_main
        self.prompt_share = local_share(t.prompts_per_step, self.acc, "train.prompts_per_step")
        torch.manual_seed(recipe.seed)

        self.tokenizer = build_tokenizer(recipe.tokenizer)
        # images: completions are VQ codes after the text vocabulary, decoded to PIL images for rewards
        self.image_tokenizer = build_tokenizer(recipe.image_tokenizer) if recipe.image_tokenizer is not None else None
        self.eval_key = "eval/accuracy" if self.image_tokenizer is None else "eval/geneval"
        self.eval_name = "held-out greedy accuracy" if self.image_tokenizer is None else "GenEval-style score of sampled images"
        self.policy = build_backbone(recipe.backbone, self.tokenizer, self.image_tokenizer).to(self.device)
        self.mask_id = self.policy.mask_token_id
        if recipe.lora is not None:
            apply_lora(self.policy, recipe.lora)
        if self.cfg.disable_dropout:
            disable_dropout(self.policy)
        if t.gradient_checkpointing:
            enable_gradient_checkpointing(self.policy)
        # The reference is the frozen initial policy: with LoRA the same model with its adapter off.
        self.reference = None
        if self.cfg.ref_sync_steps and (recipe.lora is not None or self.cfg.beta == 0):
            raise MaskGRPOError("grpo.ref_sync_steps: needs beta > 0 and no lora (the LoRA reference is the base model)")
        if self.cfg.beta > 0 and recipe.lora is None:
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)

        self.task = tasks.build(recipe.task, where="task")
        self.sampler = build_sampler(recipe.sampler, self.tokenizer, self.image_tokenizer)
        self.eval_sampler = self._eval_sampler()
        self.estimator = estimators.build(recipe.estimator, where="estimator")
        if isinstance(self.estimator, ELBOEstimator):
            raise MaskGRPOError("estimator: 'elbo' measures likelihoods for evaluation; train with another estimator")
        self.rewards = RewardSet(recipe.rewards)
        self.eval_set = self.task.eval_examples()  # empty: the run reports no evaluation, never 0
        self.eval_metric = build_eval_metric(recipe.eval_metric, self.task) if self.image_tokenizer is not None and self.eval_set else None

        o = recipe.optim
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        total_updates = t.steps * self.cfg.num_iterations
        self.sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o.warmup_steps, total_updates, o.schedule))
        # The loss goes through a module that accelerate wraps (DDP on several processes; FSDP or
        # DeepSpeed from an accelerate config); rollouts and old log-probs use the bare policy.
        self.scorer = TokenScorer(self.policy)
        self.trained_scorer, self.opt = self.acc.prepare(self.scorer, optimizer)
        self.step = 0
        self.eval_history: list[dict[str, float]] = []
        self.run_dir = RunDirectory(self.out, self.acc)

    def _eval_sampler(self) -> Any:
        """Text: the rollout sampler made greedy. Images always sample: the rollout sampler."""
        r = self.recipe
        if r.eval_sampler is not None:
            return build_sampler(r.eval_sampler, self.tokenizer, self.image_tokenizer, where="eval_sampler")
        greedy = {"temperature": 0.0} if self.image_tokenizer is None else {}
        return build_sampler(r.sampler, self.tokenizer, self.image_tokenizer, **greedy)

    def _completions(self, rollout: Any) -> list[Any]:
        if self.image_tokenizer is None:
            return [decode_completion(self.tokenizer, row.tolist()) for row in rollout.completion]
        return codes_to_images(rollout.completion, self.tokenizer, self.image_tokenizer)

    # -- one GRPO step ---------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, Any]:
        started = time.time()
        cfg, G = self.cfg, self.cfg.group_size
        n_prompts = self.recipe.train.prompts_per_step
        examples = [self.task.train_example(step * n_prompts + i) for i in self.prompt_share]  # this process's share
        prompts = [e.prompt for e in examples for _ in range(G)]  # a group's completions are adjacent
        columns: dict[str, list[Any]] = {"answer": [e.answer for e in examples for _ in range(G)]}
        for key in examples[0].columns:
            columns[key] = [e.columns.get(key) for e in examples for _ in range(G)]
        rows = torch.arange(self.prompt_share.start * G, self.prompt_share.stop * G, device=self.device)  # global row ids

        # 1. Roll out with the current policy (it is theta_old for the whole step).
        ids, attn = encode_prompts(self.tokenizer, prompts, self.device)
        self.policy.eval()
        with self.acc.autocast():
            rollout = self.sampler.sample(self.policy, ids, RowGenerators.seeded(self.recipe.seed, step, 1_000_000, rows=rows), attention_mask=attn)
        rollout.row_ids = rows
        completions = self._completions(rollout)

        # 2. Score locally, gather every process's rewards: advantages need the whole batch.
        local_totals, local_components = self.rewards.score(prompts, completions, columns)
        totals = gather_list(self.acc, local_totals)
        row: dict[str, Any] = {"step": step + 1}
        for name, values in local_components.items():
            present = [float(v) for v in gather_list(self.acc, values) if v is not None]
            row[f"reward/{name}/mean"] = sum(present) / len(present) if present else float("nan")
        if not finite(totals):
            bad = next(i for i, v in enumerate(totals) if not math.isfinite(v))
            if self.is_main:
                tqdm.write(f"step {step + 1}: non-finite reward {totals[bad]} on sample {bad}; step skipped")
            return {**row, "skipped": "non-finite reward", "seconds": time.time() - started}
        rewards = torch.tensor(totals, dtype=torch.float32, device=self.device)
        advantages = group_advantages(rewards, G, cfg.advantage_std)[rows]
        grouped = rewards.view(-1, G)
        row.update(
            {
                "reward/mean": rewards.mean().item(),
                "reward/std": rewards.std().item(),
                "frac_zero_std": (grouped.std(dim=1) < 1e-6).float().mean().item(),
            }
        )

        # 3. The mu masked views, with old/reference log-probs on exactly those inputs.
        batch_seed = int(make_generator(self.recipe.seed, step).initial_seed())
        eos = self.tokenizer.eos_token_id
        views = [self.estimator.masked_view(rollout, j, cfg.num_iterations, batch_seed, self.mask_id, eos) for j in range(cfg.num_iterations)]
        # Old, reference and current log-probs in one mode (train; dropout is off unless the
        # recipe keeps it) and one precision, so the importance ratio is exactly 1 before the
        # first update.
        self.policy.train()
        # They are computed in the loss's micro-batches: the same shapes give bit-equal numbers,
        # and the peak memory of this pass is that of one micro-batch, not of the whole view.
        with torch.no_grad(), self.acc.autocast():
            old = [self._chunked_logprobs(self.scorer, v, v.of_rollout(rollout.tokens)) for v in views]
            ref = [self._ref_logprobs(v, v.of_rollout(rollout.tokens)) for v in views] if cfg.beta > 0 else [None] * len(views)

        # 4. mu inner updates, each over all micro-batches (every rate used exactly once).
        # ratio/first_max_dev: max |rho - 1| in the first inner iteration, 0 unless old and current
        # log-probs disagree before any update (dropout, a mode switch); ratio/max_dev: all of them
        stats = {"loss": 0.0, "kl": 0.0, "clip_ratio": 0.0, "ratio/max_dev": 0.0}
        sequences = torch.arange(rollout.tokens.shape[0], device=self.device)
        skipped_updates = 0
        for j, view in enumerate(views):
            targets, sequence = view.of_rollout(rollout.tokens), view.of_rollout(sequences)
            update = self._inner_update(view, targets, old[j], ref[j], view.of_rollout(advantages), len(sequences), sequence)
            skipped_updates += not update["ok"]
            for key in ("loss", "kl", "clip_ratio"):
                stats[key] += update[key] / len(views)
            stats["ratio/max_dev"] = max(stats["ratio/max_dev"], update["ratio_max_dev"])
            if j == 0:
                stats["ratio/first_max_dev"] = update["ratio_max_dev"]
        row.update(stats)
        row["lr"] = self.sched.get_last_lr()[0]
        if skipped_updates:
            row["skipped_updates"] = skipped_updates
        row["seconds"] = time.time() - started
        return row

    def _logprobs(self, scorer: Any, view: MaskedView, targets: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        attn = None if view.attention_mask is None else view.attention_mask[rows]
        return scorer(view.tokens[rows], targets[rows], view.loss_mask[rows], attn)

    def _micro_batches(self, rows: int) -> list[slice]:
        """The `optim.grad_accum` row slices of a view (every process has the same number)."""
        chunk = math.ceil(rows / self.recipe.optim.grad_accum)
        return [slice(lo, min(lo + chunk, rows)) for lo in range(0, rows, chunk)]

    def _chunked_logprobs(self, scorer: Any, view: MaskedView, targets: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._logprobs(scorer, view, targets, rows) for rows in self._micro_batches(targets.shape[0])])

    def _ref_logprobs(self, view: MaskedView, targets: torch.Tensor) -> torch.Tensor:
        with self._reference() as model:
            return self._chunked_logprobs(TokenScorer(model), view, targets)

    @contextmanager
    def _reference(self) -> Iterator[Any]:
        if self.reference is not None:
            yield self.reference
            return
        self.policy.disable_adapters()  # LoRA: the base model is the reference
        try:
            yield self.policy
        finally:
            self.policy.enable_adapters()

    def _inner_update(
        self,
        view: MaskedView,
        targets: torch.Tensor,
        old: torch.Tensor,
        ref: torch.Tensor | None,
        advantages: torch.Tensor,
        n_sequences: int,
        sequence: torch.Tensor,
    ) -> dict[str, Any]:
        """One optimiser step over every micro-batch of `view`. `sequence[i]` is the local rollout
        row of view row i: a stacked view (trace) holds several rows per sequence, and seq-mean
        averages over the sequence, not the view row. Token and sequence totals are global, and
        the loss is scaled by the process count because DDP averages gradients: the update is
        the one a single process would make on the whole batch."""
        cfg, o, world = self.cfg, self.recipe.optim, self.acc.num_processes
        tokens_per_row = view.loss_mask.sum(dim=1)
        offsets = torch.cat([tokens_per_row.new_zeros(1), tokens_per_row.cumsum(0)])
        tokens_per_sequence = torch.zeros(n_sequences, dtype=tokens_per_row.dtype, device=tokens_per_row.device).index_add_(0, sequence, tokens_per_row)
        total_tokens = int(reduce_sum(self.acc, int(offsets[-1])))
        total_sequences = n_sequences * world
        micro_batches = self._micro_batches(targets.shape[0])
        self.opt.zero_grad(set_to_none=True)
        loss_sum = kl_sum = clipped = dev = 0.0
        for rows in micro_batches:
            lo = rows.start
            span = slice(int(offsets[rows.start]), int(offsets[rows.stop]))
            # every process runs every micro-batch (an empty one too): gradients sync on the last
            sync = nullcontext() if rows is micro_batches[-1] else self.acc.no_sync(self.trained_scorer)
            with sync, self.acc.autocast():
                logp = self._logprobs(self.trained_scorer, view, targets, rows)
                row_of_token = view.loss_mask[rows].nonzero()[:, 0] + lo
                tl = grpo_token_loss(
                    logp, old[span], advantages[row_of_token], cfg.epsilon_low, cfg.epsilon_high, cfg.beta, None if ref is None else ref[span]
                )
                loss = aggregate(tl.loss, sequence[row_of_token], cfg.loss_agg, total_tokens, total_sequences, tokens_per_sequence)
                self.acc.backward(loss * world)
            loss_sum += loss.item()
            kl_sum += tl.kl.sum().item()
            clipped += tl.clipped.sum().item()
            if logp.numel():
                dev = max(dev, (torch.exp(logp.detach() - old[span]) - 1).abs().max().item())
        params = [p for p in self.policy.parameters() if p.requires_grad]
        # gradients are identical on every process after the all-reduce, so all skip together
        if not all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
            if self.is_main:
                tqdm.write(f"step {self.step + 1}: non-finite loss; inner update skipped")
            self.opt.zero_grad(set_to_none=True)
            nan = float("nan")
            return {"loss": nan, "kl": nan, "clip_ratio": nan, "ratio_max_dev": nan, "ok": False}
        if o.max_grad_norm is not None:
            self.acc.clip_grad_norm_(params, o.max_grad_norm)
        self.opt.step()
        self.sched.step()
        n = max(total_tokens, 1)
        return {
            "loss": reduce_sum(self.acc, loss_sum),
            "kl": reduce_sum(self.acc, kl_sum) / n,
            "clip_ratio": reduce_sum(self.acc, clipped) / n,
            "ratio_max_dev": max(gather_list(self.acc, [dev])),
            "ok": True,
        }

    # -- evaluation, checkpoints, the loop --------------------------------------------------------
    def evaluate(self) -> float:
        """Held-out greedy accuracy (text), or the GenEval-style score of sampled images, with a
        PNG grid of them in samples/ so a person sees what the policy learned; sharded over the
        processes."""
        self.policy.eval()
        score, records, images = evaluate_sharded(
            self.acc, self.policy, self.tokenizer, self.image_tokenizer, self.eval_sampler, self.eval_set, self.eval_metric, self.recipe.train.eval_batch_size
        )
        if self.image_tokenizer is None:
            self._log_samples(text=records[:8])
        elif self.is_main:
            path = self.out / "samples" / f"step{self.step:05d}.png"
            save_image_grid(images[:48], [r["prompt"] for r in records][:48], path)
            self._log_samples(grid=path)
        return score

    def _log_samples(self, text: list[dict] | None = None, grid: Path | None = None) -> None:
        """Sample completions or the image grid to TensorBoard at evaluation steps."""
        writer = tensorboard_writer(self.acc)
        if writer is None:
            return
        if text:
            body = "\n\n".join(f"`{r['prompt']}` -> `{r['completion']}` ({'right' if r['correct'] else 'wrong'})" for r in text)
            writer.add_text("samples", body, self.step)
        if grid is not None:
            import numpy as np
            from PIL import Image

            writer.add_image("samples", np.asarray(Image.open(grid).convert("RGB")), self.step, dataformats="HWC")

    def save_checkpoint(self) -> Path:
        state = {"step": self.step, "opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "eval_history": self.eval_history}
        if self.reference is not None:
            state["reference"] = self.reference.state_dict()
        self.run_dir.save({"policy": self.policy}, state)
        return self.run_dir.checkpoint

    def load_checkpoint(self) -> None:
        state, self.step, _ = self.run_dir.resume({"policy": self.policy}, self.opt, self.sched)
        if self.reference is not None and "reference" in state:
            self.reference.load_state_dict(state["reference"])
        self.eval_history = state["eval_history"]

    def export(self) -> Path:
        """The trained policy as a loadable model folder (backbone + tokenizer); a LoRA policy is
        merged into its base first, so `--model runs/NAME/model` loads it like any other."""
        target = self.out / "model"
        if self.is_main:
            model = self.policy if self.recipe.lora is None else merged_copy(self.policy)
            model.save_pretrained(target)
            self.tokenizer.save_pretrained(target)
            write_manifest(target, self.recipe, adapter=None if self.recipe.lora is None else "merged")
        self.acc.wait_for_everyone()
        return target

    def train(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        r = self.recipe
        self.run_dir.prepare(r.resolved_yaml(), resume, overwrite)
        rows: list[dict[str, Any]] = []
        if resume:
            self.load_checkpoint()
            rows = self.run_dir.read_metrics(self.step)
            if self.is_main:
                print(f"resuming {r.name} from step {self.step}")
        elif self.is_main:
            for stale in (self.out / "samples").glob("step*.png"):
                stale.unlink()  # a fresh run's sample grids must not sit beside an older run's
        if r.train.report_to:
            self.acc.init_trackers("tb")
        if not self.eval_set:
            if self.is_main:
                print(f"no evaluation: task {type(self.task).__name__} has no eval data")
        elif not self.eval_history:
            accuracy = self.evaluate()
            self.eval_history.append({"step": 0, self.eval_key: accuracy})
            if self.is_main:
                print(f"{self.eval_name} before training: {accuracy:.3f} ({len(self.eval_set)} prompts)")

        started = time.time()
        interrupted = False
        bar = tqdm(total=r.train.steps, initial=self.step, desc=r.name, dynamic_ncols=True, disable=not self.progress)
        try:
            with self.run_dir.metrics_log(rows) as log, StopSignal(self.acc) as stop:
                while self.step < r.train.steps:
                    row = self.train_step(self.step)
                    self.step += 1
                    if self.cfg.ref_sync_steps and self.step % self.cfg.ref_sync_steps == 0:
                        self.reference.load_state_dict(self.policy.state_dict())  # type: ignore[union-attr]
                    due = (r.train.eval_every and self.step % r.train.eval_every == 0) or self.step == r.train.steps
                    if due and self.eval_set:
                        row[self.eval_key] = self.evaluate()
                        self.eval_history.append({"step": self.step, self.eval_key: row[self.eval_key]})
                        if self.is_main:
                            bar.write(f"step {self.step}: {self.eval_name} {row[self.eval_key]:.3f}")
                    log(row)
                    bar.update(1)
                    bar.set_postfix(reward=f"{row.get('reward/mean', float('nan')):.3f}")
                    if stop.after_step(self.step, r.train.steps, r.train.save_every, self.save_checkpoint):
                        interrupted = True
                        break
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
        self.save_checkpoint()
        if interrupted:
            stop_interrupted(self.acc, self.run_dir.checkpoint, self.step)
        self.export()
        self.acc.end_training()
        summary: dict[str, Any] = {"steps": self.step}
        if self.is_main:
            from .report import write_report

            summary = write_report(self.out, r, self.eval_history, time.time() - started, self.eval_key, self.eval_name)
            if not self.eval_history:
                print(f"run directory: {self.out} (metrics.jsonl, report.md, curves.png, model/); no evaluation")
                return summary
            before, after = self.eval_history[0][self.eval_key], self.eval_history[-1][self.eval_key]
            print(f"{self.eval_name}: before {before:.3f} -> after {after:.3f} ({after - before:+.3f})")
            print(f"run directory: {self.out} (metrics.jsonl, report.md, curves.png, model/)")
        return summary


def run_grpo(recipe: Recipe, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    return GRPOTrainer(recipe, progress=progress).train(resume=resume, overwrite=overwrite)
