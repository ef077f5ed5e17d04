"""Reading what the harness scores: JSONL files, GenEval's folder layout, a suite's prompts.

Text outputs are a JSONL file with one object per line holding `completion` and the gold
`answer` (optional `prompt`/`question`). Image outputs are GenEval's folder layout,
`<index>/metadata.jsonl` (one GenEval row) + `<index>/samples/*.png`; `save_geneval_folder`
writes it. A bad row raises `MaskGRPOError` naming the file and line, or with `skip_bad` is
remembered in `BadRows` and skipped. An image that cannot be read (not a regular file, not an
image, more pixels than the suite's `max_image_pixels`) is an error too; with `skip_bad` it is a
failed sample (scored 0 with its reason), with `exclude_unreadable` it is left out; either way
it is counted. Only regular files are opened, and an image's size is checked on its header,
before a pixel is decoded.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

from ..errors import MaskGRPOError, UnreadableFile
from ..geneval_vocab import GENEVAL_COLORS, GENEVAL_RELATIONS, GENEVAL_TAGS
from ..tasks.jsonl import iter_jsonl, open_regular_file
from ..utils import atomic_save_image, atomic_write_text
from .suite import Suite

__all__ = [
    "IMAGE_SUFFIXES",
    "BadRows",
    "iter_jsonl",
    "open_image",
    "read_image_outputs",
    "read_suite_prompts",
    "read_text_outputs",
    "save_geneval_folder",
    "validate_geneval_row",
]

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")


# -- bad rows and JSONL ------------------------------------------------------------------------------
class BadRows:
    """Raise on a bad row, or (skip) remember it and go on. An unreadable image raises unless
    it is scored as a failure (skip) or left out (exclude_unreadable); either is remembered."""

    def __init__(self, skip: bool, exclude_unreadable: bool = False):
        self.skip = skip
        self.exclude_unreadable = exclude_unreadable
        self.reasons: list[str] = []
        self.unreadable: list[str] = []

    def __call__(self, message: str) -> None:
        if not self.skip:
            raise MaskGRPOError(message)
        self.reasons.append(message)

    def __len__(self) -> int:
        return len(self.reasons)

    def unreadable_sample(self, err: UnreadableFile) -> bool:
        """An output that cannot be read: True keeps it as a failed sample, False leaves it out."""
        if not (self.skip or self.exclude_unreadable):
            raise MaskGRPOError(str(err)) from None
        self.unreadable.append(str(err))
        return not self.exclude_unreadable


def _need_file(path: Path, what: str) -> None:
    if not path.exists():
        raise MaskGRPOError(f"{path}: file not found")
    if path.is_dir():
        raise MaskGRPOError(f"{path}: is a folder; {what}")
    if not path.is_file():
        raise MaskGRPOError(f"{path}: not a regular file")


def open_image(path: str | os.PathLike[str], max_pixels: int, decode: bool = True) -> Any:
    """The image at `path` as RGB (decode), or None once its header is checked (and, for a PNG,
    its chunks verified). Raises `UnreadableFile`: not a regular file, not an image, or more
    than `max_pixels` pixels (checked on the header, before decoding)."""
    from PIL import Image

    with open_regular_file(path) as f, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
        try:
            im = Image.open(f)
        except Image.DecompressionBombError:
            raise UnreadableFile(path, f"more pixels than PIL's limit ({2 * (Image.MAX_IMAGE_PIXELS or 0):,})") from None
        except Exception:
            raise UnreadableFile(path, "not an image") from None
        with im:
            width, height = im.size
            if width * height > max_pixels:
                raise UnreadableFile(path, f"{width}x{height} pixels, more than the suite's max_image_pixels {max_pixels}")
            try:
                if not decode:
                    im.verify()
                    return None
                return im.convert("RGB")
            except Exception as err:
                raise UnreadableFile(path, f"damaged image ({str(err)[:80] or type(err).__name__})") from None


# -- GenEval metadata and folders ----------------------------------------------------------------------
def validate_geneval_row(row: Any) -> str | None:
    """The first problem with a GenEval metadata row, or None when it is well-formed."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    tag = row.get("tag")
    if tag not in GENEVAL_TAGS:
        return f"unknown tag {tag!r} (known: {', '.join(GENEVAL_TAGS)})"
    if not isinstance(row.get("prompt"), str):
        return "missing 'prompt' (a string)"
    include = row.get("include")
    if not isinstance(include, list) or not include:
        return "'include' must be a non-empty list"
    for i, entry in enumerate(include):
        where = f"include.{i}"
        if not isinstance(entry, dict):
            return f"{where}: expected an object"
        extra = set(entry) - {"class", "count", "color", "position"}
        if extra:
            return f"{where}: unknown field {sorted(extra)[0]!r}"
        if not isinstance(entry.get("class"), str) or not entry["class"]:
            return f"{where}.class: missing or not a string"
        count = entry.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            return f"{where}.count: expected a positive integer, got {count!r}"
        if "color" in entry and entry["color"] not in GENEVAL_COLORS:
            return f"{where}.color: unknown colour {entry['color']!r} (known: {', '.join(GENEVAL_COLORS)})"
        if "position" in entry:
            pos = entry["position"]
            if not (isinstance(pos, list) and len(pos) == 2 and pos[0] in GENEVAL_RELATIONS and isinstance(pos[1], int)):
                return f"{where}.position: expected [relation, index] with relation in {', '.join(GENEVAL_RELATIONS)}, got {pos!r}"
            if not 0 <= pos[1] < i:
                return f"{where}.position: target {pos[1]} is not an earlier include entry"
    exclude = row.get("exclude", [])
    if not isinstance(exclude, list):
        return "'exclude' must be a list"
    for i, entry in enumerate(exclude):
        if not isinstance(entry, dict) or not isinstance(entry.get("class"), str):
            return f"exclude.{i}: expected {{class, count}}"
        count = entry.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            return f"exclude.{i}.count: expected a positive integer, got {count!r}"
    return None


