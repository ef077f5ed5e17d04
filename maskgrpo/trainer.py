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
from .components import build_run, write_manifest
from .data import encode_prompts
from .errors import MaskGRPOError
from .estimators.masking import MaskedView
from .evaluation import InTrainingEvaluation
from .grpo import aggregate, group_advantages, grpo_token_loss
from .health import health_shares
from .policy import apply_lora, disable_dropout, enable_gradient_checkpointing, merged_copy
from .recipe import Recipe, validate_components
from .rewards.combine import finite
from .runtime import (
    RunDirectory,
    StopSignal,
    gather_list,
    stop_interrupted,
    local_share,
    lr_lambda,
    make_accelerator,
    reduce_sum,
)
from .sft import draw_masks
from .utils import RowGenerators, make_generator

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

        parts = build_run(recipe)
        self.tokenizer, self.modality, self.task = parts.tokenizer, parts.modality, parts.task
        self.sampler, self.eval_sampler, self.estimator, self.rewards = parts.sampler, parts.eval_sampler, parts.estimator, parts.rewards
        self.eval_set, self.eval_metric = parts.eval_set, parts.eval_metric
        self.evaluation = InTrainingEvaluation(recipe, parts, self.acc, self.out, recipe.train.eval_batch_size)
        self.evaluates, self.eval_name = self.evaluation.enabled, self.evaluation.name
        self.policy = parts.backbone.to(self.device)
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
        self.uses_reference = self.cfg.beta > 0 or self.cfg.monitor_kl  # monitor: drift shows before the score falls
        if self.uses_reference and recipe.lora is None:
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)

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
        self.best: dict[str, Any] | None = None  # train.keep_best: {step, score} of model-best/
        self.run_dir = RunDirectory(self.out, self.acc)

    # -- one GRPO step ---------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, Any]:
        started = time.time()
        cfg, G = self.cfg, self.cfg.group_size
        n_prompts = self.recipe.train.prompts_per_step
        examples = [self.task.train_example(step * n_prompts + i) for i in self.prompt_share]  # this process's share
        prompts = [e.prompt for e in examples for _ in range(G)]  # a group's completions are adjacent
        columns: dict[str, list[Any]] = {"answer": [e.answer for e in examples for _ in range(G)]}
        columns["group"] = [step * n_prompts + i for i in self.prompt_share for _ in range(G)]  # the prompt's global number
        for key in examples[0].columns:
            columns[key] = [e.columns.get(key) for e in examples for _ in range(G)]
        rows = torch.arange(self.prompt_share.start * G, self.prompt_share.stop * G, device=self.device)  # global row ids
        sft = self._sft_batch(examples, step) if cfg.sft_coef > 0 else None  # PPO-ptx: the task's targets

        # 1. Roll out with the current policy (it is theta_old for the whole step).
        ids, attn = encode_prompts(self.tokenizer, prompts, self.device)
        self.policy.eval()
        with self.acc.autocast():
            rollout = self.sampler.sample(self.policy, ids, RowGenerators.seeded(self.recipe.seed, step, 1_000_000, rows=rows), attention_mask=attn)
        rollout.row_ids = rows
        completions = self.modality.decode(rollout.completion)  # text, or images for the rewards

        # 2. Score locally, gather every process's rewards: advantages need the whole batch.
        local_totals, local_components = self.rewards.score(prompts, completions, columns)
        totals = gather_list(self.acc, local_totals)
        row: dict[str, Any] = {"step": step + 1}
        # rollout cost (this process's): forwards per block, tokens committed per step (over-confidence)
        row.update({f"rollout/{k}": v for k, v in rollout.stats.items() if k in ("forwards_per_block", "tokens_per_step")})
        for name, values in local_components.items():
            present = [float(v) for v in gather_list(self.acc, values) if v is not None]
            row[f"reward/{name}/mean"] = sum(present) / len(present) if present else float("nan")
        if not finite(totals):
            bad = next(i for i, v in enumerate(totals) if not math.isfinite(v))
            if self.is_main:
                tqdm.write(f"step {step + 1}: non-finite reward {totals[bad]} on sample {bad}; step skipped")
            return {**row, "skipped": "non-finite reward", "seconds": time.time() - started}
        if hasattr(self.task, "health_counts"):
            row.update(health_shares(self.acc, self.task.health_counts(completions, columns)))
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
            first, entropy = self._chunked_logprobs(self.scorer, views[0], views[0].of_rollout(rollout.tokens), entropy=True)
            old = [first] + [self._chunked_logprobs(self.scorer, v, v.of_rollout(rollout.tokens)) for v in views[1:]]
            ref = [self._ref_logprobs(v, v.of_rollout(rollout.tokens)) for v in views] if self.uses_reference else [None] * len(views)
        # mean entropy (nats) of the policy's prediction at the first view's scored positions: a
        # policy collapsing onto few outputs shows it here before the score falls
        row["entropy"] = reduce_sum(self.acc, entropy.sum().item()) / max(reduce_sum(self.acc, entropy.numel()), 1)

        # 4. mu inner updates, each over all micro-batches (every rate used exactly once).
        # ratio/first_max_dev: max |rho - 1| in the first inner iteration, 0 unless old and current
        # log-probs disagree before any update (dropout, a mode switch); ratio/max_dev: all of them
        stats = {"loss": 0.0, "kl": 0.0, "clip_ratio": 0.0, "ratio/max_dev": 0.0, **({"sft_loss": 0.0} if sft else {})}
        sequences = torch.arange(rollout.tokens.shape[0], device=self.device)
        skipped_updates = 0
        for j, view in enumerate(views):
            targets, sequence = view.of_rollout(rollout.tokens), view.of_rollout(sequences)
            update = self._inner_update(view, targets, old[j], ref[j], view.of_rollout(advantages), len(sequences), sequence, sft)
            skipped_updates += not update["ok"]
            for key in ("loss", "kl", "clip_ratio", *(("sft_loss",) if sft else ())):
                stats[key] += update[key] / len(views)
            stats["ratio/max_dev"] = max(stats["ratio/max_dev"], update["ratio_max_dev"])
            if j == 0:
                stats["ratio/first_max_dev"] = update["ratio_max_dev"]
        if not self.uses_reference:
            del stats["kl"]  # no reference: nothing measured, so nothing logged
        row.update(stats)
        row["lr"] = self.sched.get_last_lr()[0]
        if skipped_updates:
            row["skipped_updates"] = skipped_updates
        row["seconds"] = time.time() - started
        return row

    def _sft_batch(self, examples: list[Any], step: int) -> dict[str, torch.Tensor]:
        """The PPO-ptx term's inputs: each prompt's reference completion (`modality.targets`: the
        text target, or the image's VQ codes) with every token masked with probability t ~
        U(1e-3, 1), as SFT draws them (seeded per prompt, so it is the same on any process);
        scored at the masked positions, their mean log-probability is MaskGIT's SFT objective."""
        if self.modality.name == "text" and not all(e.target for e in examples):
            raise MaskGRPOError("grpo.sft_coef: the task gives no reference completions (an example's `target` is empty)")
        try:
            target = self.modality.targets(examples, self.sampler.gen_length, self.device)
        except KeyError as err:
            raise MaskGRPOError(f"grpo.sft_coef: the task gives no reference completions (no {err} column)") from None
        prompt, attn = encode_prompts(self.tokenizer, [e.prompt for e in examples], self.device)
        noise = RowGenerators.seeded(self.recipe.seed, step, 2_000_000, rows=torch.arange(self.prompt_share.start, self.prompt_share.stop))
        _, masked, _ = draw_masks(len(examples), target.shape[1], noise, 1e-3, 0.0, self.device)
        unmasked = torch.zeros_like(prompt, dtype=torch.bool)
        return {
            "inputs": torch.cat([prompt, target.masked_fill(masked, self.mask_id)], dim=1),
            "targets": torch.cat([prompt, target], dim=1),
            "select": torch.cat([unmasked, masked], dim=1),
            "attention_mask": torch.cat([attn.bool(), torch.ones_like(target, dtype=torch.bool)], dim=1),
        }

    def _logprobs(self, scorer: Any, view: MaskedView, targets: torch.Tensor, rows: slice = slice(None), entropy: bool = False) -> Any:
        """log p of the view's scored targets (and, with `entropy`, the prediction's entropy there)."""
        attn = None if view.attention_mask is None else view.attention_mask[rows]
        return scorer(view.tokens[rows], targets[rows], view.loss_mask[rows], attn, entropy=entropy)

    def _micro_batches(self, rows: int) -> list[slice]:
        """The `optim.grad_accum` row slices of a view (every process has the same number)."""
        chunk = math.ceil(rows / self.recipe.optim.grad_accum)
        return [slice(lo, min(lo + chunk, rows)) for lo in range(0, rows, chunk)]

    def _chunked_logprobs(self, scorer: Any, view: MaskedView, targets: torch.Tensor, entropy: bool = False) -> Any:
        parts = [self._logprobs(scorer, view, targets, rows, entropy) for rows in self._micro_batches(targets.shape[0])]
        if not entropy:
            return torch.cat(parts)
        return torch.cat([logp for logp, _ in parts]), torch.cat([ent for _, ent in parts])

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
        sft: dict[str, torch.Tensor] | None = None,
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
        loss_sum = kl_sum = clipped = dev = sft_loss = 0.0
        if sft is not None:  # PPO-ptx; its gradient is all-reduced with the micro-batches' below
            with self.acc.no_sync(self.trained_scorer), self.acc.autocast():
                logp = self.trained_scorer(**sft)
                term = -logp.sum() / max(reduce_sum(self.acc, logp.numel()), 1)  # global masked-token mean
                self.acc.backward(cfg.sft_coef * term * world)
            sft_loss = reduce_sum(self.acc, term.item())
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
            return {"loss": nan, "kl": nan, "clip_ratio": nan, "ratio_max_dev": nan, "sft_loss": nan, "ok": False}
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
            "sft_loss": sft_loss,
            "ok": True,
        }

    # -- checkpoints, export, the loop ------------------------------------------------------------
    def evaluate(self) -> float:
        self.policy.eval()
        return self.evaluation(self.policy, self.step)

    def save_checkpoint(self) -> Path:
        state = {"step": self.step, "opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "eval_history": self.eval_history, "best": self.best}
        if self.reference is not None:
            state["reference"] = self.reference.state_dict()
        self.run_dir.save({"policy": self.policy}, state)
        return self.run_dir.checkpoint

    def load_checkpoint(self) -> None:
        state, self.step, _ = self.run_dir.resume({"policy": self.policy}, self.opt, self.sched)
        if self.reference is not None and "reference" in state:
            self.reference.load_state_dict(state["reference"])
        self.eval_history = state["eval_history"]
        self.best = state.get("best")

    def export(self, name: str = "model") -> Path:
        """The trained policy as a loadable model folder (backbone + tokenizer + manifest) under
        the run directory; a LoRA policy is merged into its base first, so `--model
        runs/NAME/model` loads it like any other. Written beside the target, then renamed."""
        import shutil

        target = self.out / name
        if self.is_main:
            staging = self.out / f".{name}.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            model = self.policy if self.recipe.lora is None else merged_copy(self.policy)
            model.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            write_manifest(staging, self.recipe, self.modality, adapter=None if self.recipe.lora is None else "merged")
            shutil.rmtree(target, ignore_errors=True)
            staging.replace(target)
        self.acc.wait_for_everyone()
        return target

    def record_evaluation(self, score: float) -> None:
        """Log an evaluation; with `train.keep_best`, a new best policy replaces model-best/."""
        self.eval_history.append({"step": self.step, self.modality.eval_key: score})
        if self.recipe.train.keep_best and math.isfinite(score) and (self.best is None or score > self.best["score"]):
            self.best = {"step": self.step, "score": score}
            self.export("model-best")

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
        if not self.evaluates:
            if self.is_main:
                print(f"no evaluation: task {type(self.task).__name__} has no eval data")
        elif not self.eval_history:
            accuracy = self.evaluate()
            self.record_evaluation(accuracy)
            if self.is_main:
                where = f"{len(self.eval_set)} prompts" if r.eval is None else f"results in {self.out / 'eval'}"
                print(f"{self.eval_name} before training: {accuracy:.3f} ({where})")

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
                    if due and self.evaluates:
                        row[self.modality.eval_key] = self.evaluate()
                        self.record_evaluation(row[self.modality.eval_key])
                        if self.is_main:
                            bar.write(f"step {self.step}: {self.eval_name} {row[self.modality.eval_key]:.3f}")
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

            summary = write_report(self.out, r, self.eval_history, time.time() - started, self.modality.eval_key, self.eval_name, self.best)
            if not self.eval_history:
                print(f"run directory: {self.out} (metrics.jsonl, report.md, curves.png, model/); no evaluation")
                return summary
            before, after = self.eval_history[0][self.modality.eval_key], self.eval_history[-1][self.modality.eval_key]
            print(f"{self.eval_name}: before {before:.3f} -> after {after:.3f} ({after - before:+.3f})")
            if self.best is not None:
                print(f"best evaluation {self.best['score']:.3f} at step {self.best['step']}: {self.out / 'model-best'}")
            print(f"run directory: {self.out} (metrics.jsonl, report.md, curves.png, model/)")
        return summary


def run_grpo(recipe: Recipe, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    return GRPOTrainer(recipe, progress=progress).train(resume=resume, overwrite=overwrite)
