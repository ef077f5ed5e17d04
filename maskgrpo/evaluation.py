"""The evaluation a training program (GRPO or SFT) runs at its evaluation steps, in one place.

Without a recipe `eval:` it scores the task's held-out set (text: greedy accuracy; images: the
GenEval-style score of sampled images, with a PNG grid of them in samples/ so a person sees
what the policy learnt). With `eval: {suite: ...}` it runs `maskgrpo eval SUITE` on the policy
in memory (`eval.harness.evaluate_suite` with a `LoadedModel`), so the number logged during
training is the one the saved model gets, from the same code; the results go to eval/stepNNNNN/.
Either way the work is shared by the processes and every process gets the score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .components import RunParts
from .errors import MaskGRPOError
from .generation import evaluate_sharded
from .recipe import Recipe
from .report import save_image_grid
from .runtime import tensorboard_writer

__all__ = ["InTrainingEvaluation"]


class InTrainingEvaluation:
    def __init__(self, recipe: Recipe, parts: RunParts, accelerator: Any, out: Path, batch_size: int):
        self.recipe, self.parts, self.acc, self.out, self.batch_size = recipe, parts, accelerator, out, batch_size
        self.key = parts.modality.eval_key
        suite = recipe.eval.suite if recipe.eval is not None else None
        self.name = parts.modality.eval_name if suite is None else f"score on suite {suite}"
        # a task without held-out data and no suite: the run reports no evaluation, never a 0
        self.enabled = bool(parts.eval_set) or suite is not None

    def __call__(self, policy: Any, step: int) -> float:
        """The score of `policy` (in eval mode) at `step`."""
        if self.recipe.eval is not None:
            return self._suite(policy, step)
        parts = self.parts
        score, records, images = evaluate_sharded(self.acc, policy, parts.modality, parts.eval_sampler, parts.eval_set, parts.eval_metric, self.batch_size)
        if parts.modality.name == "text":
            self._log_samples(step, text=records[:8])
        elif self.acc.is_main_process:
            path = self.out / "samples" / f"step{step:05d}.png"
            save_image_grid(images[:48], [r["prompt"] for r in records][:48], path)
            self._log_samples(step, grid=path)
        return score

    def _suite(self, policy: Any, step: int) -> float:
        from accelerate.utils import broadcast_object_list

        from .eval.harness import LoadedModel, evaluate_suite

        spec = self.recipe.eval
        assert spec is not None
        with self.acc.autocast():
            results = evaluate_suite(
                spec.suite,
                model=LoadedModel(policy, self.parts.tokenizer, f"{self.recipe.name} at step {step}"),
                out=self.out / "eval" / f"step{step:05d}",
                batch_size=self.batch_size,
                overrides=spec.set,
                progress=False,
                accelerator=self.acc,
            )
        score = [float("nan")]
        if results is not None:  # the main process scored
            numbers = results["metrics"]
            key = spec.metric or ("overall" if "overall" in numbers else next(iter(numbers)))
            if key not in numbers:
                raise MaskGRPOError(f"eval.metric: suite '{spec.suite}' reports {', '.join(numbers)}, not '{key}'")
            score = [float(numbers[key])]
        if self.acc.num_processes > 1:
            broadcast_object_list(score)
        return score[0]

    def _log_samples(self, step: int, text: list[dict] | None = None, grid: Path | None = None) -> None:
        """Sample completions or the image grid to TensorBoard at evaluation steps."""
        writer = tensorboard_writer(self.acc)
        if writer is None:
            return
        if text:
            body = "\n\n".join(f"`{r['prompt']}` -> `{r['completion']}` ({'right' if r['correct'] else 'wrong'})" for r in text)
            writer.add_text("samples", body, step)
        if grid is not None:
            import numpy as np
            from PIL import Image

            writer.add_image("samples", np.asarray(Image.open(grid).convert("RGB")), step, dataformats="HWC")
