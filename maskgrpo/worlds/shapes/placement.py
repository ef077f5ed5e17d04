"""Placing a scene's objects: a scene that satisfies a GenEval-schema row of this world.

`objects_for_metadata(row, rng, size)` draws the objects every include entry asks for (exact
counts, colours where given) and places them without overlap, with at most one position relation
satisfied by a margin (`POSITION_MARGIN`). Lengths are in pixels of a 32 x 32 image and scale
with `size`; `canonical` scenes (the small policy's SFT data) sit on the VQ token grid.
"""

from __future__ import annotations

import math
import random
from typing import Any

from ...metrics.geneval import relation_values
from .scene import ShapeObject
from .vocabulary import CLASSES, COLORS, OPPOSITE

# Circumradius ranges at 32 x 32 (a square's half-diagonal, a triangle's vertex distance), chosen
# so the three shapes have comparable visual weight; never below 6 px.
RADIUS_RANGE: dict[str, tuple[float, float]] = {
    "circle": (6.0, 8.5),
    "square": (6.5, 9.5),
    "triangle": (7.0, 10.0),
}
MIN_RADIUS = 6.0
GAP = 1.5  # minimum distance between the circumcircles of two objects (32 x 32 pixels)
POSITION_MARGIN = 0.65  # generated scenes satisfy GenEval's 0.5 position rule with this margin
# Canonical scenes (the policy's SFT data): centres on multiples of 4 px, the VQ tokenizer's
# stride, so a given shape always meets the token grid the same way and becomes the same codes.
CANONICAL_GRID = 4.0
CANONICAL_RADIUS: dict[str, float] = {"circle": 7.0, "square": 8.0, "triangle": 8.5}


def as_rng(rng: random.Random | int | None) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    return random.Random(rng)


def _sample_radius(shape: str, rng: random.Random, scale: float, shrink: float) -> float:
    lo, hi = RADIUS_RANGE[shape]
    hi = max(lo, hi * shrink)
    return max(MIN_RADIUS, rng.uniform(lo, hi)) * scale


def _fits(cx: float, cy: float, r: float, placed: list[ShapeObject], size: int, scale: float) -> bool:
    margin = 0.5 * scale
    if cx - r < margin or cy - r < margin or cx + r > size - margin or cy + r > size - margin:
        return False
    return all(math.hypot(cx - o.cx, cy - o.cy) >= r + o.radius + GAP * scale for o in placed)


class PlacementError(RuntimeError):
    """No non-overlapping placement found for a scene (too many or too large objects)."""


def _place(
    wanted: list[tuple[str, str]],
    rng: random.Random,
    size: int,
    relation: tuple[str, int, int] | None = None,
    attempts: int = 400,
    canonical: bool = False,
) -> list[ShapeObject]:
    """Place objects (shape, colour) without overlap. `relation` = (rel, i, j): object i must be
    `rel` object j with GenEval's rule satisfied by POSITION_MARGIN. `canonical`: upright shapes
    of one radius per class (`CANONICAL_RADIUS`), centred on the VQ token grid (see `CANONICAL_GRID`)."""
    scale = size / 32.0
    shrink = {1: 1.0, 2: 0.95, 3: 0.8}.get(len(wanted), 0.7)
    canonical_shrink = 1.0
    for restart in range(16):
        if restart and restart % 3 == 0:
            shrink *= 0.9  # large radii may leave no room: retry with smaller objects
            canonical_shrink *= 0.92
        placed: list[ShapeObject] = []
        for i, (shape, color) in enumerate(wanted):
            if canonical:
                r = max(MIN_RADIUS, CANONICAL_RADIUS[shape] * canonical_shrink) * scale
            else:
                r = _sample_radius(shape, rng, scale, shrink)
            rot = rng.uniform(0.0, 360.0) if shape != "circle" and not canonical else 0.0
            ok = False
            x_lo, x_hi, y_lo, y_hi = r, size - r, r, size - r
            if relation is not None and i == min(relation[1], relation[2]):
                # the first of a related pair goes to the side away from where the second must be
                rel, a, _b = relation
                direction = rel if a == max(relation[1], relation[2]) else OPPOSITE[rel]
                if direction == "left of":
                    x_lo = max(x_lo, size / 2)
                elif direction == "right of":
                    x_hi = min(x_hi, size / 2)
                elif direction == "above":
                    y_lo = max(y_lo, size / 2)
                else:
                    y_hi = min(y_hi, size / 2)
            for _ in range(attempts):
                cx = rng.uniform(x_lo, max(x_lo, x_hi))
                cy = rng.uniform(y_lo, max(y_lo, y_hi))
                if canonical:
                    step = CANONICAL_GRID * scale
                    cx, cy = step * round(cx / step), step * round(cy / step)
                if not _fits(cx, cy, r, placed, size, scale):
                    continue
                cand = ShapeObject(shape, color, cx, cy, r, rot)
                if relation is not None and i == max(relation[1], relation[2]):
                    rel, a, b = relation
                    obj_a = cand if a == i else placed[a]
                    obj_b = cand if b == i else placed[b]
                    if relation_values(obj_a.box(), obj_b.box())[rel] < POSITION_MARGIN:
                        continue
                ok = True
                placed.append(cand)
                break
            if not ok:
                break
        if len(placed) == len(wanted):
            return placed
    if relation is None:
        return _place_in_cells(wanted, rng, size, canonical)
    raise PlacementError(f"could not place {len(wanted)} objects in a {size}x{size} image")


