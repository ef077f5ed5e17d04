"""The shapes world's scenes: flat-colour objects on a grey background, and how they render.

A scene is a list of `ShapeObject`s (shape, colour, centre, circumradius, rotation) rendered with
exact area anti-aliasing (each pixel's coverage is measured on a supersampled grid), so the
`shapes` detector (`maskgrpo.worlds.shapes.detector`) can recover every object exactly.
Lengths are in pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from .vocabulary import BACKGROUND, CLASSES, COLORS


@dataclass
class ShapeObject:
    """One object. `radius` is the circumradius (a circle's radius, a square's half-diagonal, the
    distance from a triangle's centre to its vertices); `rotation` in degrees (0: square axis-
    aligned, triangle pointing up)."""

    shape: str
    color: str
    cx: float
    cy: float
    radius: float
    rotation: float = 0.0

    def vertices(self) -> np.ndarray | None:
        """Polygon vertices (x, y) in pixels, or None for a circle."""
        if self.shape == "circle":
            return None
        if self.shape == "square":
            angles = np.deg2rad(self.rotation + 45.0 + 90.0 * np.arange(4))
        elif self.shape == "triangle":
            angles = np.deg2rad(self.rotation - 90.0 + 120.0 * np.arange(3))
        else:
            raise ValueError(f"unknown shape '{self.shape}' (known: {', '.join(CLASSES)})")
        return np.stack([self.cx + self.radius * np.cos(angles), self.cy + self.radius * np.sin(angles)], axis=1)

    def box(self) -> tuple[float, float, float, float]:
        """Exact bounding box (x0, y0, x1, y1) in continuous pixel coordinates."""
        v = self.vertices()
        if v is None:
            r = self.radius
            return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)
        return (float(v[:, 0].min()), float(v[:, 1].min()), float(v[:, 0].max()), float(v[:, 1].max()))


# -- rendering ------------------------------------------------------------------------------------
def _coverage(obj: ShapeObject, size: int, factor: int) -> tuple[slice, slice, np.ndarray] | None:
    """Fraction of each pixel inside `obj`, measured on a factor x factor grid of sub-pixel
    centres; returned for the object's bounding-box window only."""
    x0, y0, x1, y1 = obj.box()
    c0, r0 = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
    c1, r1 = min(int(math.ceil(x1)), size), min(int(math.ceil(y1)), size)
    if c1 <= c0 or r1 <= r0:
        return None
    sub = (np.arange(factor) + 0.5) / factor
    xs = (np.arange(c0, c1)[:, None] + sub[None, :]).reshape(-1)
    ys = (np.arange(r0, r1)[:, None] + sub[None, :]).reshape(-1)
    X, Y = np.meshgrid(xs, ys)
    v = obj.vertices()
    if v is None:
        inside = (X - obj.cx) ** 2 + (Y - obj.cy) ** 2 <= obj.radius**2
    else:
        inside = np.ones_like(X, dtype=bool)
        n = len(v)
        for k in range(n):  # vertices go clockwise in image coordinates (y down)
            ax, ay = v[k]
            bx, by = v[(k + 1) % n]
            inside &= (bx - ax) * (Y - ay) - (by - ay) * (X - ax) >= 0
    cov = inside.reshape(r1 - r0, factor, c1 - c0, factor).mean(axis=(1, 3))
    return slice(r0, r1), slice(c0, c1), cov


def render(
    objects: list[ShapeObject],
    size: int = 32,
    seed: int = 0,
    jitter: float = 0.0,
    noise: float = 0.0,
    supersample: int | None = None,
    background: tuple[int, int, int] = BACKGROUND,
) -> Image.Image:
    """Render `objects` into a size x size RGB image with anti-aliased edges.

    `jitter`: each object's colour is shifted by up to +-jitter per channel (uniform, seeded);
    `noise`: standard deviation of per-pixel Gaussian noise. Both default to 0 (canonical colours).
    """
    factor = supersample or (8 if size <= 64 else 4)
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), dtype=np.float64)
    img[:] = np.asarray(background, dtype=np.float64)
    for obj in objects:
        color = np.asarray(COLORS[obj.color], dtype=np.float64)
        if jitter > 0:
            color = np.clip(color + rng.uniform(-jitter, jitter, size=3), 0, 255)
        window = _coverage(obj, size, factor)
        if window is None:
            continue
        rows, cols, cov = window
        patch = img[rows, cols]
        img[rows, cols] = patch * (1.0 - cov[..., None]) + color * cov[..., None]
    if noise > 0:
        img = img + rng.normal(0.0, noise, size=img.shape)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), mode="RGB")


# -- relations (the same geometry as GenEval's position rule) --------------------------------------
def objects_to_dicts(objects: list[ShapeObject]) -> list[dict[str, Any]]:
    return [asdict(o) for o in objects]


def objects_from_dicts(rows: list[dict[str, Any]]) -> list[ShapeObject]:
    return [ShapeObject(**r) for r in rows]
