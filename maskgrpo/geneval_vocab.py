"""GenEval's vocabulary (Ghosh et al. 2023): its six tags, its ten colour names and its four
relations, defined once for everything that reads or writes GenEval-schema rows (the metric, the
harness's row checks, the shapes world)."""

from __future__ import annotations

from typing import Literal, get_args

GenEvalTag = Literal["single_object", "two_object", "counting", "colors", "position", "color_attr"]
GENEVAL_TAGS: tuple[str, ...] = get_args(GenEvalTag)
# GenEval's colour vocabulary, in its order.
GENEVAL_COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
GENEVAL_RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
