"""Generation for `--model`: the suite's sampler on the suite's prompts, seeded per sample (row
i's generator), so the batch size changes nothing. Text samples come back ready to score; images
are written in GenEval's layout and then scored like any `--outputs` folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import MaskGRPOError
from ..utils import progress_bar
from .outputs import BadRows, read_suite_prompts, save_geneval_folder, validate_geneval_row
from .suite import Suite, build_suite_sampler

__all__ = ["generate_images", "generate_text"]


def _check_length(backbone: Any, tokenizer: Any, sampler: Any, suite: Suite, rows: list[dict[str, Any]]) -> None:
    """The in-house transformer has a fixed maximum length: say which prompt does not fit
    (prompt + gen_length) before generating, not deep inside the sampler."""
    from ..backbones.transformer import MaskedTransformer

    if not isinstance(backbone, MaskedTransformer):
        return
    limit = int(backbone.config.max_length)
    gen = int(getattr(sampler, "gen_length", 0))
    lengths = [len(tokenizer.encode(tokenizer.format_prompt(suite.format_prompt(r["prompt"])))) for r in rows]
    worst = max(range(len(rows)), key=lengths.__getitem__)
    if lengths[worst] + gen > limit:
        raise MaskGRPOError(
            f"{suite.data_path}:{rows[worst]['line']}: prompt of {lengths[worst]} tokens + gen_length {gen} "
            f"exceeds the model's max_length {limit}"
        )


def generate_text(suite: Suite, model: str, limit: int | None, batch_size: int, progress: bool | None, device: str, bad: BadRows) -> list[dict[str, Any]]:
    """`samples_per_prompt` completions per suite row, as samples (index, sample, line, prompt,
    answer, completion)."""
    from ..components import load_model
    from ..generation import generate
    from ..utils import resolve_device

    rows = read_suite_prompts(suite, limit, bad)
    sampler = build_suite_sampler(suite)
    backbone, tokenizer = load_model(model)
    dev = resolve_device(device)
    if hasattr(backbone, "to"):
        backbone = backbone.to(dev)
    samples = [
        {"index": i, "sample": k, "line": r["line"], "prompt": r["prompt"], "answer": r["answer"], "completion": None}
        for i, r in enumerate(rows)
        for k in range(suite.samples_per_prompt)
    ]
    prompts = [suite.format_prompt(s["prompt"]) for s in samples]
    _check_length(backbone, tokenizer, sampler, suite, rows)
    with progress_bar(len(samples), f"{suite.name}: generating", progress) as bar:
        for start in range(0, len(samples), batch_size):
            chunk = prompts[start : start + batch_size]
            rows_ = list(range(start, start + len(chunk)))  # sample i's own generator: the batch size changes nothing
            completions = generate(backbone, tokenizer, sampler, chunk, batch_size=len(chunk), seed=suite.seed, device=dev, row_ids=rows_)
            for s, c in zip(samples[start : start + batch_size], completions):
                s["completion"] = c
            bar.update(len(chunk))
    return samples


def generate_images(
    suite: Suite, model: str, limit: int | None, batch_size: int, progress: bool | None, device: str, bad: BadRows, folder: Path
) -> Path:
    """Sample `samples_per_prompt` images per suite row and write them in GenEval's layout to
    `folder`, which is then scored like any `--outputs` folder."""
    from ..components import build_sampler, build_tokenizer, load_model
    from ..generation import generate_images as sample_images
    from ..utils import resolve_device

    if suite.image_tokenizer is None:
        raise MaskGRPOError(f"{suite.where}: image_tokenizer: needed to turn generated codes into images (--model)")
    spec = suite.image_tokenizer  # its relative paths were resolved when the suite was read
    rows = read_suite_prompts(suite, limit, bad)
    for r in rows:
        problem = validate_geneval_row(r["row"])
        if problem is not None:
            raise MaskGRPOError(f"{suite.data_path}:{r['line']}: {problem}")
    backbone, tokenizer = load_model(model)
    image_tokenizer = build_tokenizer(spec)
    sampler = build_sampler(suite.sampler, tokenizer, image_tokenizer)
    lo, hi = sampler.codebook
    if getattr(backbone, "vocab_size", hi) < hi:
        raise MaskGRPOError(
            f"--model: {model} has a vocabulary of {backbone.vocab_size}, too small for the image codes "
            f"[{lo}, {hi}) of {suite.where}'s image_tokenizer (not a text-to-image model?)"
        )
    dev = resolve_device(device)
    backbone = backbone.to(dev) if hasattr(backbone, "to") else backbone
    n = suite.samples_per_prompt
    prompts = [r["prompt"] for r in rows for _ in range(n)]
    images: list[Any] = []
    with progress_bar(len(prompts), f"{suite.name}: generating", progress) as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            rows_ = list(range(start, start + len(chunk)))
            images += sample_images(backbone, tokenizer, image_tokenizer, sampler, chunk, len(chunk), suite.seed, dev, rows_)
            bar.update(len(chunk))
    if folder.exists():
        shutil.rmtree(folder)
    save_geneval_folder(folder, [r["row"] for r in rows], [images[i * n : (i + 1) * n] for i in range(len(rows))])
    return folder
