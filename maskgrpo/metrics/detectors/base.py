"""What a detector backend returns: labelled, scored boxes (and masks/colours where it has them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image


@dataclass
class Detection:
    """One detected object. `box` = (x0, y0, x1, y1) in pixels; `mask`: bool [H, W] or None;
    `color`: a colour name when the backend knows it exactly (the `shapes` world), else None."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    mask: np.ndarray | None = None
    color: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (the mask is summarised by its area)."""
        out: dict[str, Any] = {
            "label": self.label,
            "score": round(float(self.score), 4),
            "box": [round(float(v), 2) for v in self.box],
        }
        if self.color is not None:
            out["color"] = self.color
        if self.mask is not None:
            out["mask_area"] = int(np.count_nonzero(self.mask))
        return out


@runtime_checkable
class DetectorBackend(Protocol):
    def detect(self, image: Image.Image) -> list[Detection]: ...
