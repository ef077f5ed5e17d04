"""The GRPO training loop for masked-diffusion models, readable top to bottom.

One step: sample prompts -> roll out G completions each (no grad) -> score with the rewards ->
group advantages -> for each of mu inner iterations the estimator hides some completion tokens
(old and reference log-probs for those exact inputs were computed at rollout time) -> clipped
importance-sampled loss -> AdamW step.

Every random draw is a function of (seed, step, iteration), so `--resume` replays an interrupted
run exactly without saving RNG state.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import safetensors.torch
import torch
from tqdm.auto import tqdm

from .backbones.base import token_logprobs
from .components import build_backbone, build_eval_metric, build_sampler, build_tokenizer
from .data import encode_prompts
from .errors import MaskGRPOError
from .estimators.masking import ELBOEstimator, MaskedView
from .generation import codes_to_images, evaluate_accuracy, evaluate_images
from .grpo import aggregate, group_advantages, grpo_token_loss
from .recipe import Recipe, validate_components
from .registry import estimators, tasks
from .report import save_image_grid
from .rewards.combine import RewardSet, finite
from .sft import lr_lambda
from .tokenizers.base import decode_completion
from .utils import atomic_directory, atomic_write_text, make_generator, resolve_device

STATE_FILE = "trainer_state.pt"
POLICY_FILE = "policy.safetensors"


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


class GRPOTrainer:
    def __init__(self, recipe: Recipe, progress: bool = True):
        if recipe.kind != "grpo":
            raise MaskGRPOError(f"{recipe.source}: kind is '{recipe.kind}', `maskgrpo train` needs a grpo recipe")
        validate_components(recipe)
        self.recipe, self.cfg, self.progress = recipe, recipe.grpo, progress
        self.device = resolve_device(recipe.train.device)
        self.out = Path(recipe.output_dir)
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
        self.opt = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        total_updates = recipe.train.steps * self.cfg.num_iterations
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(o.warmup_steps, total_updates, o.schedule))
        self.step = 0
        self.eval_history: list[dict[str, float]] = []

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
        examples = [self.task.train_example(step * n_prompts + i) for i in range(n_prompts)]
        prompts = [e.prompt for e in examples for _ in range(G)]  # a group's completions are adjacent
        columns: dict[str, list[Any]] = {"answer": [e.answer for e in examples for _ in range(G)]}
        for key in examples[0].columns:
            columns[key] = [e.columns.get(key) for e in examples for _ in range(G)]

        # 1. Roll out with the current policy (it is theta_old for the whole step).
        ids, attn = encode_prompts(self.tokenizer, prompts, self.device)
        self.policy.eval()
        rollout = self.sampler.sample(self.policy, ids, make_generator(self.recipe.seed, step, 1_000_000), attention_mask=attn)
        completions = self._completions(rollout)

        # 2. Score.
        totals, components = self.rewards.score(prompts, completions, columns)
        row: dict[str, Any] = {"step": step + 1}
        for name, values in components.items():
            present = [float(v) for v in values if v is not None]
            row[f"reward/{name}/mean"] = sum(present) / len(present) if present else float("nan")
        if not finite(totals):
            bad = next(i for i, v in enumerate(totals) if not math.isfinite(v))
            tqdm.write(f"step {step + 1}: non-finite reward {totals[bad]} on sample {bad} (prompt {prompts[bad][:60]!r}); step skipped")
            return {**row, "skipped": "non-finite reward", "seconds": time.time() - started}
        rewards = torch.tensor(totals, dtype=torch.float32, device=self.device)
        advantages = group_advantages(rewards, G, cfg.advantage_std)
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
        # recipe keeps it), so the importance ratio is exactly 1 before the first update.
        self.policy.train()
        with torch.no_grad():
            old = [self._logprobs(self.policy, v, v.of_rollout(rollout.tokens)) for v in views]
            ref = [self._ref_logprobs(v, v.of_rollout(rollout.tokens)) for v in views] if cfg.beta > 0 else [None] * len(views)

        # 4. mu inner updates, each over all micro-batches (every rate used exactly once).
        # ratio/first_max_dev: max |rho - 1| in the first inner iteration, 0 unless old and current
        # log-probs disagree before any update (dropout, a mode switch); ratio/max_dev: all of them
        stats = {"loss": 0.0, "kl": 0.0, "clip_ratio": 0.0, "ratio/max_dev": 0.0}
        sequences = torch.arange(rollout.tokens.shape[0], device=rollout.tokens.device)
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

    def _logprobs(self, model: Any, view: MaskedView, targets: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        attn = None if view.attention_mask is None else view.attention_mask[rows]
        return token_logprobs(model, view.tokens[rows], targets[rows], view.loss_mask[rows], attn)

    def _ref_logprobs(self, view: MaskedView, targets: torch.Tensor) -> torch.Tensor:
        with self._reference() as model:
            return self._logprobs(model, view, targets)

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
        """One optimiser step over every micro-batch of `view`. `sequence[i]` is the rollout row
        of view row i: a stacked view (trace) holds several rows per sequence, and seq-mean
        averages over the sequence, not the view row."""
        cfg, o = self.cfg, self.recipe.optim
        tokens_per_row = view.loss_mask.sum(dim=1)
        offsets = torch.cat([tokens_per_row.new_zeros(1), tokens_per_row.cumsum(0)])
        tokens_per_sequence = torch.zeros(n_sequences, dtype=tokens_per_row.dtype, device=tokens_per_row.device).index_add_(0, sequence, tokens_per_row)
        total_tokens, total_rows = int(offsets[-1]), targets.shape[0]
        chunk = math.ceil(total_rows / o.grad_accum)
        self.opt.zero_grad(set_to_none=True)
        loss_sum = kl_sum = clipped = dev = 0.0
        for lo in range(0, total_rows, chunk):
            rows = slice(lo, min(lo + chunk, total_rows))
            span = slice(int(offsets[rows.start]), int(offsets[rows.stop]))
            if span.start == span.stop:
                continue
            logp = self._logprobs(self.policy, view, targets, rows)
            row_of_token = view.loss_mask[rows].nonzero()[:, 0] + lo
            tl = grpo_token_loss(
                logp, old[span], advantages[row_of_token], cfg.epsilon_low, cfg.epsilon_high, cfg.beta, None if ref is None else ref[span]
            )
            loss = aggregate(tl.loss, sequence[row_of_token], cfg.loss_agg, total_tokens, n_sequences, tokens_per_sequence)
            if not torch.isfinite(loss):
                tqdm.write(f"step {self.step + 1}: non-finite loss; inner update skipped")
                self.opt.zero_grad(set_to_none=True)
                nan = float("nan")
                return {"loss": nan, "kl": nan, "clip_ratio": nan, "ratio_max_dev": nan, "ok": False}
            loss.backward()
            loss_sum += loss.item()
            kl_sum += tl.kl.sum().item()
            clipped += tl.clipped.sum().item()
            dev = max(dev, (torch.exp(logp.detach() - old[span]) - 1).abs().max().item())
        if o.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for p in self.policy.parameters() if p.requires_grad], o.max_grad_norm)
        self.opt.step()
        self.sched.step()
        n = max(total_tokens, 1)
        return {"loss": loss_sum, "kl": kl_sum / n, "clip_ratio": clipped / n, "ratio_max_dev": dev, "ok": True}

    # -- evaluation, checkpoints, the loop --------------------------------------------------------
    def evaluate(self) -> float:
        """Held-out greedy accuracy (text), or the GenEval-style score of sampled images, with a
        PNG grid of them in samples/ so a person sees what the policy learned."""
        batch = self.recipe.train.eval_batch_size
        if self.image_tokenizer is None:
            return evaluate_accuracy(self.policy, self.tokenizer, self.eval_sampler, self.eval_set, batch, self.device).accuracy
        scores, images, _ = evaluate_images(
            self.policy, self.tokenizer, self.image_tokenizer, self.eval_sampler, self.eval_set, self.eval_metric, batch_size=batch, device=self.device
        )
        captions = [e.prompt for e in self.eval_set for _ in range(2)]
        save_image_grid(images[:48], captions[:48], self.out / "samples" / f"step{self.step:05d}.png")
        return scores["overall"]

    def save_checkpoint(self) -> Path:
        """Atomic: a half-written checkpoint never replaces a good one."""
        target = self.out / "checkpoint"
        with atomic_directory(target) as tmp:
            safetensors.torch.save_model(self.policy, str(tmp / POLICY_FILE))
            state = {"step": self.step, "opt": self.opt.state_dict(), "sched": self.sched.state_dict(), "eval_history": self.eval_history}
            if self.reference is not None:
                state["reference"] = self.reference.state_dict()
            torch.save(state, tmp / STATE_FILE)
        return target

    def load_checkpoint(self) -> None:
        source = self.out / "checkpoint"
        if not (source / STATE_FILE).is_file():
            raise MaskGRPOError(f"--resume: no checkpoint in {source}")
        safetensors.torch.load_model(self.policy, str(source / POLICY_FILE), device=str(self.device))
        try:  # weights_only: a checkpoint is data, and a crafted pickle must not run code on --resume
            state = torch.load(source / STATE_FILE, map_location=self.device, weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure is the same user-facing problem
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise MaskGRPOError(f"--resume: {source / STATE_FILE} is not a plain trainer state (refused to load it: {reason[:200]})") from None
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        if self.reference is not None and "reference" in state:
            self.reference.load_state_dict(state["reference"])
        self.step, self.eval_history = state["step"], state["eval_history"]

    def export(self) -> Path:
        """The trained policy as a loadable model folder (backbone + tokenizer)."""
        target = self.out / "model"
        if self.recipe.lora is None and hasattr(self.policy, "save_pretrained"):
            self.policy.save_pretrained(target)
        else:
            with atomic_directory(target) as tmp:
                safetensors.torch.save_model(self.policy, str(tmp / POLICY_FILE))
        self.tokenizer.save_pretrained(target)
        return target

    def train(self, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
        r = self.recipe
        if not resume and not overwrite and (self.out / "checkpoint").exists():
            raise MaskGRPOError(
                f"{self.out}: holds the checkpoint of an earlier run; continue it with --resume or replace it with --overwrite"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "recipe.yaml", r.resolved_yaml())
        metrics_path = self.out / "metrics.jsonl"
        rows: list[dict[str, Any]] = []
        if resume:
            self.load_checkpoint()
            rows = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()] if metrics_path.exists() else []
            rows = [x for x in rows if x["step"] <= self.step]
            print(f"resuming {r.name} from step {self.step}")
        else:
            for stale in (self.out / "samples").glob("step*.png"):
                stale.unlink()  # a fresh run's sample grids must not sit beside an older run's
        if not self.eval_set:
            print(f"no evaluation: task {type(self.task).__name__} has no eval data")
        elif not self.eval_history:
            accuracy = self.evaluate()
            self.eval_history.append({"step": 0, self.eval_key: accuracy})
            print(f"{self.eval_name} before training: {accuracy:.3f} ({len(self.eval_set)} prompts)")
        atomic_write_text(metrics_path, "".join(json.dumps(x) + "\n" for x in rows))

        started = time.time()
        interrupted = False
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM saves too
        bar = tqdm(total=r.train.steps, initial=self.step, desc=r.name, dynamic_ncols=True, disable=not self.progress)
        try:
            with metrics_path.open("a") as log:
                while self.step < r.train.steps:
                    row = self.train_step(self.step)
                    self.step += 1
                    if self.cfg.ref_sync_steps and self.step % self.cfg.ref_sync_steps == 0:
                        self.reference.load_state_dict(self.policy.state_dict())  # type: ignore[union-attr]
                    due = (r.train.eval_every and self.step % r.train.eval_every == 0) or self.step == r.train.steps
                    if due and self.eval_set:
                        row[self.eval_key] = self.evaluate()
                        self.eval_history.append({"step": self.step, self.eval_key: row[self.eval_key]})
                        bar.write(f"step {self.step}: {self.eval_name} {row[self.eval_key]:.3f}")
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    bar.update(1)
                    bar.set_postfix(reward=f"{row.get('reward/mean', float('nan')):.3f}")
                    if r.train.save_every and self.step % r.train.save_every == 0:
                        self.save_checkpoint()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
            signal.signal(signal.SIGTERM, previous)
        self.save_checkpoint()
        if interrupted:
            print(f"interrupted: checkpoint at step {self.step} saved to {self.out / 'checkpoint'}; continue with --resume")
            raise KeyboardInterrupt
        self.export()
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

