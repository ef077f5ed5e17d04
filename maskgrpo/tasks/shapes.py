"""The small image world: flat-colour shapes on a grey background, with GenEval-style prompts.

A scene is a list of `ShapeObject`s (shape, colour, centre, circumradius, rotation) rendered with
exact area anti-aliasing (each pixel's coverage is measured on a supersampled grid), so the
`shapes` detector (`maskgrpo.metrics.detectors.shapes`) can recover every object exactly.

`make_example(tag, rng, size)` draws a prompt, its GenEval-schema metadata
(`{tag, include: [{class, count, color?, position?}], exclude?, prompt}`) and a scene that
satisfies it, for GenEval's six tags. `objects_for_metadata` builds a correct scene for any such
row, and `make_wrong` a scene that violates it in a chosen way (count, colour, side, class), which
is how the detector and the rules are tested. Lengths are in pixels of a 32 x 32 image and scale
with `size`.
"""

from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..utils import atomic_write_text

# Canonical sRGB values of GenEval's ten colour names, and the background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
    "pink": (245, 150, 190),
    "brown": (130, 80, 40),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
}
BACKGROUND: tuple[int, int, int] = (160, 160, 160)
CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles"}
TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
OPPOSITE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
NUMBERS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
WRONG_KINDS: tuple[str, ...] = ("count", "color", "side", "class")

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
def relations_of(box_a: tuple[float, ...], box_b: tuple[float, ...], threshold: float = 0.1) -> dict[str, float]:
    """Normalised, size-shrunk offset of A relative to B in each direction (GenEval: a relation
    holds when its value exceeds 0.5)."""
    a, b = np.asarray(box_a, dtype=float), np.asarray(box_b, dtype=float)
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    dims = (a[2:] - a[:2]) + (b[2:] - b[:2])
    norm = float(np.linalg.norm(offset))
    if norm == 0:
        return {r: 0.0 for r in RELATIONS}
    revised = np.maximum(np.abs(offset) - threshold * dims, 0) * np.sign(offset) / norm
    return {"left of": -revised[0], "right of": revised[0], "above": -revised[1], "below": revised[1]}


# -- scene generation -------------------------------------------------------------------------------
def _rng(rng: random.Random | int | None) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    return random.Random(rng)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


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
                    if relations_of(obj_a.box(), obj_b.box())[rel] < POSITION_MARGIN:
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


def _colors_except(rng: random.Random, exclude: set[str], k: int = 1) -> list[str]:
    pool = [c for c in COLORS if c not in exclude]
    return rng.sample(pool, k)


def objects_for_metadata(
    metadata: dict[str, Any], rng: random.Random | int | None = None, size: int = 32, canonical: bool = False
) -> list[ShapeObject]:
    """A scene that satisfies a GenEval-schema row over this world's classes: every include
    entry's count (exactly, so excludes hold too), colours where given (random otherwise), and at
    most one position relation (`position: [rel, target_index]`)."""
    rng = _rng(rng)
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


def make_metadata(tag: str, rng: random.Random | int | None = None) -> dict[str, Any]:
    """A random GenEval-schema row (prompt in GenEval's phrasing) for `tag` over this world."""
    rng = _rng(rng)
    if tag == "single_object":
        a = rng.choice(CLASSES)
        return {"tag": tag, "include": [{"class": a, "count": 1}], "prompt": f"a photo of {_article(a)} {a}"}
    if tag == "two_object":
        a, b = rng.sample(CLASSES, 2)
        return {
            "tag": tag,
            "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
            "prompt": f"a photo of {_article(a)} {a} and {_article(b)} {b}",
        }
    if tag == "counting":
        a, n = rng.choice(CLASSES), rng.choice([2, 3, 4])
        return {
            "tag": tag,
            "include": [{"class": a, "count": n}],
            "exclude": [{"class": a, "count": n + 1}],
            "prompt": f"a photo of {NUMBERS[n]} {PLURALS[a]}",
        }
    if tag == "colors":
        a, c = rng.choice(CLASSES), rng.choice(list(COLORS))
        return {"tag": tag, "include": [{"class": a, "count": 1, "color": c}], "prompt": f"a photo of {_article(c)} {c} {a}"}
    if tag == "position":
        a, b = rng.sample(CLASSES, 2)  # "a photo of an A <rel> a B": A is placed relative to B
        rel = rng.choice(RELATIONS)
        return {
            "tag": tag,
            "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
            "prompt": f"a photo of {_article(a)} {a} {rel} {_article(b)} {b}",
        }
    if tag == "color_attr":
        a, b = rng.sample(CLASSES, 2)
        ca, cb = rng.sample(list(COLORS), 2)
        return {
            "tag": tag,
            "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
            "prompt": f"a photo of {_article(ca)} {ca} {a} and {_article(cb)} {cb} {b}",
        }
    raise ValueError(f"unknown tag '{tag}' (known: {', '.join(TAGS)})")


