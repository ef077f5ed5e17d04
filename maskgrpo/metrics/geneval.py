"""GenEval-style scoring: a detector backend finds objects, GenEval's rules judge each image.

Rules (Ghosh et al. 2023, djghosh13/geneval, re-implemented here):
- detections scoring above 0.3 are kept (above 0.9 for the `counting` tag), highest first, at
  most 16 per class (optional per-class NMS, off by default as in GenEval);
- each `include` entry {class, count} needs at least `count` objects of that class (exactly
  `count` for the `counting` tag; GenEval's counting rows encode that with an `exclude` of
  count + 1); the top `count` of them are the entry's matched objects;
- `color`: at least `count` of the matched objects must have that colour (from the detector when
  it knows colours exactly, else CLIP zero-shot over GenEval's 10 colours on the object crop with
  the background greyed out by the mask);
- `position: [relation, i]`: each matched object must stand in `relation` to every object
  matched by include entry i: the box-centre offset, shrunk by 0.1 x the summed box sizes per
  axis, divided by the offset's length, must exceed 0.5 in that direction;
- `exclude` {class, count}: fewer than `count` objects of that class;
- the score of a set of images is the mean over tags of per-tag accuracy.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Literal

import numpy as np
import torch
from PIL import Image

from ..errors import MaskGRPOError
from ..geneval_vocab import GENEVAL_COLORS
from ..registry import detectors, metrics
from .detectors import torchvision as _torchvision_backend  # noqa: F401  (registration)
from .detectors.base import Detection, DetectorBackend

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_THRESHOLD = 0.1

ColorFn = Callable[[Image.Image, list[Detection], str], list[str]]


# -- rules ----------------------------------------------------------------------------------------
def names_a_color(metadata: dict[str, Any]) -> bool:
    """Whether a GenEval metadata row asks for a colour (any include entry with `color`)."""
    return any("color" in item for item in metadata.get("include", []))


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def filter_detections(
    detections: list[Detection],
    tag: str,
    threshold: float = THRESHOLD,
    counting_threshold: float = COUNTING_THRESHOLD,
    max_objects: int = MAX_OBJECTS,
    nms_iou: float = 1.0,
) -> dict[str, list[Detection]]:
    """Per class: detections with score > threshold (counting_threshold for the `counting` tag),
    best first, at most `max_objects`, then greedy NMS at `nms_iou` (1.0: none)."""
    cut = counting_threshold if tag == "counting" else threshold
    by_class: dict[str, list[Detection]] = defaultdict(list)
    for det in detections:
        if det.score > cut:
            by_class[det.label].append(det)
    out: dict[str, list[Detection]] = {}
    for cls, dets in by_class.items():
        order = sorted(dets, key=lambda d: -d.score)[:max_objects]
        kept: list[Detection] = []
        while order:
            top = order.pop(0)
            kept.append(top)
            if nms_iou < 1.0:
                order = [d for d in order if box_iou(top.box, d.box) < nms_iou]
        out[cls] = kept
    return out


def relation_values(box_a: tuple[float, ...], box_b: tuple[float, ...], threshold: float = POSITION_THRESHOLD) -> dict[str, float]:
    """GenEval's position geometry: the centre offset of box A from box B, shrunk by `threshold`
    times their summed sizes and divided by the offset's length, per relation; a relation holds
    when its value exceeds 0.5 (all 0 when the shrunk offset vanishes)."""
    a, b = np.asarray(box_a[:4], dtype=float), np.asarray(box_b[:4], dtype=float)
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    dims = np.abs(a[2:] - a[:2]) + np.abs(b[2:] - b[:2])
    revised = np.maximum(np.abs(offset) - threshold * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return dict.fromkeys(("left of", "right of", "above", "below"), 0.0)
    dx, dy = revised / np.linalg.norm(offset)
    return {"left of": -dx, "right of": dx, "above": -dy, "below": dy}


def relative_position(box_a: tuple[float, ...], box_b: tuple[float, ...], threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of box A relative to box B ({'left of', 'right of', 'above', 'below'})."""
    return {name for name, value in relation_values(box_a, box_b, threshold).items() if value > 0.5}


