"""Rewards for generated images. They wrap the evaluation metrics, so training and evaluation
score an image the same way."""

from __future__ import annotations

from typing import Any

from ..registry import rewards


@rewards.register("geneval")
class GenEvalReward:
    """1 if the image passes the GenEval-style checks of its metadata row, else 0."""

    def __init__(self, detector: str | dict = "shapes"):
        from ..metrics.geneval import GenEvalMetric

        self.metric = GenEvalMetric(detector=detector)

    def __call__(self, prompts: list[str], completions: list[Any], metadata: list[dict], **columns: Any) -> list[float | None]:
        return [1.0 if r["correct"] else 0.0 for r in self.metric.evaluate(completions, metadata)]


@rewards.register("clip_score")
class ClipScoreReward:
    """Image-prompt CLIP score / 100 (open_clip; weights from a local file)."""

    def __init__(self, model: str = "ViT-L-14", pretrained: str | None = None, device: str = "cpu"):
        from ..metrics.clip_score import ClipScore

        self.metric = ClipScore(model=model, pretrained=pretrained, device=device)

    def __call__(self, prompts: list[str], completions: list[Any], **columns: Any) -> list[float | None]:
        return [s / 100.0 for s in self.metric.score(completions, prompts)]
