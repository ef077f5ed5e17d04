"""Build the pieces a recipe names. The only place that knows how they fit together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .recipe import Spec
from .errors import MaskGRPOError
from .registry import backbones, load_entry_point_plugins, load_presets, metrics, samplers, tokenizers


def build_tokenizer(spec: Spec) -> Any:
    load_presets()
    load_entry_point_plugins()
    return tokenizers.build(spec, where="tokenizer")


def build_backbone(spec: Spec, tokenizer: Any | None = None, image_tokenizer: Any | None = None) -> Any:
    """A new in-house transformer takes its vocabulary size and mask id from the tokenizer(s):
    with an image tokenizer, the codebook follows the text vocabulary (MMaDA-style)."""
    load_presets()
    load_entry_point_plugins()
    flat = backbones.expand(spec, where="backbone")
    if flat["type"] == "transformer" and flat.get("path") is None and tokenizer is not None:
        codebook = image_tokenizer.codebook_size if image_tokenizer is not None else 0
        flat.setdefault("vocab_size", tokenizer.vocab_size + codebook)
        flat.setdefault("mask_token_id", tokenizer.mask_token_id)
    return backbones.build(flat, where="backbone")


def build_sampler(spec: Spec, tokenizer: Any, image_tokenizer: Any | None = None, where: str = "sampler", **overrides: Any) -> Any:
    """Image samplers take the codebook's place in the vocabulary from the tokenizers unless the
    recipe sets it."""
    load_presets()
    flat = {**samplers.expand(spec, where=where), **overrides}
    if image_tokenizer is not None and "codebook_offset" in samplers.get(flat["type"]).params.model_fields:
        flat.setdefault("codebook_offset", tokenizer.vocab_size)
        flat.setdefault("codebook_size", image_tokenizer.codebook_size)
    return samplers.build(flat, where=where)


def eval_metric_spec(spec: Spec | None, task: Any) -> Spec:
    """The metric of an image run's in-training evaluation: the recipe's `eval_metric`, else the
    task's own (`task.eval_metric`; the shapes world scores with its exact detector). A task
    without one (GenEval prompts from JSONL) needs the recipe to say which detector to trust."""
    if spec is None:
        spec = getattr(task, "eval_metric", None)
    if spec is None:
        raise MaskGRPOError(
            f"eval_metric: task {type(task).__name__} has no default image metric; set one, e.g. {{type: geneval, detector: torchvision, ...}}"
        )
    return spec


def build_eval_metric(spec: Spec | None, task: Any) -> Any:
    return metrics.build(eval_metric_spec(spec, task), where="eval_metric")


MANIFEST = "maskgrpo_model.json"


def write_manifest(folder: str | Path, recipe: Any, adapter: str | None = None) -> Path:
    """A saved model folder's description of itself (like diffusers' model_index.json): which
    registered backbone and tokenizer read it, the image tokenizer and where its codebook sits,
    and how an adapter was saved (`merged`: folded into the weights). `load_model` reads it, so
    a folder never has to be guessed from its file names."""
    import json

    from .utils import atomic_write_text

    load_presets()
    image = recipe.image_tokenizer
    manifest = {
        "format": 1,
        "backbone": backbones.expand(recipe.backbone, where="backbone")["type"],
        "tokenizer": tokenizers.expand(recipe.tokenizer, where="tokenizer")["type"],
        "image_tokenizer": image,
        "codebook_offset": build_tokenizer(recipe.tokenizer).vocab_size if image is not None else None,
        "adapter": adapter,
        "recipe": recipe.name,
    }
    path = Path(folder) / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, validated; None for folders saved before manifests existed."""
    import json

    from .errors import MaskGRPOError

    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MaskGRPOError(f"{path}: not valid JSON ({err})") from None
    for key, registry in (("backbone", backbones), ("tokenizer", tokenizers)):
        if not isinstance(manifest, dict) or not isinstance(manifest.get(key), str):
            raise MaskGRPOError(f"{path}: needs a '{key}' type name")
        registry.get(manifest[key], f"{path}: {key}")
    return manifest


def load_model(name_or_path: str) -> tuple[Any, Any]:
    """(backbone, tokenizer) from a preset name (backbone and tokenizer presets of that name) or
    a model folder saved by maskgrpo (`sft`'s or `train`'s `model/`)."""
    import json

    from .errors import MaskGRPOError
    from .tokenizers.char import CharTokenizer
    from .tokenizers.word import WordTokenizer

    load_presets()
    if name_or_path in backbones and name_or_path in tokenizers:
        tokenizer = build_tokenizer(name_or_path)
        return build_backbone(name_or_path, tokenizer), tokenizer
    folder = Path(name_or_path)
    if not folder.is_dir():
        names = sorted(p.name for p in backbones.presets())
        raise MaskGRPOError(f"--model: '{name_or_path}' is neither a folder nor a model preset (presets: {', '.join(names)})")
    manifest = read_manifest(folder)
    if manifest is not None:
        tokenizer = build_tokenizer({"type": manifest["tokenizer"], "path": str(folder)})
        return build_backbone({"type": manifest["backbone"], "path": str(folder)}, tokenizer), tokenizer
    # a folder saved before manifests: recognised by its files
    if (folder / CharTokenizer.FILE).is_file():
        tokenizer = build_tokenizer({"type": "char", "path": str(folder)})
    elif (folder / WordTokenizer.FILE).is_file():
        tokenizer = build_tokenizer({"type": "word", "path": str(folder)})
    else:
        tokenizer = build_tokenizer({"type": "hf", "path": str(folder)})
    try:
        config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MaskGRPOError(f"--model: {folder / 'config.json'} is not valid JSON ({err})") from None
    kind = "transformer" if config.get("_class_name") == "MaskedTransformer" else "hf"
    if config.get("model_type") in ("llada", "mmada"):  # the native LLaDA / MMaDA backbone
        kind = "llada"
    return build_backbone({"type": kind, "path": str(folder)}, tokenizer), tokenizer