def detector_colors(image: Image.Image, dets: list[Detection], classname: str) -> list[str]:
    """Colours the detector reported (the `shapes` backend knows them exactly)."""
    missing = [d for d in dets if d.color is None]
    if missing:
        raise MaskGRPOError("detections carry no colour; configure a CLIP colour classifier")
    return [str(d.color) for d in dets]


def evaluate_detections(image: Image.Image, detected: dict[str, list[Detection]], metadata: dict[str, Any], *args: Any, **kwargs: Any) -> tuple[bool, str]:
    """GenEval's judgement of one image from its filtered detections: (correct, reason). Takes
    `judge_detections`'s arguments (`color_fn`, `position_threshold`)."""
    correct, reason, _ = judge_detections(image, detected, metadata, *args, **kwargs)
    return correct, reason


def judge_detections(
    image: Image.Image,
    detected: dict[str, list[Detection]],
    metadata: dict[str, Any],
    color_fn: ColorFn = detector_colors,
    position_threshold: float = POSITION_THRESHOLD,
) -> tuple[bool, str, float]:
    """(correct, reason, fraction of the row's include and exclude entries met). The fraction is
    1.0 exactly when the image is correct; it is the `partial_credit` reward, which pays for one
    right object of two where GenEval's verdict pays nothing."""
    correct = True
    met = 0
    reasons: list[str] = []
    matched_groups: list[list[Detection] | None] = []
    exact = metadata.get("tag") == "counting"
    excluded = {e["class"] for e in metadata.get("exclude", [])}
    for req in metadata.get("include", []):
        cls, count = req["class"], int(req["count"])
        found_all = detected.get(cls, [])
        found = found_all[:count]
        matched = True
        if len(found) < count:
            correct = matched = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if exact and cls not in excluded and len(found_all) > count:
                correct = matched = False
                reasons.append(f"expected {cls}=={count}, found {len(found_all)}")
            if "color" in req:
                colors = color_fn(image, found, cls)
                if colors.count(req["color"]) < count:
                    correct = matched = False
                    others = ", ".join(f"{colors.count(c)} {c}" for c in sorted(set(colors)) if c != req["color"])
                    reasons.append(f"expected {req['color']} {cls}>={count}, found {colors.count(req['color'])} {req['color']}; and {others}")
            if "position" in req and matched:
                rel, target = req["position"]
                target_group = matched_groups[int(target)] if int(target) < len(matched_groups) else None
                if target_group is None:
                    correct = matched = False
                    reasons.append(f"no target for {cls} to be {rel}")
                else:
                    for obj in found:
                        for tgt in target_group:
                            true_rels = relative_position(obj.box, tgt.box, position_threshold)
                            if rel not in true_rels:
                                correct = matched = False
                                reasons.append(f"expected {cls} {rel} target, found {' and '.join(sorted(true_rels)) or 'no relation'}")
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
        met += matched
    for req in metadata.get("exclude", []):
        cls, count = req["class"], int(req["count"])
        n = len(detected.get(cls, []))
        if n >= count:
            correct = False
            reasons.append(f"expected {cls}<{count}, found {n}")
        else:
            met += 1
    total = len(metadata.get("include", [])) + len(metadata.get("exclude", []))
    return correct, "; ".join(reasons), (met / total if total else float(correct))


def evaluate_image(
    image: Image.Image, metadata: dict[str, Any], backend: DetectorBackend, color_classifier: ColorFn | Any | None = None, **rules: Any
) -> tuple[bool, str, list[Detection]]:
    """Judge one image against one metadata row: (correct, reason, kept detections). `rules`
    are `judge_image`'s keyword arguments (thresholds, precomputed `detections`)."""
    correct, reason, _, kept = judge_image(image, metadata, backend, color_classifier, **rules)
    return correct, reason, kept


