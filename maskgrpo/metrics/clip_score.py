"""CLIP score with open_clip, from local weights only.

`load_open_clip` is shared with the GenEval colour classifier. `model` is an open_clip model name
(`ViT-L-14`), a path to an open_clip model-config JSON file (registered under its file stem; how
small custom CLIPs are described) or `local-dir:/path` (a folder with `open_clip_config.json` and
weights). `pretrained` must be a local checkpoint file: pretrained tags and `hf-hub:` names would
download and are refused. Without weights the model is randomly initialised, with a warning.
"""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import MaskGRPOError
from ..registry import metrics

_CACHE: dict[tuple[str, str | None, str], tuple[Any, Any, Any]] = {}
_LOCK = threading.Lock()


def resolve_model_name(model: str) -> str:
    """Register a config-file `model` with open_clip and return the name to build it by."""
    import open_clip

    if model.startswith("hf-hub:"):
        raise MaskGRPOError(f"clip model '{model}': hf-hub models download at run time; use a local path")
    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise MaskGRPOError(f"clip model config not found: {model}")
        open_clip.add_model_config(path)
        return path.stem
    return model


def load_open_clip(model: str, pretrained: str | None = None, device: str = "cpu") -> tuple[Any, Any, Any]:
    """(model in eval mode, eval image transform, tokenizer), cached per (model, pretrained, device)."""
    import open_clip

    key = (model, pretrained, str(device))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        name = resolve_model_name(model)
        if name.startswith("local-dir:"):
            if pretrained is not None:
                raise MaskGRPOError("clip: `pretrained` is ignored for a local-dir: model; leave it unset")
            checkpoint = None
        elif pretrained is None:
            warnings.warn(f"clip model '{model}': no pretrained file, randomly initialised", stacklevel=3)
            checkpoint = None
        else:
            if not Path(pretrained).is_file():
                raise MaskGRPOError(
                    f"clip pretrained must be a local checkpoint file (tags download weights): {pretrained}"
                )
            checkpoint = str(pretrained)
        net, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=checkpoint, device=device, pretrained_image=False, pretrained_text=False
        )
        net.eval()
        tokenizer = open_clip.get_tokenizer(name)
        _CACHE[key] = (net, preprocess, tokenizer)
        return _CACHE[key]


@torch.inference_mode()
def encode_images(net: Any, preprocess: Any, images: list[Image.Image], device: str, batch_size: int = 32) -> torch.Tensor:
    feats = []
    for i in range(0, len(images), batch_size):
        x = torch.stack([preprocess(im.convert("RGB")) for im in images[i : i + batch_size]]).to(device)
        feats.append(torch.nn.functional.normalize(net.encode_image(x).float(), dim=-1))
    return torch.cat(feats) if feats else torch.zeros(0)


@torch.inference_mode()
def encode_texts(net: Any, tokenizer: Any, texts: list[str], device: str, batch_size: int = 256) -> torch.Tensor:
    feats = []
    for i in range(0, len(texts), batch_size):
        tokens = tokenizer(texts[i : i + batch_size]).to(device)
        feats.append(torch.nn.functional.normalize(net.encode_text(tokens).float(), dim=-1))
    return torch.cat(feats) if feats else torch.zeros(0)


@metrics.register("clip_score")
class ClipScore:
    """CLIP score: mean of 100 * max(cos(image, prompt), 0) under an open_clip model (local weights only)."""

    def __init__(self, model: str = "ViT-L-14", pretrained: str | None = None, device: str = "cpu", batch_size: int = 32):
        self.model_name = model
        self.pretrained = pretrained
        self.device = device
        self.batch_size = batch_size
        self.net, self.preprocess, self.tokenizer = load_open_clip(model, pretrained, device)
        self.scores: list[float] = []

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        """Per-pair scores, without accumulating."""
        if len(images) != len(prompts):
            raise MaskGRPOError(f"clip_score: {len(images)} images but {len(prompts)} prompts")
        if not images:
            return []
        img = encode_images(self.net, self.preprocess, images, self.device, self.batch_size)
        txt = encode_texts(self.net, self.tokenizer, list(prompts), self.device)
        cos = (img * txt).sum(-1)
        return (100.0 * cos.clamp(min=0)).tolist()

    def update(self, batch: dict[str, Any]) -> None:
        self.scores.extend(self.score(batch["images"], batch["prompts"]))

    def compute(self) -> dict[str, float]:
        n = len(self.scores)
        return {"clip_score": float(sum(self.scores) / n) if n else float("nan"), "n": n}  # no samples: no score

    def reset(self) -> None:
        self.scores = []
