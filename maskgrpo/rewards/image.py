"""Rewards for generated images. They wrap the evaluation metrics, so training and evaluation
score an image the same way."""

from __future__ import annotations

from typing import Any, Literal

from ..registry import rewards


@rewards.register("geneval")
class GenEvalReward:
    """1 if the image passes the GenEval-style checks of its metadata row, else 0. With a COCO
    detector (no colours) the colour checks use CLIP: give `clip_pretrained` (a local file).

    `partial_credit: true` pays the fraction of the row's include and exclude entries met (one
    right object of two earns 0.5); it is 1 exactly when GenEval's verdict is, so the optimum is
    unchanged, but groups whose images are all wrong still rank them."""

    def __init__(
        self,
        detector: str | dict = "shapes",
        color: Literal["auto", "detector", "clip"] = "auto",
        clip_model: str = "ViT-L-14",
        clip_pretrained: str | None = None,
        partial_credit: bool = False,
        device: str = "cpu",
    ):
        from ..metrics.geneval import GenEvalMetric

        self.metric = GenEvalMetric(detector=detector, color=color, clip_model=clip_model, clip_pretrained=clip_pretrained, device=device)
        self.partial_credit = partial_credit

    def __call__(self, prompts: list[str], completions: list[Any], metadata: list[dict], **columns: Any) -> list[float | None]:
        records = self.metric.evaluate(completions, metadata)
        if self.partial_credit:
            return [float(r["fraction_met"]) for r in records]
        return [1.0 if r["correct"] else 0.0 for r in records]


@rewards.register("clip_score")
class ClipScoreReward:
    """Image-prompt CLIP score / 100 (open_clip; weights from a local file)."""

    def __init__(self, model: str = "ViT-L-14", pretrained: str | None = None, device: str = "cpu"):
        from ..metrics.clip_score import ClipScore

        self.metric = ClipScore(model=model, pretrained=pretrained, device=device)

    def __call__(self, prompts: list[str], completions: list[Any], **columns: Any) -> list[float | None]:
        return [s / 100.0 for s in self.metric.score(completions, prompts)]
