"""Contracts every registered metric, reward and detector keeps, timm-style: the tests run over
the registries (and their presets), so a new component is tested as soon as it registers, and
this file fails until its tiny spec is added to the tables below (see test_contracts.py for the
samplers and estimators).

Metrics: one record per sample (the `records` or `scores` list the harness copies into
samples.jsonl and the trainer reads), `compute()["n"]` equal to the samples, an empty metric
computes NaN (no samples: no score, never 0), `reset()` empties it, and the numbers do not depend
on how the samples were split into batches. Rewards: one float or None per completion, unknown
dataset columns accepted, and a completion's value its own (the same alone as in its batch).
Detectors: `Detection`s with a label, a score in [0, 1] and a box inside the image, the same
every time (and per image the same from `detect_batch`).

Components that need weights get the tiny local ones test_geneval_metric.py builds (a 1-layer
open_clip config and a randomly initialised torchvision detector, saved to files), so nothing is
downloaded.
"""

from __future__ import annotations

import copy
import json
import math
import random
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch

from maskgrpo.geneval_vocab import GENEVAL_COLORS
from maskgrpo.metrics.detectors.base import Detection
from maskgrpo.registry import detectors, load_presets, metrics, rewards
from maskgrpo.worlds.shapes.prompts import make_example, make_wrong
from maskgrpo.worlds.shapes.scene import render

from .conftest import REPO
from .test_geneval_metric import tiny_clip, tv_weights  # noqa: F401  (fixtures: the tiny local weights)

torch.set_num_threads(1)
load_presets()  # presets are checked too: they expand to a registered type and its tiny input

# Placeholders for the tiny local weights the `local` fixture writes (substituted into the specs).
TINY_CLIP = "<tiny-clip-config>"
TINY_CLIP_WEIGHTS = "<tiny-clip-weights>"
TINY_DETECTOR_WEIGHTS = "<tiny-detector-weights>"
DETECTOR_MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"  # the model of tv_weights
TINY_TORCHVISION = {"type": "torchvision", "model": DETECTOR_MODEL, "weights_path": TINY_DETECTOR_WEIGHTS, "score_floor": 0.0}

# name -> (modality of its inputs, the tiny specs (options) it is checked with)
TINY_METRICS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "math_accuracy": ("text", [{}]),
    "geneval": ("image", [{"detector": "shapes"}, {"detector": TINY_TORCHVISION, "clip_model": TINY_CLIP, "clip_pretrained": TINY_CLIP_WEIGHTS}]),
    "clip_score": ("image", [{"model": TINY_CLIP, "pretrained": TINY_CLIP_WEIGHTS}]),
}
TINY_REWARDS: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "math_accuracy": ("text", [{}]),
    "format": ("text", [{}, {"style": "gsm8k_solution"}, {"style": "boxed"}, {"style": "xml"}]),
    "geneval": ("image", [{"detector": "shapes"}, {"detector": "shapes", "partial_credit": True}]),
    "clip_score": ("image", [{"model": TINY_CLIP, "pretrained": TINY_CLIP_WEIGHTS}]),
    "color_diversity": ("image", [{}]),
}
TINY_DETECTORS: dict[str, list[dict[str, Any]]] = {
    "shapes": [{}],
    "torchvision": [{k: v for k, v in TINY_TORCHVISION.items() if k != "type"}],
}

# -- tiny inputs -------------------------------------------------------------------------------------
def text_inputs() -> dict[str, list[str]]:
    """Three prompts with gold answers: right, wrong, right in another form."""
    return {
        "prompts": ["1+1=", "2+3=", "What is 4+4?"],
        "completions": ["#### 2", "the answer is 6", "<reasoning>4+4</reasoning> <answer>\\boxed{8}</answer>"],
        "answers": ["#### 2", "#### 5", "#### 8"],
    }