def make_example(
    tag: str, rng: random.Random | int | None = None, size: int = 32, canonical: bool = False
) -> tuple[dict[str, Any], list[ShapeObject]]:
    """(metadata row, objects of a scene that satisfies it) for one of GenEval's six tags."""
    rng = _rng(rng)
    metadata = make_metadata(tag, rng)
    return metadata, objects_for_metadata(metadata, rng, size, canonical)


def sample_scene(
    rng: random.Random, tags: list[str] | tuple[str, ...] = TAGS, size: int = 32, canonical: bool = False
) -> tuple[dict[str, Any], Image.Image]:
    """A random prompt from `tags` with a correct render. A crowded layout that does not fit
    (PlacementError) is redrawn with another prompt. `canonical`: upright, one-size-per-class shapes
    on the token grid (what the small policy is taught; any correct scene still scores 1)."""
    while True:
        try:
            metadata, objects = make_example(rng.choice(tags), rng, size, canonical)
            break
        except PlacementError:
            continue
    return metadata, render(objects, size=size, seed=rng.randrange(2**31))


def wrong_kinds(metadata: dict[str, Any]) -> list[str]:
    """The ways `make_wrong` can violate this row."""
    kinds = ["count", "class"]
    if any("color" in e for e in metadata.get("include", [])):
        kinds.append("color")
    if any("position" in e for e in metadata.get("include", [])):
        kinds.append("side")
    return kinds


def wrong_metadata(metadata: dict[str, Any], kind: str, rng: random.Random | int | None = None) -> dict[str, Any]:
    """A row describing a scene that must FAIL `metadata`: `count` (the counting tag: one more
    or one fewer object; otherwise one required object missing), `color` (a required colour
    changed), `side` (the position relation reversed), `class` (a required object replaced by one
    of a class the row does not ask for)."""
    rng = _rng(rng)
    row = copy.deepcopy(metadata)
    include = row["include"]
    row.pop("exclude", None)
    if kind == "count":
        if row["tag"] == "counting":
            n = include[0]["count"]
            include[0]["count"] = n - 1 if n >= 4 or rng.random() < 0.5 else n + 1
        else:
            idx = [i for i, e in enumerate(include) if not any(f.get("position", [None, -1])[1] == i for f in include)]
            i = rng.choice(idx) if idx else 0
            include[i]["count"] -= 1
            if include[i]["count"] == 0:
                include.pop(i)
                for e in include:
                    e.pop("position", None)
    elif kind == "color":
        idx = [i for i, e in enumerate(include) if "color" in e]
        if not idx:
            raise ValueError(f"tag '{row['tag']}': no colour to get wrong")
        i = rng.choice(idx)
        used = {e["color"] for e in include if "color" in e}
        include[i]["color"] = _colors_except(rng, used)[0]
    elif kind == "side":
        idx = [i for i, e in enumerate(include) if "position" in e]
        if not idx:
            raise ValueError(f"tag '{row['tag']}': no position to get wrong")
        rel, target = include[idx[0]]["position"]
        include[idx[0]]["position"] = [OPPOSITE[rel], target]
    elif kind == "class":
        used = {e["class"] for e in include}
        spare = [c for c in CLASSES if c not in used]
        if not spare:
            raise ValueError("no spare class to substitute")
        i = rng.randrange(len(include))
        include[i]["class"] = rng.choice(spare)
    else:
        raise ValueError(f"unknown wrong kind '{kind}' (known: {', '.join(WRONG_KINDS)})")
    return row