def save_geneval_folder(path: str | os.PathLike[str], metadata_rows: Sequence[dict[str, Any]], images: Sequence[Sequence[Any]]) -> Path:
    """Write images in GenEval's layout: `<path>/<index:05d>/metadata.jsonl` (the row) and
    `<path>/<index:05d>/samples/<k:04d>.png`. `images[i]` are the PIL images for row i."""
    if len(metadata_rows) != len(images):
        raise ValueError(f"{len(metadata_rows)} metadata rows but {len(images)} image lists")
    root = Path(path)
    for i, (row, imgs) in enumerate(zip(metadata_rows, images)):
        folder = root / f"{i:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "metadata.jsonl", json.dumps(row) + "\n")
        for k, im in enumerate(imgs):
            atomic_save_image(im, folder / "samples" / f"{k:04d}.png")
    return root


# -- reading outputs ---------------------------------------------------------------------------------
def read_text_outputs(path: Path, suite: Suite, limit: int | None, bad: BadRows) -> list[dict[str, Any]]:
    """One sample per JSONL line: index, line, prompt, gold answer, completion."""
    _need_file(path, f"text suite '{suite.name}' scores a JSONL file with `completion` and `answer` per line")
    answer_keys = ["answer"] + ([suite.fields.answer] if suite.fields.answer and suite.fields.answer != "answer" else [])
    prompt_keys = ["prompt", "question"] + ([suite.fields.prompt] if suite.fields.prompt not in ("prompt", "question") else [])
    samples: list[dict[str, Any]] = []
    for lineno, row in iter_jsonl(path, bad):
        if limit is not None and len(samples) >= limit:
            break
        completion = row.get("completion")
        if completion is None:
            bad(f"{path}:{lineno}: missing 'completion'")
            continue
        if not isinstance(completion, str):
            bad(f"{path}:{lineno}: 'completion' must be a string, got {type(completion).__name__}")
            continue
        answer = next((row[k] for k in answer_keys if row.get(k) is not None), None)
        if answer is None:
            bad(f"{path}:{lineno}: missing {' or '.join(repr(k) for k in answer_keys)} (the gold answer)")
            continue
        if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
            bad(f"{path}:{lineno}: the gold answer must be a string or a number, got {type(answer).__name__}")
            continue
        prompt = next((row[k] for k in prompt_keys if isinstance(row.get(k), str)), "")
        samples.append({"index": len(samples), "line": lineno, "prompt": prompt, "answer": str(answer), "completion": completion})
    if not samples:
        raise MaskGRPOError(f"{path}: no samples to score" + (f" ({len(bad)} bad rows skipped)" if len(bad) else ""))
    return samples


