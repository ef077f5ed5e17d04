"""How varied are a policy's images for one prompt? The paper credits the emerge sampler with
more diverse rollouts than MaskGIT; issue 13 asks for that measured, and for the colour collapse
(prompts that name no colour settling on one or two colours) seen in issue 16.

Reads the folders `maskgrpo eval shapes --out DIR` writes (`samples.jsonl` with the detector's
objects, `images/`), so it scores runs already made and costs no sampling:

    python -m bench.image_diversity runs/em/eval-before runs/em/seed0/eval-after ...
    python -m bench.image_diversity --label "emerge s0" DIR --label "maskgit s0" DIR2 ...

Per folder, over the groups (a prompt's `samples_per_prompt` images, as a GRPO group would be):
- `objects/group`, `colours/group`: detected objects and their distinct colours, prompts that
  name no colour (more objects found allow more colours: read the two together);
- `top colour share`: the most frequent colour's share of those objects (1 / 10 when uniform);
- `layouts/group`: distinct layouts, a layout being the set of (class, 3x3 cell of its centre);
- `pixel distance`: mean RMS difference (0-1 RGB) between two images of a group, every tag.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .common import save, table

COLUMNS = ["run", "groups", "images/group", "objects/group", "colours/group", "top colour share", "layouts/group", "pixel distance"]
MAX_SAMPLES = 100_000  # rows read from one samples.jsonl: bounds the work a stray file can cause


def read_samples(folder: Path) -> list[dict[str, Any]]:
    """The rows of `folder/samples.jsonl`, each with an `image` array (H, W, 3) in [0, 1]."""
    path = folder / "samples.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path}: not found (a folder `maskgrpo eval shapes --out` wrote)")
    rows = []
    with path.open() as lines:
        for line in itertools.islice(lines, MAX_SAMPLES):
            if line.strip():
                row = json.loads(line)
                local = folder / "images" / row["file"]  # `--model` runs; `--outputs` ones point at theirs
                image = Image.open(local if local.is_file() else row["path"]).convert("RGB")
                row["image"] = np.asarray(image, dtype=np.float32) / 255.0
                rows.append(row)
    return rows


def names_no_colour(prompt: str) -> bool:
    from maskgrpo.worlds.shapes.vocabulary import COLORS

    return not any(word in COLORS for word in prompt.replace(",", " ").split())


def layout(row: dict[str, Any]) -> frozenset[tuple[str, int, int]]:
    """The image's objects as (class, column, row) of a 3x3 grid over the image."""
    height, width = row["image"].shape[:2]
    cells = set()
    for d in row["detections"]:
        x0, y0, x1, y1 = d["box"]
        cells.add((d["label"], min(int(3 * (x0 + x1) / 2 / width), 2), min(int(3 * (y0 + y1) / 2 / height), 2)))
    return frozenset(cells)


def diversity(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The four measures above over the groups of `rows` (grouped by suite index)."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["index"], []).append(row)
    colours_per_group, objects_per_group, layouts_per_group, distances = [], [], [], []
    colour_counts: Counter[str] = Counter()
    for group in groups.values():
        layouts_per_group.append(len({layout(r) for r in group}))
        for a, b in itertools.combinations(group, 2):
            if a["image"].shape == b["image"].shape:
                distances.append(float(np.sqrt(np.mean((a["image"] - b["image"]) ** 2))))
        if names_no_colour(group[0]["prompt"]):
            colours = [d["color"] for r in group for d in r["detections"]]
            colour_counts.update(colours)
            colours_per_group.append(len(set(colours)))
            objects_per_group.append(len(colours))
    total = sum(colour_counts.values())
    return {
        "groups": len(groups),
        "images/group": len(rows) / len(groups) if groups else float("nan"),
        "objects/group": float(np.mean(objects_per_group)) if objects_per_group else float("nan"),
        "colours/group": float(np.mean(colours_per_group)) if colours_per_group else float("nan"),
        "top colour share": colour_counts.most_common(1)[0][1] / total if total else float("nan"),
        "layouts/group": float(np.mean(layouts_per_group)) if layouts_per_group else float("nan"),
        "pixel distance": float(np.mean(distances)) if distances else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="eval folders (samples.jsonl + images/)")
    parser.add_argument("--label", action="append", default=[], help="a name per folder, in order (default: the path)")
    parser.add_argument("--name", default="image-diversity", help="results name (bench/results/NAME.json)")
    args = parser.parse_intermixed_args()
    if args.label and len(args.label) != len(args.folders):
        parser.error(f"--label: {len(args.label)} labels for {len(args.folders)} folders")
    results = []
    for i, folder in enumerate(args.folders):
        results.append({"run": args.label[i] if args.label else str(folder), **diversity(read_samples(folder))})
        print(table(results[-1:], COLUMNS), flush=True)
    print("\n" + table(results, COLUMNS))
    print(f"saved {save(args.name, {'folders': [str(f) for f in args.folders], 'results': results})}")


if __name__ == "__main__":
    main()
