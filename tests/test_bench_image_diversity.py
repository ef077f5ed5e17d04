"""bench.image_diversity on a hand-made eval folder whose colours, layouts and distances are known."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.image_diversity import diversity, read_samples


def write_folder(path: Path, groups: list[tuple[str, list[tuple[tuple[int, int, int], list[dict]]]]]) -> Path:
    """An eval folder: per group (prompt, [(fill colour, detections)]), one 32 px image each."""
    lines = []
    for index, (prompt, images) in enumerate(groups):
        for sample, (fill, detections) in enumerate(images):
            file = f"{index:05d}/samples/{sample:04d}.png"
            (path / "images" / file).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), fill).save(path / "images" / file)
            lines.append(json.dumps({"index": index, "sample": sample, "prompt": prompt, "file": file, "detections": detections}))
    (path / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return path


def obj(label: str, colour: str, x: float, y: float) -> dict:
    return {"label": label, "color": colour, "box": [x - 3, y - 3, x + 3, y + 3]}


def test_counts_colours_layouts_and_distances(tmp_path: Path) -> None:
    grey, white = (128, 128, 128), (255, 255, 255)
    folder = write_folder(
        tmp_path,
        [
            # names no colour: two red circles top-left, one blue circle bottom-right
            ("a photo of a circle", [(grey, [obj("circle", "red", 5, 5)]), (grey, [obj("circle", "red", 6, 4)]), (white, [obj("circle", "blue", 28, 28)])]),
            # names a colour: left out of the colour measures, still counted for layout and distance
            ("a photo of a red square", [(grey, [obj("square", "red", 16, 16)])] * 3),
        ],
    )
    rows = read_samples(folder)
    assert rows[0]["image"].shape == (32, 32, 3) and rows[0]["image"].max() <= 1.0
    d = diversity(rows)
    assert d["groups"] == 2 and d["images/group"] == 3
    assert d["objects/group"] == 3 and d["colours/group"] == 2  # only the colour-free group
    assert d["top colour share"] == pytest.approx(2 / 3)
    assert d["layouts/group"] == pytest.approx((2 + 1) / 2)  # same class and cell: one layout
    grey_white = math.sqrt(((255 - 128) / 255) ** 2)  # RMS over pixels and channels
    # group 0: pairs (grey, grey) 0, (grey, white) twice; group 1: three identical pairs
    assert d["pixel distance"] == pytest.approx(2 * grey_white / 6, rel=1e-4)


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="samples.jsonl: not found"):
        read_samples(tmp_path / "nowhere")
    assert np.isnan(diversity([])["pixel distance"])