def _place_in_cells(wanted: list[tuple[str, str]], rng: random.Random, size: int, canonical: bool = False) -> list[ShapeObject]:
    """Crowded scenes: one object per cell of a grid, radius shrunk to fit its cell."""
    n = len(wanted)
    scale = size / 32.0
    rows = max(1, math.ceil(math.sqrt(n)))
    cols = math.ceil(n / rows)
    if rng.random() < 0.5:
        rows, cols = cols, rows
    cw, ch = size / cols, size / rows
    cells = rng.sample(range(rows * cols), n)
    placed = []
    for (shape, color), cell in zip(wanted, cells):
        r_max = min(cw, ch) / 2 - GAP * scale / 2 - 0.5 * scale
        if r_max < MIN_RADIUS * scale * 0.99:
            raise PlacementError(f"{n} objects do not fit a {size}x{size} image")
        r = min(CANONICAL_RADIUS[shape] * scale if canonical else _sample_radius(shape, rng, scale, 0.8), r_max)
        x0, y0 = (cell % cols) * cw, (cell // cols) * ch
        slack = min(cw, ch) / 2 - GAP * scale / 2 - r
        cx = x0 + cw / 2 + rng.uniform(-1, 1) * max(slack, 0.0) * 0.9
        cy = y0 + ch / 2 + rng.uniform(-1, 1) * max(slack, 0.0) * 0.9
        rot = rng.uniform(0.0, 360.0) if shape != "circle" and not canonical else 0.0
        placed.append(ShapeObject(shape, color, cx, cy, r, rot))
    return placed


def objects_for_metadata(
    metadata: dict[str, Any], rng: random.Random | int | None = None, size: int = 32, canonical: bool = False
) -> list[ShapeObject]:
    """A scene that satisfies a GenEval-schema row over this world's classes: every include
    entry's count (exactly, so excludes hold too), colours where given (random otherwise), and at
    most one position relation (`position: [rel, target_index]`)."""
    rng = as_rng(rng)
    wanted: list[tuple[str, str]] = []
    first_index: list[int] = []
    relation = None
    for entry in metadata.get("include", []):
        cls = entry["class"]
        if cls not in CLASSES:
            raise ValueError(f"class '{cls}' is not in the shapes world ({', '.join(CLASSES)})")
        first_index.append(len(wanted))
        for _ in range(int(entry["count"])):
            color = entry.get("color") or rng.choice(list(COLORS))
            wanted.append((cls, color))
        if "position" in entry:
            rel, target = entry["position"]
            relation = (rel, first_index[-1], first_index[int(target)])
    for entry in metadata.get("exclude", []):
        have = sum(1 for c, _ in wanted if c == entry["class"])
        if have >= int(entry["count"]):
            raise ValueError(f"metadata is contradictory: include has {have} {entry['class']}, exclude {entry['count']}")
    return _place(wanted, rng, size, relation, canonical=canonical)
