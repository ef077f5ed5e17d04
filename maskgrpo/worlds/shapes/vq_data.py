"""The training data of the shapes world's VQ image tokenizer (`maskgrpo train-vq`,
`maskgrpo/vq_train.py`): correct renders of random prompts."""

from __future__ import annotations

import random
from typing import Any

from .prompts import sample_scene


def render_batch(rng: random.Random, n: int, size: int) -> tuple[list[Any], list[dict]]:
    """Correct renders for random GenEval-style prompts, all six tags."""
    scenes = [sample_scene(rng, size=size) for _ in range(n)]
    return [image for _, image in scenes], [metadata for metadata, _ in scenes]
