"""GenEval rules, the geneval metric, the torchvision backend plumbing and the CLIP score."""

from __future__ import annotations

import json
import math
import random
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from maskgrpo.errors import MaskGRPOError, RecipeError, UnknownComponentError
from maskgrpo.geneval_vocab import GENEVAL_COLORS
from maskgrpo.metrics.detectors.base import Detection
from maskgrpo.metrics.detectors.torchvision import TorchvisionDetector, coco_label_names, geneval_classes
from maskgrpo.metrics.geneval import (
    ClipColorClassifier,
    aggregate,
    evaluate_detections,
    evaluate_image,
    filter_detections,
    judge_detections,
    relative_position,
)
from maskgrpo.registry import detectors, metrics
from maskgrpo.worlds.shapes.placement import objects_for_metadata
from maskgrpo.worlds.shapes.prompts import make_example, make_metadata, make_wrong
from maskgrpo.worlds.shapes.scene import render

torch.set_num_threads(1)
BLANK = Image.new("RGB", (64, 64), (160, 160, 160))


def D(label, score=1.0, box=(0, 0, 10, 10), color=None):
    return Detection(label, score, tuple(float(v) for v in box), None, color)


class FakeBackend:
    def __init__(self, dets):
        self.dets = dets

    def detect(self, image):
        return list(self.dets)


# -- rules ----------------------------------------------------------------------------------------
def test_thresholds_and_max_objects():
    dets = [D("cat", 0.3), D("cat", 0.31), D("dog", 0.95), D("dog", 0.89)]
    kept = filter_detections(dets, "two_object")
    assert [d.score for d in kept["cat"]] == [0.31]  # strictly above 0.3
    assert len(kept["dog"]) == 2
    kept = filter_detections(dets, "counting")
    assert "cat" not in kept and [d.score for d in kept["dog"]] == [0.95]
    many = [D("cup", 0.5 + i / 100) for i in range(20)]
    kept = filter_detections(many, "single_object")["cup"]
    assert len(kept) == 16 and kept[0].score == pytest.approx(0.69)
    dup = [D("cup", 0.9, (0, 0, 10, 10)), D("cup", 0.8, (1, 0, 11, 10)), D("cup", 0.7, (30, 30, 40, 40))]
    assert len(filter_detections(dup, "colors")["cup"]) == 3
    assert len(filter_detections(dup, "colors", nms_iou=0.5)["cup"]) == 2


def test_relative_position_rule():
    left, right = (0, 0, 10, 10), (20, 0, 30, 10)
    assert relative_position(left, right) == {"left of"}
    assert relative_position(right, left) == {"right of"}
    assert relative_position((0, 30, 10, 40), (0, 0, 10, 10)) == {"below"}
    assert relative_position((0, 0, 10, 10), (0, 30, 10, 40)) == {"above"}
    # centres 10 apart, boxes 40 wide: the offset shrinks to 10 - 0.1 * 80 = 2 -> 0.2 < 0.5
    assert relative_position((10, 0, 50, 40), (0, 0, 40, 40)) == set()
    # 10 wide boxes: 10 - 2 = 8 -> 0.8 > 0.5
    assert relative_position((10, 0, 20, 10), (0, 0, 10, 10)) == {"right of"}
    # diagonal: both components can hold
    assert relative_position((30, 30, 32, 32), (0, 0, 2, 2)) == {"right of", "below"}
    # steep diagonal: dx/|offset| = 0.45 -> not "right of"
    assert relative_position((9, 20, 10, 21), (0, 0, 1, 1)) == {"below"}