def read_image_outputs(folder: Path, limit: int | None, bad: BadRows, max_pixels: int) -> list[dict[str, Any]]:
    """One entry per image: index, metadata, image path, and `unreadable` (the reason) for an
    image that cannot be read but is scored as a failure. Structure and image headers are
    checked here, before any metric is built."""
    if not folder.exists():
        raise MaskGRPOError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise MaskGRPOError(f"{folder}: not a folder; image suites score GenEval's layout (<index>/metadata.jsonl + <index>/samples/*.png)")
    indices = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not indices:
        raise MaskGRPOError(f"{folder}: no GenEval index folders (expected <index>/metadata.jsonl + <index>/samples/*.png)")
    if limit is not None:
        indices = indices[:limit]
    samples: list[dict[str, Any]] = []
    for index_dir in indices:
        meta_file = index_dir / "metadata.jsonl"
        if not meta_file.is_file():
            bad(f"{meta_file}: {'not a regular file' if meta_file.exists() else 'file not found'}")
            continue
        rows = list(iter_jsonl(meta_file, bad))
        if not rows:
            if not any(r.startswith(f"{meta_file}:") for r in bad.reasons):
                bad(f"{meta_file}: no metadata row")
            continue
        lineno, row = rows[0]
        problem = validate_geneval_row(row)
        if problem is not None:
            bad(f"{meta_file}:{lineno}: {problem}")
            continue
        sample_dir = index_dir / "samples"
        files = sorted(p for p in sample_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if sample_dir.is_dir() else []
        if not files:
            bad(f"{sample_dir}: no images (*.png)")
            continue
        for k, file in enumerate(files):
            sample = {
                "index": int(index_dir.name),
                "sample": k,
                "tag": row["tag"],
                "prompt": row["prompt"],
                "file": str(file.relative_to(folder)),
                "path": str(file.absolute()),
                "metadata": row,
            }
            try:
                open_image(file, max_pixels, decode=False)
                sample["path"] = str(file.resolve())
            except UnreadableFile as err:
                if not bad.unreadable_sample(err):
                    continue
                sample["unreadable"] = err.reason
            samples.append(sample)
    if not samples:
        left_out = [f"{len(bad)} bad entries skipped"] * bool(len(bad)) + [f"{len(bad.unreadable)} unreadable images excluded"] * bool(bad.unreadable)
        raise MaskGRPOError(f"{folder}: no images to score" + (f" ({', '.join(left_out)})" if left_out else ""))
    return samples


def read_suite_prompts(suite: Suite, limit: int | None, bad: BadRows) -> list[dict[str, Any]]:
    """The suite's own data rows (what `--model` generates for): line, prompt, answer, row."""
    path = suite.data_path
    _need_file(path, "a suite's `data` is a JSONL file")
    rows: list[dict[str, Any]] = []
    for lineno, row in iter_jsonl(path, bad):
        if limit is not None and len(rows) >= limit:
            break
        prompt = row.get(suite.fields.prompt)
        if not isinstance(prompt, str):
            bad(f"{path}:{lineno}: missing '{suite.fields.prompt}' (the prompt field)")
            continue
        answer = row.get(suite.fields.answer) if suite.fields.answer else None
        if suite.modality == "text" and answer is None:
            bad(f"{path}:{lineno}: missing '{suite.fields.answer}' (the answer field)")
            continue
        rows.append({"line": lineno, "prompt": prompt, "answer": None if answer is None else str(answer), "row": row})
    if not rows:
        raise MaskGRPOError(f"{path}: no prompts")
    return rows
