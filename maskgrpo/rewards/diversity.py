"""A counterweight to colour collapse: pay an image for colours its group-mates do not use.

GRPO on prompts that name no colour (the shapes world's training prompts) drifts onto one or two
colours (issue 16: every run settled on orange and red), and the drift leaks into the held-out
prompts that do name one. Nothing in the GenEval reward minds, since any colour passes "a circle".
This term rewards the spread the SFT policy had: within the group of G rollouts of one prompt,
an image earns, per detected object, the share of the other G - 1 images that hold no object of
that colour (mean over its objects). A group of G distinct colours earns 1 each, a group of one
colour 0. Prompts that name a colour get None (not applicable): there the colour is the task.
"""

from __future__ import annotations

from typing import Any

from ..errors import MaskGRPOError
from ..metrics.geneval import THRESHOLD, names_a_color
from ..registry import detectors, rewards


@rewards.register("color_diversity")
class ColorDiversityReward:
    """Needs a detector that reads colours (`shapes`); `group` is the trainer's column that numbers
    the prompt each rollout belongs to (a group's G rollouts share it)."""

    group_relative = True  # a value depends on the rollout's group-mates, never on other groups

    def __init__(self, detector: str | dict = "shapes", threshold: float = THRESHOLD):
        self.backend = detectors.build(detector, where="color_diversity.detector")
        self.threshold = threshold

    def _colors(self, image: Any) -> set[str]:
        dets = [d for d in self.backend.detect(image) if d.score > self.threshold]
        if any(d.color is None for d in dets):
            raise MaskGRPOError("color_diversity: the detector reads no colours; use one that does (e.g. `shapes`)")
        return {str(d.color) for d in dets}

    def __call__(self, prompts: list[str], completions: list[Any], metadata: list[dict], group: list[int], **columns: Any) -> list[float | None]:
        free = [not names_a_color(row) for row in metadata]
        colors = [self._colors(image) if ok else set() for image, ok in zip(completions, free)]
        scores: list[float | None] = []
        for i, mine in enumerate(colors):
            mates = [colors[j] for j in range(len(colors)) if j != i and group[j] == group[i]]
            if not free[i] or not mates:
                scores.append(None)
            elif not mine:
                scores.append(0.0)  # nothing drawn: no colour to credit
            else:
                scores.append(sum(sum(c not in other for other in mates) / len(mates) for c in mine) / len(mine))
        return scores