def test_include_count_color_position_exclude():
    two = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]}
    assert evaluate_detections(BLANK, filter_detections([D("cat"), D("dog")], "two_object"), two)[0]
    ok, reason = evaluate_detections(BLANK, filter_detections([D("cat"), D("cat")], "two_object"), two)
    assert not ok and "expected dog>=1, found 0" in reason

    col = {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}]}
    assert evaluate_detections(BLANK, {"cat": [D("cat", color="red")]}, col)[0]
    ok, reason = evaluate_detections(BLANK, {"cat": [D("cat", color="blue")]}, col)
    assert not ok and "expected red cat" in reason
    # only the top-`count` objects are colour-checked (GenEval)
    assert not evaluate_detections(BLANK, {"cat": [D("cat", color="blue"), D("cat", color="red")]}, col)[0]

    pos = {"tag": "position", "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["left of", 0]}]}
    dets = {"dog": [D("dog", box=(20, 0, 30, 10))], "cat": [D("cat", box=(0, 0, 10, 10))]}
    assert evaluate_detections(BLANK, dets, pos)[0]
    dets = {"dog": [D("dog", box=(0, 0, 10, 10))], "cat": [D("cat", box=(20, 0, 30, 10))]}
    ok, reason = evaluate_detections(BLANK, dets, pos)
    assert not ok and "right of" in reason
    ok, reason = evaluate_detections(BLANK, {"cat": [D("cat")]}, pos)
    assert not ok and "no target" in reason
    # only the top-`count` cats are checked: a second, lower-scored cat elsewhere does not matter
    dets = {"dog": [D("dog", box=(20, 0, 30, 10))], "cat": [D("cat", box=(0, 0, 10, 10)), D("cat", 0.5, box=(40, 0, 50, 10))]}
    assert evaluate_detections(BLANK, dets, pos)[0]
    # but the relation must hold against every object of the target group
    pos2 = {"tag": "position", "include": [{"class": "dog", "count": 2}, {"class": "cat", "count": 1, "position": ["left of", 0]}]}
    cat = [D("cat", box=(10, 0, 20, 10))]
    assert evaluate_detections(BLANK, {"dog": [D("dog", box=(40, 0, 50, 10)), D("dog", box=(60, 0, 70, 10))], "cat": cat}, pos2)[0]
    assert not evaluate_detections(BLANK, {"dog": [D("dog", box=(40, 0, 50, 10)), D("dog", box=(0, 0, 8, 10))], "cat": cat}, pos2)[0]

    exc = {"tag": "counting", "include": [{"class": "cup", "count": 2}], "exclude": [{"class": "cup", "count": 3}]}
    assert evaluate_detections(BLANK, {"cup": [D("cup")] * 2}, exc)[0]
    ok, reason = evaluate_detections(BLANK, {"cup": [D("cup")] * 3}, exc)
    assert not ok and "expected cup<3, found 3" in reason
    # counting is exact even without an exclude row; other tags accept more
    no_exc = {"tag": "counting", "include": [{"class": "cup", "count": 2}]}
    assert not evaluate_detections(BLANK, {"cup": [D("cup")] * 3}, no_exc)[0]
    assert evaluate_detections(BLANK, {"cup": [D("cup")] * 3}, {"tag": "two_object", "include": [{"class": "cup", "count": 2}]})[0]


def test_fraction_met_counts_entries_and_is_one_only_when_correct():
    two = {"tag": "color_attr", "include": [{"class": "cat", "count": 1, "color": "red"}, {"class": "dog", "count": 1, "color": "blue"}]}
    cases = [
        ({"cat": [D("cat", color="red")], "dog": [D("dog", color="blue")]}, True, 1.0),
        ({"cat": [D("cat", color="red")], "dog": [D("dog", color="green")]}, False, 0.5),
        ({"cat": [D("cat", color="red")]}, False, 0.5),
        ({"dog": [D("dog", color="red")]}, False, 0.0),
    ]
    for dets, correct, fraction in cases:
        assert judge_detections(BLANK, dets, two)[0::2] == (correct, fraction)
    count = {"tag": "counting", "include": [{"class": "cup", "count": 2}], "exclude": [{"class": "cup", "count": 3}]}
    assert judge_detections(BLANK, {"cup": [D("cup")] * 2}, count)[0::2] == (True, 1.0)
    assert judge_detections(BLANK, {"cup": [D("cup")]}, count)[0::2] == (False, 0.5)  # too few: the exclude holds
    assert judge_detections(BLANK, {"cup": [D("cup")] * 3}, count)[0::2] == (False, 0.5)  # too many: the include holds


def test_partial_credit_reward_pays_one_right_object_of_two():
    from maskgrpo.registry import rewards

    md, objects = make_example("color_attr", 3, 64)
    one_object = render(objects[:1], 64)
    both = render(objects, 64)
    exact = rewards.build({"type": "geneval", "detector": "shapes"}, where="r")
    partial = rewards.build({"type": "geneval", "detector": "shapes", "partial_credit": True}, where="r")
    assert exact(["p", "p"], [both, one_object], [md, md]) == [1.0, 0.0]
    assert partial(["p", "p"], [both, one_object], [md, md]) == [1.0, 0.5]


def test_counting_threshold_is_applied_in_evaluate_image():
    md = {"tag": "counting", "include": [{"class": "cup", "count": 2}], "exclude": [{"class": "cup", "count": 3}]}
    backend = FakeBackend([D("cup", 0.95), D("cup", 0.92), D("cup", 0.6)])
    ok, reason, kept = evaluate_image(BLANK, md, backend)
    assert ok, reason
    assert len(kept) == 2  # the 0.6 detection is below the counting threshold
    backend = FakeBackend([D("cup", 0.95), D("cup", 0.85)])
    assert not evaluate_image(BLANK, md, backend)[0]
    # the same detections pass a non-counting row at 0.3
    assert evaluate_image(BLANK, {"tag": "two_object", "include": [{"class": "cup", "count": 2}]}, backend)[0]
    # a colour classifier callable overrides detector colours
    col = {"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "green"}]}
    backend = FakeBackend([D("cup", 0.9, color="red")])
    assert not evaluate_image(BLANK, col, backend)[0]
    assert evaluate_image(BLANK, col, backend, color_classifier=lambda im, dets, cls: ["green"] * len(dets))[0]


# -- the metric -----------------------------------------------------------------------------------
def test_metric_aggregates_per_tag():
    metric = metrics.build("geneval")
    rng = random.Random(0)
    images, rows, expected = [], [], []
    plan = {"single_object": [True, True], "colors": [True, False], "counting": [True, False, False, False]}
    for tag, outcomes in plan.items():
        for good in outcomes:
            md = make_metadata(tag, rng)
            objs = objects_for_metadata(md, rng) if good else make_wrong(md, "count" if tag != "colors" else "color", rng)
            images.append(render(objs, 32))
            rows.append(md)
            expected.append(good)
    metric.update({"images": images[:4], "metadata": rows[:4]})
    metric.update({"images": images[4:], "metadata": rows[4:]})
    out = metric.compute()
    assert out["single_object"] == 1.0 and out["colors"] == 0.5 and out["counting"] == 0.25
    assert out["overall"] == pytest.approx((1.0 + 0.5 + 0.25) / 3)
    assert out["n"] == 8
    assert [r["correct"] for r in metric.records] == expected
    rec = metric.records[0]
    assert set(rec) == {"tag", "prompt", "correct", "fraction_met", "reason", "detections"}
    json.dumps(metric.records)  # plain data
    assert all(set(d) >= {"label", "score", "box", "color"} for r in metric.records for d in r["detections"])
    metric.reset()
    empty = metric.compute()
    assert empty["n"] == 0 and math.isnan(empty["overall"])  # no samples: no score, never 0
    assert aggregate([{"tag": "a", "correct": True}, {"tag": "b", "correct": False}, {"tag": "b", "correct": True}])["overall"] == 0.75


def test_registry_validation():
    with pytest.raises(RecipeError, match="detectr"):
        metrics.build({"type": "geneval", "detectr": "shapes"})
    with pytest.raises(UnknownComponentError):
        metrics.build({"type": "geneval", "detector": "shapez"})
    with pytest.raises(RecipeError):
        metrics.build({"type": "geneval", "color": "rainbow"})
    assert "torchvision" in detectors and "shapes" in detectors


# -- tiny CLIP, saved and loaded back ---------------------------------------------------------------
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import open_clip

    folder = tmp_path_factory.mktemp("clip")
    config = folder / "maskgrpo-test-tiny-clip.json"
    config.write_text(json.dumps(TINY))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model("maskgrpo-test-tiny-clip").eval()
    weights = folder / "tiny_clip.pt"
    torch.save(model.state_dict(), weights)
    return {"config": str(config), "name": "maskgrpo-test-tiny-clip", "weights": str(weights), "model": model}


def _shape_images(n=4):
    return [render(make_example("color_attr", random.Random(i), 32)[1], 32) for i in range(n)]


def test_clip_score_tiny_model_roundtrip(tiny_clip):
    import open_clip

    images = _shape_images()
    prompts = ["a photo of a red circle", "a photo of a blue square", "a photo of two triangles", "a photo"]
    metric = metrics.build({"type": "clip_score", "model": tiny_clip["name"], "pretrained": tiny_clip["weights"]})
    scores = metric.score(images, prompts)
    assert len(scores) == 4 and all(0.0 <= s <= 100.0 for s in scores)
    # same numbers as the original in-memory model: the weights really were loaded
    model = tiny_clip["model"]
    _, _, preprocess = open_clip.create_model_and_transforms(tiny_clip["name"])
    tok = open_clip.get_tokenizer(tiny_clip["name"])
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(torch.stack([preprocess(i) for i in images])), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(tok(prompts)), dim=-1)
    expected = (100 * (img * txt).sum(-1).clamp(min=0)).tolist()
    assert scores == pytest.approx(expected, abs=1e-4)
    # deterministic, also through the config-file route
    again = metrics.build({"type": "clip_score", "model": tiny_clip["config"], "pretrained": tiny_clip["weights"]})
    assert again.score(images, prompts) == pytest.approx(scores, abs=1e-6)
    metric.update({"images": images, "prompts": prompts})
    out = metric.compute()
    assert out["n"] == 4 and out["clip_score"] == pytest.approx(sum(scores) / 4)
    metric.reset()
    assert metric.compute()["n"] == 0
    with pytest.raises(MaskGRPOError):
        metric.score(images, prompts[:2])


def test_clip_refuses_downloads(tiny_clip):
    with pytest.raises(MaskGRPOError, match="local checkpoint"):
        metrics.build({"type": "clip_score", "model": tiny_clip["name"], "pretrained": "openai"})
    with pytest.raises(MaskGRPOError, match="hf-hub"):
        metrics.build({"type": "clip_score", "model": "hf-hub:org/model"})


def test_clip_color_classifier(tiny_clip):
    clf = ClipColorClassifier(model=tiny_clip["name"], pretrained=tiny_clip["weights"])
    image = render(make_example("colors", random.Random(3), 64)[1], 64)
    dets = detectors.build("shapes").detect(image)
    crops = clf.crops(image, dets)
    assert len(crops) == len(dets) == 1
    # pixels outside the mask are grey #999; no background pixel survives
    arr = np.asarray(crops[0])
    assert (arr == 153).all(-1).any() and not (arr == 160).all(-1).any()
    colors = clf.classify(image, dets, dets[0].label)
    assert colors[0] in GENEVAL_COLORS
    assert clf.classify(image, dets, dets[0].label) == colors
    assert clf.logits(image, dets, dets[0].label).shape == (1, 10)


# -- torchvision backend: random weights saved to a file and loaded back ------------------------------
def test_coco_label_mapping():
    names = coco_label_names()
    assert len(names) == 91 and names[0] is None
    classes = geneval_classes()
    assert len(classes) == 80 and len(set(classes)) == 80
    assert {"computer mouse", "tv remote", "computer keyboard", "person", "teddy bear", "tv"} <= set(classes)
    assert not {"mouse", "remote", "keyboard", "N/A", "__background__"} & set(classes)
    assert names[1] == "person" and names[names.index("computer mouse")] == "computer mouse"


@pytest.fixture(scope="module")
def tv_weights(tmp_path_factory):
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="randomly initialised"):
        det = TorchvisionDetector(model="fasterrcnn_mobilenet_v3_large_320_fpn", score_floor=0.0)
    path = tmp_path_factory.mktemp("tv") / "detector.pth"
    torch.save(det.net.state_dict(), path)
    return det, str(path)