def judge_image(
    image: Image.Image,
    metadata: dict[str, Any],
    backend: DetectorBackend,
    color_classifier: ColorFn | Any | None = None,
    threshold: float = THRESHOLD,
    counting_threshold: float = COUNTING_THRESHOLD,
    max_objects: int = MAX_OBJECTS,
    position_threshold: float = POSITION_THRESHOLD,
    nms_iou: float = 1.0,
    detections: list[Detection] | None = None,
) -> tuple[bool, str, float, list[Detection]]:
    """(correct, reason, fraction of entries met, kept detections) for one image and one row.

    `color_classifier`: a callable (image, detections, classname) -> colour names, or an object
    with such a `classify` method; None uses the detector's own colours. `detections` skips
    running the backend (precomputed)."""
    dets = backend.detect(image) if detections is None else detections
    detected = filter_detections(dets, metadata.get("tag", ""), threshold, counting_threshold, max_objects, nms_iou)
    if color_classifier is None:
        color_fn: ColorFn = detector_colors
    elif hasattr(color_classifier, "classify"):
        color_fn = color_classifier.classify
    else:
        color_fn = color_classifier
    correct, reason, fraction = judge_detections(image, detected, metadata, color_fn, position_threshold)
    kept = [d for group in detected.values() for d in group]
    return correct, reason, fraction, kept


# -- CLIP colour classifier ------------------------------------------------------------------------
class ClipColorClassifier:
    """GenEval's colour check: CLIP zero-shot over the 10 colour names on each object's crop, the
    pixels outside its mask replaced by grey (#999), prompts 'a photo of a {color} {class}',
    'a photo of a {color}-colored {class}', 'a photo of a {color} object' (averaged)."""

    TEMPLATES = ("a photo of a {c} {cls}", "a photo of a {c}-colored {cls}", "a photo of a {c} object")

    def __init__(
        self,
        model: str = "ViT-L-14",
        pretrained: str | None = None,
        device: str = "cpu",
        colors: tuple[str, ...] = GENEVAL_COLORS,
        background: str = "#999999",
        crop: bool = True,
    ):
        from .clip_score import load_open_clip

        self.net, self.preprocess, self.tokenizer = load_open_clip(model, pretrained, device)
        self.device = device
        self.colors = tuple(colors)
        self.background = background
        self.crop = crop
        self._text: dict[str, torch.Tensor] = {}

    def _classifier(self, classname: str) -> torch.Tensor:
        if classname not in self._text:
            from .clip_score import encode_texts

            texts = [t.format(c=c, cls=classname) for c in self.colors for t in self.TEMPLATES]
            emb = encode_texts(self.net, self.tokenizer, texts, self.device).view(len(self.colors), len(self.TEMPLATES), -1)
            self._text[classname] = torch.nn.functional.normalize(emb.mean(1), dim=-1)
        return self._text[classname]

    def crops(self, image: Image.Image, dets: list[Detection]) -> list[Image.Image]:
        image = image.convert("RGB")
        blank = Image.new("RGB", image.size, self.background)
        out = []
        for det in dets:
            im = image
            if det.mask is not None:
                im = Image.composite(image, blank, Image.fromarray(np.asarray(det.mask, dtype=bool)))
            if self.crop:
                x0, y0, x1, y1 = det.box
                x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
                im = im.crop((int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))))
            out.append(im)
        return out

    def logits(self, image: Image.Image, dets: list[Detection], classname: str) -> torch.Tensor:
        from .clip_score import encode_images

        if not dets:
            return torch.zeros(0, len(self.colors))
        img = encode_images(self.net, self.preprocess, self.crops(image, dets), self.device)
        return img @ self._classifier(classname).T

    def classify(self, image: Image.Image, dets: list[Detection], classname: str) -> list[str]:
        logits = self.logits(image, dets, classname)
        return [self.colors[int(i)] for i in logits.argmax(-1)] if len(dets) else []

    __call__ = classify


