"""The entry points: `evaluate_suite` (from Python) and `run_eval_cli` (`maskgrpo eval`).

One evaluation: load the suite, read the outputs or generate them with the model, score them
with the suite's metrics, then write `results.json`, `samples.jsonl` and the report.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..errors import MaskGRPOError
from ..utils import atomic_write_text
from .generate import LoadedModel, generate_images, generate_text
from .outputs import BadRows, read_image_outputs, read_text_outputs
from .reports import print_results, public_sample, unreadable_note, write_failures_md, write_grid_png, write_report_html
from .score import score_images, score_text
from .suite import Suite, load_suite

__all__ = ["DEFAULT_BATCH_SIZE", "LoadedModel", "evaluate_suite", "run_eval_cli"]

DEFAULT_BATCH_SIZE = 64
MAX_REPORTED_SKIPS = 100  # results.json lists at most this many skip reasons


def check_output_dir(out_dir: Path) -> None:
    """The results folder must be creatable and writable: found out before minutes of
    generation, not after them."""
    if out_dir.exists() and not out_dir.is_dir():
        raise MaskGRPOError(f"--out: {out_dir} exists and is not a folder")
    parent = next((p for p in [out_dir, *out_dir.parents] if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise MaskGRPOError(f"--out: cannot write under {parent}")


def evaluate_suite(
    suite: str | os.PathLike[str] | Suite,
    *,
    model: str | LoadedModel | None = None,
    outputs: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    skip_bad: bool = False,
    exclude_unreadable: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    overrides: Sequence[str] | None = None,
    device: str = "auto",
    progress: bool | None = None,
    print_table: bool = False,
    accelerator: Any = None,
) -> dict[str, Any] | None:
    """Score a model (`model`: preset name or model folder; generate, then score) or existing
    `outputs` (text: JSONL of `completion` + `answer`; images: GenEval-layout folder) on `suite`
    (a path, a bundled suite name such as "gsm8k", or a `Suite`).

    Writes `results.json`, `samples.jsonl` and the report (`failures.md`, or `grid.png` and
    `report.html`) into `out` (default `runs/eval/<suite name>`) and returns the results dict.
    `limit`: first N prompts (text outputs: first N rows). `skip_bad`: skip malformed rows
    (counted in `skipped`) instead of raising, and score an image that cannot be read as a
    failed sample (counted in `unreadable`); `exclude_unreadable`: leave such images out of the
    score instead (counted in `excluded`). `progress`: None shows a bar
    when stderr is a terminal. `model` may also be a `LoadedModel` (the trainer's policy); with
    an `accelerator` every process generates its share and only the main process scores,
    writes and returns the results (the others return None).
    """
    if (model is None) == (outputs is None):
        raise MaskGRPOError("evaluate: give exactly one of `model` (generate, then score) or `outputs` (score only)")
    if limit is not None and limit < 1:
        raise MaskGRPOError(f"--limit: must be at least 1, got {limit}")
    if batch_size < 1:
        raise MaskGRPOError(f"--batch-size: must be at least 1, got {batch_size}")
    spec = load_suite(suite, overrides)
    out_dir = Path(out) if out is not None else Path("runs") / "eval" / spec.name
    check_output_dir(out_dir)  # before the work, not after it
    bad = BadRows(skip_bad, exclude_unreadable)
    t0 = time.perf_counter()
    generation_seconds = None
    if spec.modality == "text":
        if outputs is not None:
            samples = read_text_outputs(Path(outputs), spec, limit, bad)
        else:
            samples = generate_text(spec, model, limit, batch_size, progress, device, bad, accelerator)
            generation_seconds = time.perf_counter() - t0
            if accelerator is not None and not accelerator.is_main_process:
                return None
        scores = score_text(spec, samples, batch_size, progress)
    else:
        if model is not None:
            outputs = generate_images(spec, model, limit, batch_size, progress, device, bad, out_dir / "images", accelerator)
            generation_seconds = time.perf_counter() - t0
            if outputs is None:  # another process than the main one: its share is generated
                return None
        samples = read_image_outputs(Path(outputs), limit, bad, spec.max_image_pixels)
        samples, scores = score_images(spec, samples, batch_size, progress, bad)
    seconds = time.perf_counter() - t0
    results: dict[str, Any] = {
        "suite": spec.name,
        "suite_file": spec.source,
        "source": {"model": str(model)} if model is not None else {"outputs": str(outputs)},
        "metrics": scores,
        "n": len(samples),
        "skipped": len(bad),
        "seconds": round(seconds, 3),
        "samples_per_second": round(len(samples) / seconds, 2) if seconds > 0 else None,
        "prompts": len({s["index"] for s in samples}) if spec.modality == "image" or model is not None else None,
    }
    if results["prompts"] is None:
        del results["prompts"]
    if model is not None:
        results["samples_per_prompt"] = spec.samples_per_prompt
    if generation_seconds is not None:
        results["generation_seconds"] = round(generation_seconds, 3)
    if bad.reasons:
        results["skipped_reasons"] = bad.reasons[:MAX_REPORTED_SKIPS]
    if spec.modality == "image":  # unreadable images: failed samples (in n), or excluded (not in n)
        results["unreadable"] = len(bad.unreadable)
        results["excluded"] = len(bad.unreadable) if bad.exclude_unreadable else 0
        if bad.unreadable:
            results["unreadable_reasons"] = bad.unreadable[:MAX_REPORTED_SKIPS]

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "samples.jsonl", "".join(json.dumps(public_sample(s), ensure_ascii=False) + "\n" for s in samples))
    if spec.modality == "text":
        write_failures_md(out_dir / "failures.md", spec, samples, results)
    else:
        write_grid_png(out_dir / "grid.png", spec, samples, results)
        write_report_html(out_dir / "report.html", spec, samples, results)
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    if bad.reasons:
        print(f"maskgrpo: skipped {len(bad)} bad rows (first: {bad.reasons[0]})", file=sys.stderr)
    if bad.unreadable:
        print(f"maskgrpo: {unreadable_note(results)} (first: {bad.unreadable[0]})", file=sys.stderr)
    if print_table:
        print_results(results, out_dir)
    return results


def run_eval_cli(args: Any) -> int:
    """`maskgrpo eval SUITE (--model M | --outputs PATH) [--out DIR] [--limit N] [--skip-bad] [--exclude-unreadable] ...`"""
    evaluate_suite(
        args.suite,
        model=args.model,
        outputs=args.outputs,
        out=args.out,
        limit=args.limit,
        skip_bad=args.skip_bad,
        exclude_unreadable=getattr(args, "exclude_unreadable", False),
        batch_size=getattr(args, "batch_size", DEFAULT_BATCH_SIZE),
        overrides=getattr(args, "set", None) or [],
        device=getattr(args, "device", "auto"),
        progress=False if getattr(args, "no_progress", False) else None,
        print_table=True,
    )
    return 0
