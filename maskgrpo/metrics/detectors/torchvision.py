"""COCO detector backend from `torchvision.models.detection` for GenEval-style scoring of real
images. Nothing is downloaded: the model is built with `weights=None, weights_backbone=None` and
its weights are read from a local file (`weights_path`: a torchvision state dict, `.pth`/`.pt`
or `.safetensors`); without one the model is randomly initialised (tests, plumbing) and warns.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...errors import MaskGRPOError
from ...registry import detectors
from .base import Detection

# torchvision's COCO names differ from GenEval's class names in three places.
GENEVAL_RENAMES: dict[str, str] = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard"}


def coco_label_names() -> list[str | None]:
    """GenEval class name for each of torchvision's 91 COCO category ids (None: background, N/A)."""
    import torchvision.models.detection as tvd

    categories = tvd.FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # metadata only, no download
    return [None if c in ("__background__", "N/A") else GENEVAL_RENAMES.get(c, c) for c in categories]


def geneval_classes() -> list[str]:
    """GenEval's 80 object classes (the COCO names, three renamed), in COCO id order."""
    names = [n for n in coco_label_names() if n is not None]
    if len(names) != 80:  # pragma: no cover - guards against a torchvision change
        raise MaskGRPOError(f"expected 80 COCO classes, torchvision lists {len(names)}")
    return names


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """A state dict from a local `.safetensors` or torch file (weights only, never pickled code);
    a checkpoint that wraps it under `model` or `state_dict` is unwrapped."""
    p = Path(path)
    if not p.is_file():
        raise MaskGRPOError(f"weights_path: no such file: {path}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    state = torch.load(str(p), map_location="cpu", weights_only=True)
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


@detectors.register("torchvision")
class TorchvisionDetector:
    """COCO detector from torchvision.models.detection (Mask/Faster R-CNN, RetinaNet, FCOS, SSD); weights from a local file only."""

    def __init__(
        self,
        model: str = "maskrcnn_resnet50_fpn",
        weights_path: str | None = None,
        device: str = "cpu",
        score_floor: float = 0.05,
        min_size: int | None = None,
        max_size: int | None = None,
        mask_threshold: float = 0.5,
        detections_per_img: int = 100,
        batch_size: int = 4,
    ):
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models.detection)
        if model not in known or model.startswith("keypoint"):
            raise MaskGRPOError(f"detector model: unknown '{model}' (known: {', '.join(m for m in known if not m.startswith('keypoint'))})")
        kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": 91}
        if "rcnn" in model:
            kwargs.update(box_score_thresh=score_floor, box_detections_per_img=detections_per_img)
        else:
            kwargs.update(score_thresh=score_floor, detections_per_img=detections_per_img)
        if not model.startswith("ssd"):  # SSD models have a fixed input size
            if min_size is not None:
                kwargs["min_size"] = min_size
            if max_size is not None:
                kwargs["max_size"] = max_size
        self.net = torchvision.models.get_model(model, **kwargs)
        if weights_path is None:
            warnings.warn(
                f"torchvision detector '{model}': no weights_path, randomly initialised (detections are meaningless)",
                stacklevel=2,
            )
        else:
            self.net.load_state_dict(load_state_dict_file(weights_path))
        self.device = torch.device(device)
        self.net.eval().to(self.device)
        self.label_names = coco_label_names()
        self.mask_threshold = mask_threshold
        self.batch_size = batch_size
        self.model_name = model

    @torch.inference_mode()
    def detect_batch(self, images: list[Image.Image]) -> list[list[Detection]]:
        from torchvision.transforms.functional import pil_to_tensor

        results: list[list[Detection]] = []
        for i in range(0, len(images), self.batch_size):
            chunk = [pil_to_tensor(im.convert("RGB")).float().div(255).to(self.device) for im in images[i : i + self.batch_size]]
            for out in self.net(chunk):
                boxes = out["boxes"].cpu().numpy()
                scores = out["scores"].cpu().numpy()
                labels = out["labels"].cpu().numpy()
                masks = out.get("masks")
                masks = (masks[:, 0] > self.mask_threshold).cpu().numpy() if masks is not None else None
                dets = []
                for k in range(len(scores)):
                    name = self.label_names[int(labels[k])] if 0 <= int(labels[k]) < len(self.label_names) else None
                    if name is None:
                        continue
                    box = tuple(float(v) for v in boxes[k])
                    dets.append(Detection(name, float(scores[k]), box, None if masks is None else np.asarray(masks[k])))
                results.append(dets)
        return results

    def detect(self, image: Image.Image) -> list[Detection]:
        return self.detect_batch([image])[0]
