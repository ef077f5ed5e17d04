"""The shapes world as a task: GenEval-style prompts with a correct render for SFT.

Training examples are a pure function of (seed, index). Evaluation uses the prompts of the
`shapes` suite (`evals/shapes/metadata.jsonl`). They are not held out from training: several
tags have tiny prompt spaces (three single-object prompts), and images are sampled, not recalled,
so the score measures generation, as GenEval's does.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..errors import MaskGRPOError
from ..registry import tasks
from .base import Example
from .shapes import TAGS, sample_scene

SUITE = Path(__file__).resolve().parent.parent.parent / "evals" / "shapes" / "metadata.jsonl"


@tasks.register("shapes")
class ShapesTask:
    """Shapes-world prompts (all six GenEval tags) with a correct render in `columns['image']`
    and the GenEval-schema row in `columns['metadata']`."""

    def __init__(self, tags: list[str] = list(TAGS), size: int = 32, seed: int = 0, eval_path: str | None = None, n_eval: int = 60):  # noqa: B006
        unknown = [t for t in tags if t not in TAGS]
        if unknown or not tags:
            raise MaskGRPOError(f"task.tags: unknown tag(s) {unknown}; known: {', '.join(TAGS)}")
        self.tags, self.size, self.seed, self.n_eval = list(tags), size, seed, n_eval
        self.eval_path = Path(eval_path) if eval_path else SUITE
        if not self.eval_path.is_file():
            raise MaskGRPOError(f"task.eval_path: {self.eval_path} not found")

    def train_example(self, index: int) -> Example:
        metadata, image = sample_scene(random.Random(self.seed * 1_000_003 + index), self.tags, self.size)
        return Example(prompt=metadata["prompt"], answer="", columns={"metadata": metadata, "image": image})

    def eval_examples(self) -> list[Example]:
        rows = [json.loads(x) for x in self.eval_path.read_text().splitlines() if x.strip()]
        rows = [r for r in rows if r["tag"] in self.tags][: self.n_eval]
        return [Example(prompt=r["prompt"], answer="", columns={"metadata": r}) for r in rows]
