"""The shapes world's prompts: GenEval-schema rows, correct and wrong scenes, the suite.

`make_example(tag, rng, size)` draws a prompt, its GenEval-schema metadata
(`{tag, include: [{class, count, color?, position?}], exclude?, prompt}`) and a scene that
satisfies it, for GenEval's six tags. `make_wrong` makes a scene that violates a row in a chosen
way (count, colour, side, class), which is how the detector and the rules are tested.
`suite_metadata` / `write_suite_metadata` make the `shapes` suite's rows and
`write_geneval_folder` renders rows into GenEval's folder layout.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

from PIL import Image

from ...utils import atomic_write_text
from .placement import PlacementError, as_rng, objects_for_metadata
from .scene import ShapeObject, render
from .vocabulary import CLASSES, COLORS, NUMBERS, OPPOSITE, PLURALS, RELATIONS, TAGS, WRONG_KINDS, article


def _colors_except(rng: random.Random, exclude: set[str], k: int = 1) -> list[str]:
    pool = [c for c in COLORS if c not in exclude]
    return rng.sample(pool, k)


def make_metadata(tag: str, rng: random.Random | int | None = None) -> dict[str, Any]:
    """A random GenEval-schema row (prompt in GenEval's phrasing) for `tag` over this world."""
    rng = as_rng(rng)
    if tag == "single_object":
        a = rng.choice(CLASSES)
        return {"tag": tag, "include": [{"class": a, "count": 1}], "prompt": f"a photo of {article(a)} {a}"}
    if tag == "two_object":
        a, b = rng.sample(CLASSES, 2)
        return {
            "tag": tag,
            "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
            "prompt": f"a photo of {article(a)} {a} and {article(b)} {b}",
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
        return {"tag": tag, "include": [{"class": a, "count": 1, "color": c}], "prompt": f"a photo of {article(c)} {c} {a}"}
    if tag == "position":
        a, b = rng.sample(CLASSES, 2)  # "a photo of an A <rel> a B": A is placed relative to B
        rel = rng.choice(RELATIONS)
        return {
            "tag": tag,
            "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
            "prompt": f"a photo of {article(a)} {a} {rel} {article(b)} {b}",
        }
    if tag == "color_attr":
        a, b = rng.sample(CLASSES, 2)
        ca, cb = rng.sample(list(COLORS), 2)
        return {
            "tag": tag,
            "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
            "prompt": f"a photo of {article(ca)} {ca} {a} and {article(cb)} {cb} {b}",
        }
    raise ValueError(f"unknown tag '{tag}' (known: {', '.join(TAGS)})")


def make_example(
    tag: str, rng: random.Random | int | None = None, size: int = 32, canonical: bool = False
) -> tuple[dict[str, Any], list[ShapeObject]]:
    """(metadata row, objects of a scene that satisfies it) for one of GenEval's six tags."""
    rng = as_rng(rng)
    metadata = make_metadata(tag, rng)
    return metadata, objects_for_metadata(metadata, rng, size, canonical)


def sample_scene(
    rng: random.Random,
    tags: list[str] | tuple[str, ...] = TAGS,
    size: int = 32,
    canonical: bool = False,
    weights: list[float] | None = None,
) -> tuple[dict[str, Any], Image.Image]:
    """A random prompt from `tags` (uniform, or in proportion to `weights`) with a correct render.
    A crowded layout that does not fit (PlacementError) is redrawn with another prompt.
    `canonical`: upright, one-size-per-class shapes on the token grid (what the small policy is
    taught; any correct scene still scores 1)."""
    while True:
        tag = rng.choice(tags) if weights is None else rng.choices(tags, weights)[0]
        try:
            metadata, objects = make_example(tag, rng, size, canonical)
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
    rng = as_rng(rng)
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
    rng = as_rng(rng)
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


def trained_color_rows(suite_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every `colors` prompt that `hold_out: true` leaves in training (the 30 of the world minus
    the suite's): the `shapes-colors-trained` suite. Scored beside the suite's held-out colors
    tag, it tells memorised (colour, class) pairs from colour words that generalise (issue 16)."""
    held = {r["prompt"] for r in suite_rows if r["tag"] == "colors"}
    rows = []
    for a in CLASSES:
        for c in COLORS:
            prompt = f"a photo of {article(c)} {c} {a}"
            if prompt not in held:
                rows.append({"tag": "colors", "include": [{"class": a, "count": 1, "color": c}], "prompt": prompt})
    return rows


def write_suite_metadata(path: str | Path, n_per_tag: int = 10, seed: int = 0) -> list[dict[str, Any]]:
    """Write `suite_metadata(n_per_tag, seed)` as JSON lines (GenEval's file format)."""
    rows = suite_metadata(n_per_tag, seed)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


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
    from ...eval.outputs import save_geneval_folder

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