def test_torchvision_backend_roundtrip(tv_weights):
    original, path = tv_weights
    loaded = detectors.build(
        {"type": "torchvision", "model": "fasterrcnn_mobilenet_v3_large_320_fpn", "weights_path": path, "score_floor": 0.0}
    )
    image = _shape_images(1)[0]
    a, b = original.detect(image), loaded.detect(image)
    assert len(a) == len(b) > 0
    assert [d.label for d in a] == [d.label for d in b]
    assert np.allclose([d.score for d in a], [d.score for d in b], atol=1e-5)
    classes = set(geneval_classes())
    for d in b:
        assert isinstance(d, Detection) and d.label in classes
        assert isinstance(d.score, float) and 0.0 <= d.score <= 1.0
        assert len(d.box) == 4 and all(isinstance(v, float) for v in d.box)
        assert d.mask is None and d.color is None
    with pytest.raises(MaskGRPOError, match="no such file"):
        TorchvisionDetector(model="fasterrcnn_mobilenet_v3_large_320_fpn", weights_path=path + ".missing")
    with pytest.raises(MaskGRPOError, match="unknown"):
        TorchvisionDetector(model="resnet50")


def test_torchvision_mask_model_outputs_masks(tmp_path):
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        det = TorchvisionDetector(
            model="maskrcnn_resnet50_fpn", score_floor=0.0, min_size=64, max_size=64, detections_per_img=3
        )
    path = tmp_path / "mask.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in det.net.state_dict().items()}, str(path))
    loaded = TorchvisionDetector(model="maskrcnn_resnet50_fpn", weights_path=str(path), score_floor=0.0,
                                 min_size=64, max_size=64, detections_per_img=3)
    dets = loaded.detect(_shape_images(1)[0])
    assert 0 < len(dets) <= 3
    for d in dets:
        assert d.mask is not None and d.mask.dtype == bool and d.mask.shape == (32, 32)


