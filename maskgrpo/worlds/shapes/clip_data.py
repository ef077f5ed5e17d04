"""The training data of the shapes world's CLIP (`maskgrpo train-clip`, `maskgrpo/clip_train.py`):
image-caption pairs of random scenes over the six GenEval tags, their hard negatives, and the
held-out evaluation scenes.

For each scene one *wrong variant* (`wrong_metadata`: wrong count, colour, side or class) joins
the batch as its own image-caption pair. By default the variant is a minimal pair
(`minimal_wrong`: the same scene recoloured, with one object's class changed or one object
removed, or mirrored for a reversed relation); `make_wrong`'s fresh scenes (`wrong_variant`) are
an option, and are what the held-out set (`eval_set`) uses.
"""

from __future__ import annotations

import copy
import random
from typing import Any

from PIL import Image

from .placement import PlacementError, objects_for_metadata
from .prompts import make_example, wrong_kinds, wrong_metadata
from .scene import render
from .vocabulary import NUMBERS, PLURALS, TAGS, article


def caption_for(row: dict[str, Any]) -> str:
    """The GenEval-style prompt of a metadata row (the phrasing of `make_metadata`), also for the
    rows `wrong_metadata` makes, whose `prompt` field still names the original scene. A row with
    nothing left to include (a single object's `count` variant: an empty scene) is "a photo of"."""
    include = row["include"]

    def phrase(entry: dict[str, Any]) -> str:
        cls, n, color = entry["class"], int(entry["count"]), entry.get("color")
        if row.get("tag") == "counting":
            return f"{NUMBERS[n]} {cls if n == 1 else PLURALS[cls]}"
        if n != 1:
            return f"{NUMBERS[n]} {' '.join(filter(None, [color, PLURALS[cls]]))}"
        words = " ".join(filter(None, [color, cls]))
        return f"{article(words)} {words}"

    related = [e for e in include if "position" in e]
    if related:
        rel, target = related[0]["position"]
        return f"a photo of {phrase(related[0])} {rel} {phrase(include[int(target)])}"
    return ("a photo of " + " and ".join(phrase(e) for e in include)).strip()  # "a photo of": an empty scene


def make_pair(rng: random.Random, size: int, tag_weights: dict[str, float] | None = None) -> tuple[dict[str, Any], list[Any]]:
    """(metadata, objects) of a random prompt over the six GenEval tags, drawn with `tag_weights`
    (default uniform); crowded layouts that do not fit are redrawn."""
    weights = [(tag_weights or {}).get(t, 1.0) for t in TAGS]
    while True:
        try:
            return make_example(rng.choices(TAGS, weights)[0], rng, size)
        except PlacementError:
            continue


def wrong_variant(row: dict[str, Any], kind: str, rng: random.Random, size: int) -> tuple[str, list[Any]] | None:
    """(caption, objects) of a scene that violates `row` in the way `kind` names (as `make_wrong`
    makes it), or None when no such scene fits."""
    try:
        wrong = wrong_metadata(row, kind, rng)
        return caption_for(wrong), objects_for_metadata(wrong, rng, size)
    except (PlacementError, ValueError):
        return None