def image_inputs() -> dict[str, list[Any]]:
    """Four shapes-world images with their GenEval rows (three tags, so samples and tags differ
    in number): the second one wrong."""
    examples = [make_example(tag, random.Random(i), 32) for i, tag in enumerate(["single_object", "counting", "colors", "colors"])]
    metadata = [md for md, _ in examples]
    objects = [objs for _, objs in examples]
    objects[1] = make_wrong(metadata[1], "count", random.Random(7))
    return {"prompts": [md["prompt"] for md in metadata], "images": [render(o, 32) for o in objects], "metadata": metadata}


def metric_batch(inputs: dict[str, list[Any]], rows: slice) -> dict[str, list[Any]]:
    return {k: v[rows] for k, v in inputs.items()}


def reward_call(fn: Any, modality: str, inputs: dict[str, list[Any]], rows: slice) -> list[Any]:
    """A reward called as RewardSet calls it: prompts, completions, then every dataset column
    (an unknown one included: rewards must accept the columns they do not use), and `group`, the
    prompt number the trainer gives each rollout (here rows 2i and 2i + 1 form group i)."""
    n = len(inputs["prompts"][rows])
    group = [i // 2 for i in range(len(inputs["prompts"]))][rows]
    if modality == "text":
        columns = {"answer": inputs["answers"][rows], "group": group, "unused_column": ["x"] * n}
        return fn(inputs["prompts"][rows], inputs["completions"][rows], **columns)
    columns = {"metadata": inputs["metadata"][rows], "group": group, "unused_column": ["x"] * n}
    return fn(inputs["prompts"][rows], inputs["images"][rows], **columns)


@pytest.fixture(scope="module")
def local(tiny_clip, tv_weights) -> dict[str, str]:
    """The tiny weights test_geneval_metric.py writes to files: a 1-layer open_clip model (by its
    config file) and a randomly initialised torchvision detector."""
    return {TINY_CLIP: tiny_clip["config"], TINY_CLIP_WEIGHTS: tiny_clip["weights"], TINY_DETECTOR_WEIGHTS: tv_weights[1]}


def substitute(spec: Any, local: dict[str, str]) -> Any:
    if isinstance(spec, dict):
        return {k: substitute(v, local) for k, v in spec.items()}
    if isinstance(spec, list):
        return [substitute(v, local) for v in spec]
    return local.get(spec, spec) if isinstance(spec, str) else spec


def cases(registry: Any, table: dict[str, tuple[str, list[dict[str, Any]]]]) -> list[Any]:
    """(modality, spec) per tiny spec of each registered name, and per preset (its type's inputs)."""
    out = [
        pytest.param(modality, {"type": name, **options}, id=f"{name}-{i}")
        for name, (modality, specs) in sorted(table.items())
        for i, options in enumerate(specs)
    ]
    for preset in registry.presets():
        kind = registry.expand(preset.name)["type"]
        if kind in table:
            out.append(pytest.param(table[kind][0], preset.name, id=f"preset-{preset.name}"))
    return out


def test_every_registered_metric_reward_and_detector_has_a_tiny_spec() -> None:
    """What `import maskgrpo` registers, read in a fresh interpreter: other tests register
    components of their own (test plugins) in this process."""
    script = "import json, maskgrpo; from maskgrpo.registry import REGISTRIES as R; print(json.dumps({k: R[k].names() for k in ('metrics', 'rewards', 'detectors')}))"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    names = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(names["metrics"]) == set(TINY_METRICS), "add the new metric's tiny spec (and modality) to TINY_METRICS"
    assert set(names["rewards"]) == set(TINY_REWARDS), "add the new reward's tiny spec (and modality) to TINY_REWARDS"
    assert set(names["detectors"]) == set(TINY_DETECTORS), "add the new detector's tiny spec to TINY_DETECTORS"


# -- metrics -----------------------------------------------------------------------------------------
def per_sample(metric: Any) -> list[Any]:
    """The per-sample list the harness (eval/score.py) and the trainer read."""
    for attr in ("records", "scores"):
        value = getattr(metric, attr, None)
        if isinstance(value, list):
            return value
    raise AssertionError(f"{type(metric).__name__} keeps no per-sample `records` or `scores` list")


def assert_empty(result: dict[str, Any]) -> None:
    assert result["n"] == 0
    scores = {k: v for k, v in result.items() if k != "n"}
    assert scores, "an empty metric still names its score"
    assert all(isinstance(v, float) and math.isnan(v) for v in scores.values()), f"no samples must be NaN, never 0: {result}"


@pytest.mark.parametrize("modality, spec", cases(metrics, TINY_METRICS))
def test_metric_contract(local, modality: str, spec: Any) -> None:
    spec = substitute(spec, local)
    metric = metrics.build(spec)
    assert_empty(metric.compute())
    inputs = text_inputs() if modality == "text" else image_inputs()
    n = len(inputs["prompts"])
    metric.update(metric_batch(inputs, slice(0, 2)))
    assert len(per_sample(metric)) == 2  # one record per sample, added by each update
    metric.update(metric_batch(inputs, slice(2, n)))
    records = per_sample(metric)
    assert len(records) == n
    json.dumps(records)  # plain data: it goes into samples.jsonl
    result = metric.compute()
    assert result["n"] == n
    scores = {k: v for k, v in result.items() if k != "n"}
    assert scores and all(isinstance(v, float) and math.isfinite(v) for v in scores.values()), result
    # one batch or two: the same numbers
    whole = metrics.build(spec)
    whole.update(metric_batch(inputs, slice(0, n)))
    assert whole.compute() == pytest.approx(result, abs=1e-5)
    # reset empties it (the trainer reuses one metric for every evaluation)
    metric.reset()
    assert per_sample(metric) == []
    assert_empty(metric.compute())


# -- rewards -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("modality, spec", cases(rewards, TINY_REWARDS))
def test_reward_contract(local, modality: str, spec: Any) -> None:
    fn = rewards.build(substitute(spec, local))
    inputs = text_inputs() if modality == "text" else image_inputs()
    n = len(inputs["prompts"])
    values = list(reward_call(fn, modality, inputs, slice(0, n)))
    assert len(values) == n, f"{len(values)} values for {n} completions"
    for v in values:
        assert v is None or (isinstance(v, float) and math.isfinite(v)), f"a reward value is a float or None, got {v!r}"
    assert list(reward_call(fn, modality, inputs, slice(0, n))) == pytest.approx(values, abs=1e-6)  # deterministic
    # a completion's value is its own (or its group's, for rewards that compare group-mates): the
    # same alone (with its group alone) as in the batch
    size = 2 if getattr(fn, "group_relative", False) else 1
    alone = [list(reward_call(fn, modality, inputs, slice(i, i + size))) for i in range(0, n, size)]
    assert all(len(a) == size for a in alone)
    assert [v for a in alone for v in a] == pytest.approx(values, abs=1e-5)


# -- detectors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, options", [pytest.param(name, o, id=f"{name}-{i}") for name, specs in sorted(TINY_DETECTORS.items()) for i, o in enumerate(specs)]
)
def test_detector_contract(local, name: str, options: dict[str, Any]) -> None:
    det = detectors.build({"type": name, **substitute(copy.deepcopy(options), local)})
    images = image_inputs()["images"]
    found = [det.detect(im) for im in images]
    assert any(found), "the tiny images give at least one detection"
    for image, dets in zip(images, found):
        for d in dets:
            assert isinstance(d, Detection) and isinstance(d.label, str) and d.label
            assert isinstance(d.score, float) and 0.0 <= d.score <= 1.0
            x0, y0, x1, y1 = d.box
            assert all(isinstance(v, float) for v in d.box) and 0 <= x0 <= x1 <= image.width and 0 <= y0 <= y1 <= image.height
            assert d.mask is None or (d.mask.dtype == bool and d.mask.shape == (image.height, image.width))
            assert d.color is None or d.color in GENEVAL_COLORS
            json.dumps(d.to_dict())
    again = [det.detect(im) for im in images]
    assert [[x.label for x in a] for a in again] == [[x.label for x in f] for f in found]
    if hasattr(det, "detect_batch"):
        batched = det.detect_batch(list(images))
        assert [[x.label for x in b] for b in batched] == [[x.label for x in f] for f in found]
        for b, f in zip(batched, found):
            assert np.allclose([x.score for x in b], [x.score for x in f], atol=1e-5)
