"""Build the pieces a recipe names. The only place that knows how they fit together.

`build_run(recipe)` builds every part of a GRPO or SFT run once (tokenizers, the run's modality,
backbone, task, samplers, evaluation metric, estimator, rewards); the programs never call a
registry themselves. `load_model` reads a saved model folder through its manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MaskGRPOError
from .modality import Modality, modality_for
from .recipe import Recipe, Spec
from .registry import backbones, estimators, load_entry_point_plugins, metrics, samplers, tasks, tokenizers


def build_tokenizer(spec: Spec) -> Any:
    load_entry_point_plugins()
    return tokenizers.build(spec, where="tokenizer")


def build_backbone(spec: Spec, tokenizer: Any | None = None, image_tokenizer: Any | None = None) -> Any:
    """A backbone made from scratch (one that takes a `vocab_size` and is given no `path`, e.g.
    the in-house transformer) takes its vocabulary size and mask id from the tokenizer(s): with
    an image tokenizer, the codebook follows the text vocabulary (MMaDA-style)."""
    load_entry_point_plugins()
    flat = backbones.expand(spec, where="backbone")
    from_scratch = "vocab_size" in backbones.get(flat["type"]).params.model_fields and flat.get("path") is None
    if from_scratch and tokenizer is not None:
        flat.setdefault("vocab_size", modality_for(tokenizer, image_tokenizer).vocab_size)
        flat.setdefault("mask_token_id", tokenizer.mask_token_id)
    return backbones.build(flat, where="backbone")


def build_sampler(spec: Spec, tokenizer: Any, image_tokenizer: Any | None = None, where: str = "sampler", **overrides: Any) -> Any:
    """Image samplers take the codebook's place in the vocabulary from the run's modality unless
    the recipe sets it."""
    flat = {**samplers.expand(spec, where=where), **overrides}
    defaults = modality_for(tokenizer, image_tokenizer).sampler_defaults(samplers.get(flat["type"]).params.model_fields)
    return samplers.build({**defaults, **flat}, where=where)


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


@dataclass
class RunParts:
    """Everything a GRPO or SFT run is made of, built once from its recipe. `eval_metric` is the
    image metric of the in-training evaluation (None for text, scored by math accuracy, and when
    the task has no held-out set); `estimator` and `rewards` exist for GRPO recipes only."""

    tokenizer: Any
    modality: Modality
    backbone: Any
    task: Any
    sampler: Any
    eval_sampler: Any
    eval_set: list[Any]
    eval_metric: Any | None
    estimator: Any | None = None
    rewards: Any | None = None


def build_run(recipe: Recipe) -> RunParts:
    """Build every part of `recipe` (the backbone on the CPU; the program moves it). The
    evaluation sampler is the recipe's `eval_sampler`, else the rollout sampler as the modality
    evaluates with it (text: greedy)."""
    from .estimators.masking import ELBOEstimator
    from .rewards.combine import RewardSet

    tokenizer = build_tokenizer(recipe.tokenizer)
    image_tokenizer = build_tokenizer(recipe.image_tokenizer) if recipe.image_tokenizer is not None else None
    modality = modality_for(tokenizer, image_tokenizer)
    backbone = build_backbone(recipe.backbone, tokenizer, image_tokenizer)
    task = tasks.build(recipe.task, where="task")
    sampler = build_sampler(recipe.sampler, tokenizer, image_tokenizer)
    if recipe.eval_sampler is not None:
        eval_sampler = build_sampler(recipe.eval_sampler, tokenizer, image_tokenizer, where="eval_sampler")
    else:
        eval_sampler = build_sampler(recipe.sampler, tokenizer, image_tokenizer, **modality.eval_sampler_overrides())
    eval_set = task.eval_examples()  # empty: the run reports no evaluation, never 0
    eval_metric = build_eval_metric(recipe.eval_metric, task) if modality.name == "image" and eval_set else None
    parts = RunParts(tokenizer, modality, backbone, task, sampler, eval_sampler, eval_set, eval_metric)
    if recipe.kind == "grpo":
        parts.estimator = estimators.build(recipe.estimator, where="estimator")
        if isinstance(parts.estimator, ELBOEstimator):
            raise MaskGRPOError("estimator: 'elbo' measures likelihoods for evaluation; train with another estimator")
        parts.rewards = RewardSet(recipe.rewards)
    return parts


MANIFEST = "maskgrpo_model.json"


def write_manifest(folder: str | Path, recipe: Any, modality: Modality, adapter: str | None = None) -> Path:
    """A saved model folder's description of itself (like diffusers' model_index.json): which
    registered backbone and tokenizer read it, the image tokenizer and where its codebook sits,
    and how an adapter was saved (`merged`: folded into the weights). `load_model` reads it, so
    a folder never has to be guessed from its file names."""
    import json

    from .utils import atomic_write_text

    image = recipe.image_tokenizer
    manifest = {
        "format": 1,
        "backbone": backbones.expand(recipe.backbone, where="backbone")["type"],
        "tokenizer": tokenizers.expand(recipe.tokenizer, where="tokenizer")["type"],
        "image_tokenizer": image,
        "codebook_offset": getattr(modality, "codebook_offset", None),
        "adapter": adapter,
        "recipe": recipe.name,
    }
    path = Path(folder) / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")
    return path


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, validated; None for folders saved before manifests existed."""
    import json

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

    from .tokenizers.char import CharTokenizer
    from .tokenizers.word import WordTokenizer

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