def minimal_wrong(row: dict[str, Any], objects: list[Any], kind: str, rng: random.Random, size: int) -> tuple[str, list[Any], str | None] | None:
    """A wrong variant that differs from the correct scene only where `kind` says: `color` and
    `class` recolour / replace the changed object in place (same centre and circumradius, so it
    still fits), `side` mirrors the whole scene across the relation's axis, `count` removes an
    object (or, for a counting row asking for one more, draws a new scene). The row comes from
    `wrong_metadata`, so captions are those of `make_wrong`. Returns (caption, objects, flip)
    with flip in (None, "x", "y"), or None when the variant cannot be made."""
    try:
        wrong = wrong_metadata(row, kind, rng)
    except ValueError:
        return None
    caption = caption_for(wrong)
    old, new = row["include"], wrong["include"]
    starts = [sum(int(e["count"]) for e in old[:i]) for i in range(len(old))]
    objs = [copy.copy(o) for o in objects]
    flip = None
    if kind in ("color", "class") and len(old) == len(new):
        changed = [i for i, (a, b) in enumerate(zip(old, new)) if a.get(kind) != b.get(kind)]
        if len(changed) != 1:
            return None
        i = changed[0]
        for o in objs[starts[i] : starts[i] + int(old[i]["count"])]:
            if kind == "color":
                o.color = new[i]["color"]
            else:
                o.shape = new[i]["class"]
                o.rotation = 0.0 if o.shape == "circle" else rng.uniform(0.0, 360.0)
    elif kind == "side":
        rel = next(e["position"][0] for e in old if "position" in e)
        flip = "x" if rel in ("left of", "right of") else "y"
    elif kind == "count" and row["tag"] == "counting":
        n_old, n_new = int(old[0]["count"]), int(new[0]["count"])
        if n_new == n_old - 1:
            objs.pop(rng.randrange(len(objs)))
        else:
            try:
                objs = objects_for_metadata(wrong, rng, size)
            except (PlacementError, ValueError):
                return None
    elif kind == "count":
        kept = {e["class"] for e in new}
        gone = [i for i, e in enumerate(old) if e["class"] not in kept]
        if len(gone) != 1:
            return None
        i = gone[0]
        del objs[starts[i] : starts[i] + int(old[i]["count"])]
    else:
        return None
    return caption, objs, flip


def render_variant(objects: list[Any], size: int, seed: int, flip: str | None = None) -> Any:
    image = render(objects, size=size, seed=seed)
    if flip == "x":
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if flip == "y":
        return image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return image


def training_batch(
    rng: random.Random,
    n: int,
    size: int,
    hard_negatives: str,
    kind_weights: dict[str, float] | None = None,
    tag_weights: dict[str, float] | None = None,
) -> tuple[list[Any], list[str]]:
    """Images and their captions: n correct scenes, then one wrong variant of each (an applicable
    kind drawn with `kind_weights`, default uniform): `minimal` (`minimal_wrong`: the same scene
    with one thing changed), `make_wrong` (a new scene of the wrong row) or `none`."""
    images, captions = [], []
    scenes = []
    for _ in range(n):
        row, objects = make_pair(rng, size, tag_weights)
        scenes.append((row, objects))
        images.append(render(objects, size=size, seed=rng.randrange(2**31)))
        captions.append(row["prompt"])
    if hard_negatives == "none":
        return images, captions
    for row, objects in scenes:
        kinds = wrong_kinds(row)
        weights = [(kind_weights or {}).get(k, 1.0) for k in kinds]
        if sum(weights) <= 0:
            continue
        kind = rng.choices(kinds, weights)[0]
        if hard_negatives == "minimal":
            variant = minimal_wrong(row, objects, kind, rng, size)
            if variant is None:
                continue
            caption, objs, flip = variant
        else:
            made = wrong_variant(row, kind, rng, size)
            if made is None:
                continue
            (caption, objs), flip = made, None
        captions.append(caption)
        images.append(render_variant(objs, size, rng.randrange(2**31), flip))
    return images, captions


def eval_set(n: int, size: int, seed: int) -> list[dict[str, Any]]:
    """Held-out scenes, each with a wrong variant for every applicable kind."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        row, objects = make_pair(rng, size)
        item = {"tag": row["tag"], "caption": row["prompt"], "image": render(objects, size=size, seed=rng.randrange(2**31)), "wrong": {}}
        for kind in wrong_kinds(row):
            variant = wrong_variant(row, kind, rng, size)
            if variant is not None:
                item["wrong"][kind] = (variant[0], render(variant[1], size=size, seed=rng.randrange(2**31)))
        items.append(item)
    return items
