"""The shapes world as a task: GenEval-style prompts with a correct render for SFT.

Training examples are a pure function of (seed, index). Evaluation uses the prompts of the
`shapes` suite (`maskgrpo/suites/shapes/metadata.jsonl`). Several tags have tiny prompt spaces (three
single-object prompts, nine counting ones), so those cannot be held out, and images are sampled,
not recalled, so the score measures generation, as GenEval's does. With `hold_out: true` the
training stream skips every suite prompt of the tags with room to spare (`colors`, `position`,
`color_attr`: 30, 24 and 540 prompts), so those three tags are scored on prompts never trained on.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

from ...errors import MaskGRPOError
from ...paths import package_dir
from ...registry import tasks
from ...tasks.base import Example
from .prompts import sample_scene
from .vocabulary import TAGS

HOLD_OUT_TAGS = ("colors", "position", "color_attr")
SUITE = package_dir("suites") / "shapes" / "metadata.jsonl"


@tasks.register("shapes")
class ShapesTask:
    """Shapes-world prompts (all six GenEval tags) with a correct render in `columns['image']`
    and the GenEval-schema row in `columns['metadata']`. `canonical: true` draws upright shapes
    of one size per class on the VQ token grid: a 1 M-parameter policy learns those as a handful
    of code patterns, where free rotations, sizes and sub-token offsets left it drawing blobs
    after 5,000 steps."""

    eval_metric = {"type": "geneval", "detector": "shapes"}  # exact on this world, needs no weights

    def __init__(
        self,
        tags: list[str] = list(TAGS),  # noqa: B006
        size: int = 32,
        seed: int = 0,
        eval_path: str | None = None,
        n_eval: int = 60,
        canonical: bool = False,
        hold_out: bool = False,
        tag_weights: dict[str, float] | None = None,
    ):
        unknown = [t for t in tags if t not in TAGS]
        if unknown or not tags:
            raise MaskGRPOError(f"task.tags: unknown tag(s) {unknown}; known: {', '.join(TAGS)}")
        self.weights = self._weights(list(tags), tag_weights)
        self.tags, self.size, self.seed, self.n_eval, self.canonical = list(tags), size, seed, n_eval, canonical
        self.eval_path = Path(eval_path) if eval_path else SUITE
        if not self.eval_path.is_file():
            raise MaskGRPOError(f"task.eval_path: {self.eval_path} not found")
        self._health: Any = None
        self.held_out = {e.prompt for e in self.eval_examples() if e.columns["metadata"]["tag"] in HOLD_OUT_TAGS} if hold_out else set()

    @staticmethod
    def _weights(tags: list[str], tag_weights: dict[str, float] | None) -> list[float] | None:
        """`tag_weights` ({tag: weight}, 1 for a tag not named) as a list in `tags`' order; None
        (uniform) when not given. A prompt naming colours is the only place colour words are
        rewarded, so weighting those tags up is a lever against the colour collapse (issue 16)."""
        if tag_weights is None:
            return None
        stray = [t for t in tag_weights if t not in tags]
        if stray:
            raise MaskGRPOError(f"task.tag_weights: {stray} not among task.tags ({', '.join(tags)})")
        weights = [float(tag_weights.get(t, 1.0)) for t in tags]
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise MaskGRPOError("task.tag_weights: weights must be finite, >= 0 and not all 0")
        return weights

    def train_example(self, index: int) -> Example:
        rng = random.Random(self.seed * 1_000_003 + index)
        metadata, image = sample_scene(rng, self.tags, self.size, self.canonical, self.weights)
        while metadata["prompt"] in self.held_out:
            metadata, image = sample_scene(rng, self.tags, self.size, self.canonical, self.weights)
        return Example(prompt=metadata["prompt"], answer="", columns={"metadata": metadata, "image": image})

    def health_counts(self, images: list[Any], columns: dict[str, list[Any]]) -> dict[str, dict[str, float]]:
        """Colours (prompts naming none) and classes of the objects in rollout images: the
        trainer logs their shares, so a collapse onto one colour or class shows early."""
        if self._health is None:
            from .health import HealthCounter

            self._health = HealthCounter()
        return self._health.counts(images, columns["metadata"])

    def eval_examples(self) -> list[Example]:
        rows = [json.loads(x) for x in self.eval_path.read_text().splitlines() if x.strip()]
        rows = [r for r in rows if r["tag"] in self.tags][: self.n_eval]
        return [Example(prompt=r["prompt"], answer="", columns={"metadata": r}) for r in rows]