def make_wrong(metadata: dict[str, Any], kind: str, rng: random.Random | int | None = None, size: int = 32) -> list[ShapeObject]:
    """Objects of a scene that violates `metadata` in the way `kind` names (see `wrong_metadata`)."""
    rng = _rng(rng)
    return objects_for_metadata(wrong_metadata(metadata, kind, rng), rng, size)


# -- evaluation suite -------------------------------------------------------------------------------
def suite_metadata(n_per_tag: int = 10, seed: int = 0) -> list[dict[str, Any]]:
    """`n_per_tag` rows for each tag, distinct prompts first (repeats only once a tag's prompt
    space is exhausted), seeded."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for tag in TAGS:
        seen: set[str] = set()
        tag_rows: list[dict[str, Any]] = []
        tries = 0
        while len(tag_rows) < n_per_tag:
            row = make_metadata(tag, rng)
            tries += 1
            if row["prompt"] in seen and tries < 200 * n_per_tag:
                continue
            seen.add(row["prompt"])
            tag_rows.append(row)
        rows.extend(tag_rows)
    return rows


def write_suite_metadata(path: str | Path, n_per_tag: int = 10, seed: int = 0) -> list[dict[str, Any]]:
    """Write `suite_metadata(n_per_tag, seed)` as JSON lines (GenEval's file format)."""
    rows = suite_metadata(n_per_tag, seed)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def objects_to_dicts(objects: list[ShapeObject]) -> list[dict[str, Any]]:
    return [asdict(o) for o in objects]


def objects_from_dicts(rows: list[dict[str, Any]]) -> list[ShapeObject]:
    return [ShapeObject(**r) for r in rows]


def write_geneval_folder(
    path: str | Path,
    metadata_rows: list[dict[str, Any]],
    images_per_row: int = 4,
    seed: int = 0,
    size: int = 32,
    wrong: dict[tuple[int, int], str] | None = None,
) -> Path:
    """Render `images_per_row` scenes per metadata row into GenEval's folder layout
    (`<path>/<index:05d>/metadata.jsonl` + `<path>/<index:05d>/samples/<k:04d>.png`), which
    `maskgrpo eval shapes --outputs PATH` scores. Every scene satisfies its row, except
    those named in `wrong`: `{(row, image): kind}` renders that image with `make_wrong(row, kind)`
    (kind in WRONG_KINDS), so it must fail. Seeded; returns `path`."""
    from ..eval.outputs import save_geneval_folder

    rng = random.Random(seed)
    wrong = wrong or {}
    for (r, k), kind in wrong.items():
        if not (0 <= r < len(metadata_rows) and 0 <= k < images_per_row):
            raise ValueError(f"wrong: no image {k} of row {r} ({len(metadata_rows)} rows x {images_per_row} images)")
        if kind not in wrong_kinds(metadata_rows[r]):
            raise ValueError(f"wrong: kind '{kind}' does not apply to row {r} (tag {metadata_rows[r].get('tag')}; possible: {', '.join(wrong_kinds(metadata_rows[r]))})")
    images = []
    for r, row in enumerate(metadata_rows):
        row_images = []
        for k in range(images_per_row):
            kind = wrong.get((r, k))
            objects = make_wrong(row, kind, rng, size) if kind else objects_for_metadata(row, rng, size)
            row_images.append(render(objects, size, seed=rng.randrange(2**31)))
        images.append(row_images)
    return save_geneval_folder(path, metadata_rows, images)
