"""An independent renderer for testing the `shapes` detector on images it was not built for.

Its drawing code shares nothing with the world's renderer (`maskgrpo.worlds.shapes.scene`): shapes
are drawn with PIL's ImageDraw (ellipse, polygon) at 4x supersampling and downscaled with
Lanczos (or any PIL filter), so edges are anti-aliased by a different kernel (Lanczos rings);
squares and triangles are turned by any angle, every object's colour is jittered by up to +-20
per channel, objects are 8-24 px across (circle diameter, square or triangle side) in 32 or 64 px
images. Scenes come from GenEval metadata rows, drawn either correctly or wrong on purpose
(`wrong_kinds`). Only the palette and the background grey are taken from the world: they are
what "red" and "the background" mean. Seeded and deterministic.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from maskgrpo.worlds.shapes.vocabulary import BACKGROUND, CLASSES, COLORS

SUPERSAMPLE = 4
JITTER = 20
MIN_SIZE, MAX_SIZE = 8.0, 24.0  # object extent in px: circle diameter, square / triangle side
GAP = 2.5  # px between the circumcircles of two objects
MARGIN = 0.65  # a placed relation holds by this much (GenEval's rule needs 0.5)
DIRECTIONS = {"left of": (-1.0, 0.0), "right of": (1.0, 0.0), "above": (0.0, -1.0), "below": (0.0, 1.0)}
# PIL's downscaling filters; scenes use Lanczos, the sharpest (its edges ring: overshoot inside,
# undershoot outside), and `draw` takes any of them
FILTERS = (Image.Resampling.LANCZOS, Image.Resampling.BICUBIC, Image.Resampling.BOX, Image.Resampling.HAMMING, Image.Resampling.BILINEAR)


@dataclass
class Item:
    """One drawn object: class, colour name, drawn RGB, centre, extent (px) and turn (degrees)."""

    cls: str
    color: str
    rgb: tuple[int, int, int]
    cx: float = 0.0
    cy: float = 0.0
    extent: float = MIN_SIZE
    angle: float = 0.0

    @property
    def reach(self) -> float:
        """Circumradius: how far the object reaches from its centre."""
        return self.extent / {"circle": 2.0, "square": math.sqrt(2.0), "triangle": math.sqrt(3.0)}[self.cls]

    def outline(self) -> list[tuple[float, float]]:
        """Polygon corners (squares, triangles) in continuous pixel coordinates."""
        n = 4 if self.cls == "square" else 3
        base = math.radians(self.angle) + (math.pi / 4 if n == 4 else -math.pi / 2)
        return [(self.cx + self.reach * math.cos(base + 2 * math.pi * k / n), self.cy + self.reach * math.sin(base + 2 * math.pi * k / n)) for k in range(n)]

    def bbox(self) -> tuple[float, float, float, float]:
        if self.cls == "circle":
            r = self.reach
            return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)
        xs, ys = zip(*self.outline())
        return (min(xs), min(ys), max(xs), max(ys))


def relation_value(a: Item, b: Item, rel: str) -> float:
    """GenEval's position value of `a` relative to `b` (holds above 0.5), written out afresh."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a.bbox(), b.bbox()
    off = ((ax0 + ax1 - bx0 - bx1) / 2, (ay0 + ay1 - by0 - by1) / 2)
    dims = (ax1 - ax0 + bx1 - bx0, ay1 - ay0 + by1 - by0)
    norm = math.hypot(*off)
    if norm == 0:
        return 0.0
    shrunk = [math.copysign(max(abs(o) - 0.1 * d, 0.0), o) for o, d in zip(off, dims)]
    ux, uy = DIRECTIONS[rel]
    return (shrunk[0] * ux + shrunk[1] * uy) / norm


def _jittered(name: str, rng: random.Random) -> tuple[int, int, int]:
    return tuple(min(255, max(0, v + rng.randint(-JITTER, JITTER))) for v in COLORS[name])  # type: ignore[return-value]


def _place(items: list[Item], size: int, rng: random.Random, relation: tuple[int, str, int] | None) -> list[Item]:
    """Sizes and positions: inside the image, apart, and `relation` (a, rel, b) holding by MARGIN.
    The largest allowed extent shrinks until the scene fits."""
    top = MAX_SIZE
    while True:
        for _ in range(30):
            for it in items:
                it.extent = rng.uniform(MIN_SIZE, max(MIN_SIZE, top))
                it.angle = rng.uniform(0.0, 360.0) if it.cls != "circle" else 0.0
            if _try_positions(items, size, rng, relation) or (not relation and _try_grid(items, size, rng)):
                return items
        if top <= MIN_SIZE:
            raise RuntimeError(f"{len(items)} objects do not fit in {size} px")
        top = max(MIN_SIZE, top * 0.9)


def _try_positions(items: list[Item], size: int, rng: random.Random, relation: tuple[int, str, int] | None) -> bool:
    order = list(range(len(items)))
    if relation:  # the target first, then the object placed relative to it
        a, _, b = relation
        order = [b, a] + [i for i in order if i not in (a, b)]
    placed: list[Item] = []
    for i in order:
        it = items[i]
        lo, hi = it.reach + 1.0, size - it.reach - 1.0
        if hi < lo:
            return False
        for _ in range(40):  # a few spots for this object before the whole scene is redrawn
            if relation and i == relation[0]:
                ux, uy = DIRECTIONS[relation[1]]
                tgt = items[relation[2]]
                d = it.reach + tgt.reach + GAP + rng.uniform(0.0, size / 4)
                p = rng.uniform(-0.25, 0.25) * d
                it.cx, it.cy = tgt.cx + ux * d - uy * p, tgt.cy + uy * d + ux * p
            else:
                it.cx, it.cy = rng.uniform(lo, hi), rng.uniform(lo, hi)
            inside = lo <= it.cx <= hi and lo <= it.cy <= hi
            if inside and all(math.hypot(it.cx - o.cx, it.cy - o.cy) >= it.reach + o.reach + GAP for o in placed):
                break
        else:
            return False
        placed.append(it)
    return not relation or relation_value(items[relation[0]], items[relation[2]], relation[1]) >= MARGIN


