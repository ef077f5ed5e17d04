"""What the shapes policy draws when the prompt leaves it free: the training-health counts.

Issue 16's failed run drifted to one or two colours for every prompt that names none, and to
white squares for "a circle", long before its score fell. So every GRPO step counts, over the
rollout images, the detected objects' colours (prompts that name no colour only) and classes
(all prompts); the trainer logs the shares (`health/color/<name>`, `health/class/<name>`) and
how many colours still hold at least 5% of the objects (`health/color/distinct`).
"""

from __future__ import annotations

from typing import Any

from ...metrics.geneval import names_a_color
from ...registry import detectors
from .vocabulary import CLASSES, COLORS


class HealthCounter:
    """Counts over fixed keys (every colour, every class), so processes can sum them."""

    def __init__(self) -> None:
        self.detector = detectors.build("shapes")

    def counts(self, images: list[Any], metadata: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
        colors = dict.fromkeys(COLORS, 0.0)
        classes = dict.fromkeys(CLASSES, 0.0)
        for image, row in zip(images, metadata):
            free_color = not names_a_color(row)
            for det in self.detector.detect(image):
                if det.label in classes:
                    classes[det.label] += 1
                if free_color and det.color in colors:
                    colors[det.color] += 1
        return {"color": colors, "class": classes}
