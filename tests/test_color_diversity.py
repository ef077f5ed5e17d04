"""The `color_diversity` reward (issue 16): pays an image for colours its group-mates lack."""

from __future__ import annotations

import pytest

from maskgrpo.errors import MaskGRPOError
from maskgrpo.registry import rewards
from maskgrpo.worlds.shapes.scene import ShapeObject, render

FREE = {"tag": "single_object", "include": [{"class": "circle", "count": 1}]}
NAMED = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}]}


def circle(color: str):
    return render([ShapeObject("circle", color, 16, 16, 8)])


def score(images, metadata, group):
    fn = rewards.build({"type": "color_diversity"})
    return fn(["p"] * len(images), images, metadata=metadata, group=group)


def test_one_colour_earns_nothing_and_distinct_colours_earn_everything() -> None:
    assert score([circle("red")] * 4, [FREE] * 4, [0] * 4) == [0.0] * 4
    assert score([circle(c) for c in ("red", "blue", "green", "yellow")], [FREE] * 4, [0] * 4) == [1.0] * 4


def test_a_rare_colour_earns_more_than_a_common_one_and_groups_do_not_mix() -> None:
    images = [circle("red"), circle("red"), circle("red"), circle("blue"), circle("blue"), circle("blue")]
    got = score(images, [FREE] * 6, [0, 0, 0, 1, 1, 1])
    assert got == [0.0] * 6  # each group is one colour, whatever the other group holds
    got = score([circle("red"), circle("red"), circle("blue")], [FREE] * 3, [7, 7, 7])
    assert got == [0.5, 0.5, 1.0]


def test_objects_count_one_by_one_and_an_empty_image_earns_nothing() -> None:
    two = render([ShapeObject("circle", "red", 8, 16, 6), ShapeObject("square", "blue", 24, 16, 6)])
    empty = render([])
    got = score([two, circle("red"), empty], [FREE] * 3, [0, 0, 0])
    # `two`: red is shared by one of two mates (0.5), blue by none (1.0) -> 0.75
    assert got == [0.75, 0.5, 0.0]


def test_prompts_that_name_a_colour_are_not_scored() -> None:
    assert score([circle("red"), circle("red")], [NAMED, NAMED], [0, 0]) == [None, None]


def test_a_detector_without_colours_is_a_clear_error() -> None:
    from maskgrpo.metrics.detectors.base import Detection

    fn = rewards.build({"type": "color_diversity"})

    class Colourless:
        def detect(self, image):
            return [Detection(label="circle", score=1.0, box=(0, 0, 4, 4), color=None)]

    fn.backend = Colourless()
    with pytest.raises(MaskGRPOError, match="reads no colours"):
        fn(["p", "p"], [circle("red")] * 2, metadata=[FREE] * 2, group=[0, 0])


def test_the_trainer_numbers_each_rollout_with_its_prompt(tmp_path) -> None:
    from maskgrpo.recipe import load_recipe
    from maskgrpo.trainer import GRPOTrainer

    from .conftest import tiny_grpo_recipe

    trainer = GRPOTrainer(load_recipe(tiny_grpo_recipe(tmp_path)))
    seen: list[list[int]] = []
    trainer.rewards.terms[1].fn = lambda prompts, completions, group, **kw: seen.append(list(group)) or [0.0] * len(completions)
    trainer.train_step(0)
    trainer.train_step(1)
    assert seen == [[p for p in range(4) for _ in range(4)], [p for p in range(4, 8) for _ in range(4)]]
