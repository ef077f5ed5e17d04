"""Generation for `--model`: the suite's sampler on the suite's prompts, seeded per sample (row
i's generator), so the batch size changes nothing. Text samples come back ready to score; images
are written in GenEval's layout and then scored like any `--outputs` folder."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MaskGRPOError
from ..utils import progress_bar
from .outputs import BadRows, read_suite_prompts, save_geneval_folder, validate_geneval_row
from .suite import Suite, build_suite_sampler

__all__ = ["LoadedModel", "generate_images", "generate_text", "prompt_overflow"]


@dataclass
class LoadedModel:
    """A model already in memory (the trainer's policy, on its device): evaluated through the
    same code as a saved one, without saving it. `label` is what results.json records."""

    backbone: Any
    tokenizer: Any
    label: str

    def __str__(self) -> str:
        return self.label


def _load(model: str | LoadedModel, device: str) -> tuple[Any, Any, Any]:
    """(backbone, tokenizer, device) for a preset name, a model folder or a loaded model."""
    from ..components import load_model
    from ..utils import resolve_device

    if isinstance(model, LoadedModel):
        return model.backbone, model.tokenizer, next(model.backbone.parameters()).device
    backbone, tokenizer = load_model(model)
    dev = resolve_device(device)
    return (backbone.to(dev) if hasattr(backbone, "to") else backbone), tokenizer, dev


def _shard(accelerator: Any, n: int) -> list[int]:
    """The sample indices this process generates: every world-th one (all of them without an
    accelerator). A sample's generator is keyed by its index, so the split changes nothing."""
    if accelerator is None:
        return list(range(n))
    return list(range(accelerator.process_index, n, accelerator.num_processes))


def _gathered(accelerator: Any, indices: list[int], values: list[Any], n: int) -> list[Any]:
    """Every process's (index, value) pairs, in index order."""
    if accelerator is None:
        return values
    from ..runtime import gather_list

    pairs = gather_list(accelerator, list(zip(indices, values)))
    ordered: list[Any] = [None] * n
    for i, value in pairs:
        ordered[i] = value
    return ordered


def prompt_overflow(backbone: Any, tokenizer: Any, gen_length: int, prompts: list[str]) -> tuple[int, int, int] | None:
    """(index, tokens, max_length) of the longest formatted prompt when it and `gen_length` do
    not fit the in-house transformer's fixed max_length; None when they fit (or no fixed limit)."""
    from ..backbones.transformer import MaskedTransformer

    if not isinstance(backbone, MaskedTransformer) or not prompts:
        return None
    limit = int(backbone.config.max_length)
    lengths = [len(tokenizer.encode(tokenizer.format_prompt(p))) for p in prompts]
    worst = max(range(len(prompts)), key=lengths.__getitem__)
    return (worst, lengths[worst], limit) if lengths[worst] + gen_length > limit else None


def _check_length(backbone: Any, tokenizer: Any, sampler: Any, suite: Suite, rows: list[dict[str, Any]]) -> None:
    """Say which prompt does not fit (prompt + gen_length) before generating, not deep inside
    the sampler."""
    gen = int(getattr(sampler, "gen_length", 0))
    over = prompt_overflow(backbone, tokenizer, gen, [suite.format_prompt(r["prompt"]) for r in rows])
    if over is not None:
        worst, tokens, limit = over
        raise MaskGRPOError(
            f"{suite.data_path}:{rows[worst]['line']}: prompt of {tokens} tokens + gen_length {gen} exceeds the model's max_length {limit}"
        )


def generate_text(
    suite: Suite, model: str | LoadedModel, limit: int | None, batch_size: int, progress: bool | None, device: str, bad: BadRows, accelerator: Any = None
) -> list[dict[str, Any]]:
    """`samples_per_prompt` completions per suite row, as samples (index, sample, line, prompt,
    answer, completion). With an `accelerator`, each process generates its share and every
    process gets all samples."""
    from ..generation import generate

    rows = read_suite_prompts(suite, limit, bad)
    sampler = build_suite_sampler(suite)
    backbone, tokenizer, dev = _load(model, device)
    samples = [
        {"index": i, "sample": k, "line": r["line"], "prompt": r["prompt"], "answer": r["answer"], "completion": None}
        for i, r in enumerate(rows)
        for k in range(suite.samples_per_prompt)
    ]
    _check_length(backbone, tokenizer, sampler, suite, rows)
    mine = _shard(accelerator, len(samples))
    completions: list[str] = []
    with progress_bar(len(mine), f"{suite.name}: generating", progress) as bar:
        for start in range(0, len(mine), batch_size):
            ids = mine[start : start + batch_size]  # sample i's own generator: the batch size changes nothing
            chunk = [suite.format_prompt(samples[i]["prompt"]) for i in ids]
            completions += generate(backbone, tokenizer, sampler, chunk, batch_size=len(chunk), seed=suite.seed, device=dev, row_ids=ids)
            bar.update(len(chunk))
    for s, c in zip(samples, _gathered(accelerator, mine, completions, len(samples))):
        s["completion"] = c
    return samples


def _check_codebook_placement(model: str, modality: Any) -> None:
    """A saved model's manifest says where its codebook sits; the suite's image tokenizer must
    put it there too, or every image would decode from shifted codes."""
    from ..components import read_manifest

    folder = Path(model)
    manifest = read_manifest(folder) if folder.is_dir() else None
    saved = None if manifest is None else manifest.get("codebook_offset")
    if saved is not None and saved != modality.codebook_offset:
        raise MaskGRPOError(
            f"--model: {folder} places its codebook at id {saved}, but the suite's tokenizers put it at {modality.codebook_offset}"
        )


def generate_images(
    suite: Suite,
    model: str | LoadedModel,
    limit: int | None,
    batch_size: int,
    progress: bool | None,
    device: str,
    bad: BadRows,
    folder: Path,
    accelerator: Any = None,
) -> Path | None:
    """Sample `samples_per_prompt` images per suite row and write them in GenEval's layout to
    `folder`, which is then scored like any `--outputs` folder. With an `accelerator`, each
    process generates its share and the main process writes the folder (the others get None)."""
    from ..components import build_sampler, build_tokenizer
    from ..generation import generate_images as sample_images
    from ..modality import ImageModality

    if suite.image_tokenizer is None:
        raise MaskGRPOError(f"{suite.where}: image_tokenizer: needed to turn generated codes into images (--model)")
    spec = suite.image_tokenizer  # its relative paths were resolved when the suite was read
    rows = read_suite_prompts(suite, limit, bad)
    for r in rows:
        problem = validate_geneval_row(r["row"])
        if problem is not None:
            raise MaskGRPOError(f"{suite.data_path}:{r['line']}: {problem}")
    backbone, tokenizer, dev = _load(model, device)
    image_tokenizer = build_tokenizer(spec)
    modality = ImageModality(tokenizer, image_tokenizer)
    if not isinstance(model, LoadedModel):
        _check_codebook_placement(model, modality)
    sampler = build_sampler(suite.sampler, tokenizer, image_tokenizer)
    lo, hi = sampler.codebook
    if getattr(backbone, "vocab_size", hi) < hi:
        raise MaskGRPOError(
            f"--model: {model} has a vocabulary of {backbone.vocab_size}, too small for the image codes "
            f"[{lo}, {hi}) of {suite.where}'s image_tokenizer (not a text-to-image model?)"
        )
    n = suite.samples_per_prompt
    prompts = [r["prompt"] for r in rows for _ in range(n)]
    mine = _shard(accelerator, len(prompts))
    images: list[Any] = []
    with progress_bar(len(mine), f"{suite.name}: generating", progress) as bar:
        for start in range(0, len(mine), batch_size):
            ids = mine[start : start + batch_size]
            images += sample_images(backbone, modality, sampler, [prompts[i] for i in ids], len(ids), suite.seed, dev, ids)
            bar.update(len(ids))
    images = _gathered(accelerator, mine, images, len(prompts))
    if accelerator is not None and not accelerator.is_main_process:
        return None
    if folder.exists():
        shutil.rmtree(folder)
    save_geneval_folder(folder, [r["row"] for r in rows], [images[i * n : (i + 1) * n] for i in range(len(rows))])
    return folder