# -- the metric -------------------------------------------------------------------------------------
@metrics.register("geneval")
class GenEvalMetric:
    """GenEval-style accuracy (mean over tags) from a detector backend and GenEval's rules."""

    def __init__(
        self,
        detector: str | dict[str, Any] = "shapes",
        color: Literal["auto", "detector", "clip"] = "auto",
        clip_model: str = "ViT-L-14",
        clip_pretrained: str | None = None,
        threshold: float = THRESHOLD,
        counting_threshold: float = COUNTING_THRESHOLD,
        max_objects: int = MAX_OBJECTS,
        position_threshold: float = POSITION_THRESHOLD,
        nms_iou: float = 1.0,
        device: str = "cpu",
    ):
        self.backend = detectors.build(detector, where="geneval.detector")
        self.color = color
        self.clip_model = clip_model
        self.clip_pretrained = clip_pretrained
        self.device = device
        self.rules = dict(
            threshold=threshold,
            counting_threshold=counting_threshold,
            max_objects=max_objects,
            position_threshold=position_threshold,
            nms_iou=nms_iou,
        )
        self._clip: ClipColorClassifier | None = None
        self.records: list[dict[str, Any]] = []

    def _clip_classifier(self) -> ClipColorClassifier:
        if self._clip is None:
            self._clip = ClipColorClassifier(self.clip_model, self.clip_pretrained, self.device)
        return self._clip

    def _colors(self, image: Image.Image, dets: list[Detection], classname: str) -> list[str]:
        if self.color == "detector" or (self.color == "auto" and all(d.color is not None for d in dets)):
            return detector_colors(image, dets, classname)
        return self._clip_classifier().classify(image, dets, classname)

    def evaluate(self, images: list[Image.Image], metadata: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per-sample records (tag, prompt, correct, reason, detections as dicts), not accumulated."""
        if len(images) != len(metadata):
            raise MaskGRPOError(f"geneval: {len(images)} images but {len(metadata)} metadata rows")
        batch_detect = getattr(self.backend, "detect_batch", None)
        all_dets = batch_detect(list(images)) if batch_detect else [self.backend.detect(im) for im in images]
        records = []
        for image, row, dets in zip(images, metadata, all_dets):
            correct, reason, fraction, kept = judge_image(image, row, self.backend, self._colors, detections=dets, **self.rules)
            records.append(
                {
                    "tag": row.get("tag", ""),
                    "prompt": row.get("prompt", ""),
                    "correct": bool(correct),
                    "fraction_met": fraction,
                    "reason": reason,
                    "detections": [d.to_dict() for d in kept],
                }
            )
        return records

    def update(self, batch: dict[str, Any]) -> None:
        self.records.extend(self.evaluate(batch["images"], batch["metadata"]))

    def record_failure(self, metadata: dict[str, Any], reason: str) -> None:
        """A sample with no usable image (unreadable): it fails its prompt, with `reason`."""
        self.records.append(
            {"tag": metadata.get("tag", ""), "prompt": metadata.get("prompt", ""), "correct": False, "fraction_met": 0.0, "reason": reason, "detections": []}
        )

    def compute(self) -> dict[str, float]:
        return aggregate(self.records)

    def reset(self) -> None:
        self.records = []


def aggregate(records: list[dict[str, Any]]) -> dict[str, float]:
    """{'overall': mean of per-tag accuracies, '<tag>': accuracy, 'n': number of samples};
    'overall' is NaN when there are no samples: an empty evaluation has no score, never 0."""
    by_tag: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        by_tag[r["tag"]].append(bool(r["correct"]))
    out: dict[str, float] = {tag: float(np.mean(v)) for tag, v in sorted(by_tag.items())}
    return {"overall": float(np.mean(list(out.values()))) if out else float("nan"), **out, "n": len(records)}