def _try_grid(items: list[Item], size: int, rng: random.Random) -> bool:
    """Crowded scenes: one object per cell of a k x k grid, anywhere inside its cell."""
    k = math.ceil(math.sqrt(len(items)))
    cell = size / k
    for it, c in zip(items, rng.sample(range(k * k), len(items))):
        room = cell - 2 * it.reach - GAP
        if room < 0:
            return False
        it.cx = (c % k) * cell + GAP / 2 + it.reach + rng.uniform(0, room)
        it.cy = (c // k) * cell + GAP / 2 + it.reach + rng.uniform(0, room)
    return True


def draw(items: list[Item], size: int, resample: Image.Resampling = Image.Resampling.LANCZOS) -> Image.Image:
    """Draw `items` with PIL at SUPERSAMPLE x and downscale with `resample` (anti-aliasing)."""
    s = SUPERSAMPLE
    big = Image.new("RGB", (size * s, size * s), BACKGROUND)
    pen = ImageDraw.Draw(big)
    to_px = lambda v: v * s - 0.5  # noqa: E731  continuous coordinate -> PIL pixel-centre coordinate
    for it in items:
        if it.cls == "circle":
            r = it.reach
            pen.ellipse([to_px(it.cx - r), to_px(it.cy - r), to_px(it.cx + r), to_px(it.cy + r)], fill=it.rgb)
        else:
            pen.polygon([(to_px(x), to_px(y)) for x, y in it.outline()], fill=it.rgb)
    return big.resize((size, size), resample)


def wrong_kinds(row: dict[str, Any]) -> list[str]:
    """How a scene can violate `row`: class, missing (or count for counting), color, relation."""
    include = row["include"]
    kinds = ["class", "count" if row.get("tag") == "counting" else "missing"]
    if any("color" in e for e in include):
        kinds.append("color")
    if any("position" in e for e in include):
        kinds.append("relation")
    return kinds


def scene_for_row(row: dict[str, Any], size: int, rng: random.Random, wrong: str | None = None) -> list[Item]:
    """Objects of a scene that satisfies `row`, or violates it in the way `wrong` names."""
    wanted: list[list[Item]] = []  # per include entry
    for e in row["include"]:
        wanted.append([Item(e["class"], e.get("color") or rng.choice(list(COLORS)), (0, 0, 0)) for _ in range(int(e["count"]))])
    relation = None
    for i, e in enumerate(row["include"]):
        if "position" in e:
            rel, target = e["position"]
            relation = (i, rel, int(target))
    used = {e["class"] for e in row["include"]}
    if wrong == "class":
        i = rng.randrange(len(wanted))
        spare = [c for c in CLASSES if c not in used]
        wanted[i][rng.randrange(len(wanted[i]))].cls = rng.choice(spare)
    elif wrong == "count":
        n = len(wanted[0])
        n = n - 1 if n >= 4 or (size <= 32 and n >= 3) or rng.random() < 0.5 else n + 1
        wanted[0] = [Item(wanted[0][0].cls, rng.choice(list(COLORS)), (0, 0, 0)) for _ in range(n)]
    elif wrong == "missing":
        wanted.pop(rng.randrange(len(wanted)))
        relation = None
    elif wrong == "color":
        named = [i for i, e in enumerate(row["include"]) if "color" in e]
        colors = [row["include"][i]["color"] for i in named]
        if len(named) == 2 and rng.random() < 0.5:  # swapped colours
            for i, c in zip(named, colors[::-1]):
                wanted[i][0].color = c
        else:
            i = rng.choice(named)
            wanted[i][0].color = rng.choice([c for c in COLORS if c not in colors])
    elif wrong == "relation":
        a, rel, b = relation  # type: ignore[misc]
        relation = (a, rng.choice([r for r in DIRECTIONS if r != rel]), b)
    elif wrong is not None:
        raise ValueError(f"unknown wrong kind '{wrong}'")
    flat: list[Item] = []
    index: list[int] = []  # flat index of each entry's first object (relations use single objects)
    for group in wanted:
        index.append(len(flat))
        flat.extend(group)
    for it in flat:
        it.rgb = _jittered(it.color, rng)
    rel_flat = (index[relation[0]], relation[1], index[relation[2]]) if relation else None
    return _place(flat, size, rng, rel_flat)


def draw_row(
    row: dict[str, Any], size: int, seed: int, wrong: str | None = None, resample: Image.Resampling = Image.Resampling.LANCZOS
) -> Image.Image:
    """One seeded image for `row` (correct, or wrong in the way `wrong` names)."""
    rng = random.Random(f"{seed}:{size}:{row.get('prompt', '')}:{wrong}")
    return draw(scene_for_row(row, size, rng, wrong), size, resample)


def single_object(cls: str, color: str, size: int, rng: random.Random) -> Item:
    """One object of any extent (8-24 px, at most half a 32 px image), turn and jitter."""
    it = Item(cls, color, _jittered(color, rng), extent=rng.uniform(MIN_SIZE, min(MAX_SIZE, size / 2)))
    it.angle = rng.uniform(0.0, 360.0) if cls != "circle" else 0.0
    it.cx, it.cy = (rng.uniform(it.reach + 1.0, size - it.reach - 1.0) for _ in range(2))
    return it