def test_geneval_metric_with_torchvision_and_clip(tv_weights, tiny_clip):
    _, path = tv_weights
    metric = metrics.build(
        {
            "type": "geneval",
            "detector": {"type": "torchvision", "model": "fasterrcnn_mobilenet_v3_large_320_fpn", "weights_path": path, "score_floor": 0.0},
            "clip_model": tiny_clip["name"],
            "clip_pretrained": tiny_clip["weights"],
        }
    )
    images = _shape_images(3)
    rows = [
        {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}], "prompt": "a photo of a red cat"},
        {"tag": "counting", "include": [{"class": "cup", "count": 2}], "exclude": [{"class": "cup", "count": 3}], "prompt": "a photo of two cups"},
        {"tag": "single_object", "include": [{"class": "person", "count": 1}], "prompt": "a photo of a person"},
    ]
    metric.update({"images": images, "metadata": rows})
    out = metric.compute()
    assert out["n"] == 3 and set(out) == {"overall", "colors", "counting", "single_object", "n"}
    assert all(0.0 <= out[k] <= 1.0 for k in ("overall", "colors", "counting", "single_object"))
    for rec, row in zip(metric.records, rows):
        cut = 0.9 if row["tag"] == "counting" else 0.3
        assert all(d["score"] > cut - 1e-4 for d in rec["detections"])
        assert isinstance(rec["correct"], bool) and isinstance(rec["reason"], str)
    json.dumps(metric.records)
