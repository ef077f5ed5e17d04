"""The shapes world's vocabulary: GenEval's colours as sRGB values, the three classes, the words
of its prompts, the ways a scene can be wrong.

The GenEval names themselves (tags, colours, relations) come from `maskgrpo.geneval_vocab`; this
world covers all six tags and all ten colours.
"""

from __future__ import annotations

from typing import Literal, get_args

from ...geneval_vocab import GENEVAL_COLORS
from ...geneval_vocab import GENEVAL_RELATIONS as RELATIONS
from ...geneval_vocab import GENEVAL_TAGS as TAGS

__all__ = [
    "BACKGROUND",
    "CLASSES",
    "COLORS",
    "NUMBERS",
    "OPPOSITE",
    "PLURALS",
    "RELATIONS",
    "TAGS",
    "WORDS",
    "WRONG_KINDS",
    "WrongKind",
    "article",
]

# Canonical sRGB values of GenEval's ten colour names (in GenEval's order), and the background.
COLORS: dict[str, tuple[int, int, int]] = dict(
    zip(
        GENEVAL_COLORS,
        (
            (220, 40, 40),  # red
            (245, 140, 30),  # orange
            (240, 220, 40),  # yellow
            (40, 170, 60),  # green
            (40, 80, 220),  # blue
            (140, 60, 190),  # purple
            (245, 150, 190),  # pink
            (130, 80, 40),  # brown
            (20, 20, 20),  # black
            (245, 245, 245),  # white
        ),
        strict=True,
    )
)
BACKGROUND: tuple[int, int, int] = (160, 160, 160)
CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles"}
OPPOSITE: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
NUMBERS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
MAX_COUNT = 4  # the most objects of one class a prompt asks for (counting: 2-4; its wrong counts: 1-4)

WrongKind = Literal["count", "color", "side", "class"]
WRONG_KINDS: tuple[str, ...] = get_args(WrongKind)

# Every word of this world's prompts (29), in the order the shipped word tokenizers number them:
# the words of GenEval's phrasing ("a photo of an X left of a Y"), the counts, each class with its
# plural, the colours.
WORDS: tuple[str, ...] = (
    ("a", "an", "of", "and", "photo", "left", "right", "above", "below")
    + tuple(NUMBERS[n] for n in range(1, MAX_COUNT + 1))
    + tuple(word for cls in CLASSES for word in (cls, PLURALS[cls]))
    + tuple(COLORS)
)


def article(word: str) -> str:
    """The indefinite article GenEval's prompts put before `word`."""
    return "an" if word[0] in "aeiou" else "a"
