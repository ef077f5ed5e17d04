"""The `shapes` detector on images it was not built for (issue 15, item 13): scenes from GenEval
rows drawn by an independent renderer (`tests/independent_renderer.py`: PIL drawing, Lanczos or
box anti-aliasing, any rotation, +-20 colour jitter, 8-24 px objects, 32 and 64 px images),
judged through the suite's own path (`GenEvalMetric`). Per tag, at least 0.95 of the correct
images must be judged right and at most 0.05 of the wrong ones."""

from __future__ import annotations

import ast
import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from maskgrpo.metrics.geneval import GenEvalMetric
from maskgrpo.worlds.shapes.detector import ShapesDetector
from maskgrpo.worlds.shapes.prompts import make_metadata
from maskgrpo.worlds.shapes.vocabulary import CLASSES, COLORS, TAGS

from .independent_renderer import FILTERS, draw, draw_row, scene_for_row, single_object, wrong_kinds

torch.set_num_threads(1)
HERE = Path(__file__).resolve().parent
SUITE = HERE.parent / "maskgrpo" / "suites" / "shapes" / "metadata.jsonl"
SIZES = (32, 64)
ROWS_PER_TAG = 20  # x 2 sizes: 40 correct and 40 wrong images per tag
MIN_RIGHT, MAX_WRONG = 0.95, 0.05


def rows_for(tag: str) -> list[dict[str, Any]]:
    """The suite's rows of `tag`, then seeded random rows of the same schema."""
    rows = [r for r in (json.loads(line) for line in SUITE.read_text().splitlines()) if r["tag"] == tag]
    rng = random.Random(f"independent:{tag}")
    while len(rows) < ROWS_PER_TAG:
        rows.append(make_metadata(tag, rng))
    return rows[:ROWS_PER_TAG]


def judged() -> dict[tuple[str, bool], list[dict[str, Any]]]:
    """{(tag, drawn correctly): the metric's records}, each record with the wrong kind and size."""
    images, metadata, info = [], [], []
    for tag in TAGS:
        for i, row in enumerate(rows_for(tag)):
            for size in SIZES:
                kind = wrong_kinds(row)[(i + size // 32) % len(wrong_kinds(row))]
                for wrong in (None, kind):
                    images.append(draw_row(row, size, seed=i, wrong=wrong))
                    metadata.append(row)
                    info.append((tag, wrong, size))
    records = GenEvalMetric(detector="shapes").evaluate(images, metadata)
    out: dict[tuple[str, bool], list[dict[str, Any]]] = defaultdict(list)
    for rec, (tag, wrong, size) in zip(records, info):
        out[(tag, wrong is None)].append({**rec, "wrong": wrong, "size": size})
    return out


@pytest.fixture(scope="module")
def records() -> dict[tuple[str, bool], list[dict[str, Any]]]:
    return judged()


def summary(records: dict[tuple[str, bool], list[dict[str, Any]]]) -> dict[str, tuple[float, float]]:
    """{tag: (fraction of correct images judged right, fraction of wrong images judged right)}."""
    return {tag: tuple(float(np.mean([r["correct"] for r in records[(tag, ok)]])) for ok in (True, False)) for tag in TAGS}  # type: ignore[misc]


@pytest.mark.parametrize("tag", TAGS)
def test_correct_images_are_judged_right(records, tag):
    recs = records[(tag, True)]
    misses = [(r["prompt"], r["size"], r["reason"]) for r in recs if not r["correct"]]
    assert len(recs) == 2 * ROWS_PER_TAG
    assert 1 - len(misses) / len(recs) >= MIN_RIGHT, (tag, summary(records), misses[:8])


@pytest.mark.parametrize("tag", TAGS)
def test_wrong_images_are_judged_wrong(records, tag):
    recs = records[(tag, False)]
    passed = [(r["prompt"], r["size"], r["wrong"], r["detections"]) for r in recs if r["correct"]]
    assert len(recs) == 2 * ROWS_PER_TAG
    assert len(passed) / len(recs) <= MAX_WRONG, (tag, summary(records), passed[:8])


@pytest.mark.parametrize("resample", FILTERS, ids=lambda f: f.name.lower())
def test_single_objects_through_every_filter(resample):
    """Each class in each colour, jittered, turned, 8-24 px, 32 and 64 px images, downscaled by
    each of PIL's filters: exactly one object, of the right class and colour, confident."""
    det, rng, misses = ShapesDetector(), random.Random(f"single:{resample.name}"), []
    for cls in CLASSES:
        for color in COLORS:
            for size in SIZES * 3:
                it = single_object(cls, color, size, rng)
                got = [(d.label, d.color, d.score) for d in det.detect(draw([it], size, resample))]
                if got != [(cls, color, 1.0)]:
                    misses.append((cls, color, it.rgb, size, round(it.extent, 1), round(it.angle), got))
    assert len(misses) <= 1, misses  # of 180


def test_wrong_images_cover_every_kind(records):
    kinds = {(tag, r["wrong"]) for (tag, ok), recs in records.items() if not ok for r in recs}
    for tag in TAGS:
        row = rows_for(tag)[0]
        assert {k for t, k in kinds if t == tag} == set(wrong_kinds(row)), tag


def test_renderer_is_seeded_and_independent():
    row = rows_for("color_attr")[0]
    a, b = draw_row(row, 32, seed=3), draw_row(row, 32, seed=3)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(draw_row(row, 32, seed=4)))
    # objects of the promised sizes, inside the image, jittered colours
    items = scene_for_row(rows_for("counting")[0], 64, random.Random(0))
    assert all(8.0 <= it.extent <= 24.0 and 0 <= it.bbox()[0] and it.bbox()[2] <= 64 for it in items)
    # different drawing code: the renderer imports nothing of the world but its vocabulary
    tree = ast.parse((HERE / "independent_renderer.py").read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert {m for m in modules if m and m.startswith("maskgrpo")} == {"maskgrpo.worlds.shapes.vocabulary"}
