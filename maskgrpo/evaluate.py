"""The evaluation harness: score a model, or outputs made elsewhere, on a suite.

Suites are YAML files: the package's own (`maskgrpo/suites/`, by name: `gsm8k`), those in the
folders of `$MASKGRPO_SUITES` (also by name), or any file by its path.

A suite (YAML, schema `Suite` below) names its data, the fields that hold the prompt and the
gold answer, the metrics (registry specs), the sampler that generates for it and how many samples
per prompt. Two ways in:

- `--model PRESET_OR_PATH`: generate with the suite's sampler, then score (text suites; image
  suites also need `image_tokenizer`, and keep the generated images in `<out>/images`);
- `--outputs PATH`: score existing outputs only. Text: a JSONL file with one object per line
  holding `completion` and the gold `answer` (optional `prompt`/`question`). Images: GenEval's
  folder layout, `<index>/metadata.jsonl` (one GenEval row) + `<index>/samples/*.png`.

Both write into the output folder: `results.json` (`{"suite", "metrics", "n", "skipped",
"seconds", "samples_per_second", ...}`), `samples.jsonl` (one verdict per sample, with the
extracted answer or the detections and the reason a check failed) and a report for people:
`failures.md` (text) or `grid.png` + `report.html` (images).

From Python, in one line::

    from maskgrpo.evaluate import evaluate_suite
    results = evaluate_suite("gsm8k", outputs="completions.jsonl")   # or a suite file's path

Bad input (missing file or folder, malformed JSONL line, an image that is not an image, an
unknown tag) raises `MaskGRPOError` naming the file and line; with `skip_bad` such a row is
skipped instead and counted in `results.json`.
"""

from __future__ import annotations

import copy
import html
import json
import math
import os
import shutil
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import pydantic
import yaml
from pydantic import Field, field_validator, model_validator

from .errors import MaskGRPOError, RecipeError, format_validation_error
from .paths import resolve_fields, suite_dirs
from .recipe import Spec, _Strict, apply_override
from .registry import detectors, load_entry_point_plugins, load_plugins, load_presets, metrics, samplers
from .utils import atomic_write_text

__all__ = [
    "GENEVAL_TAGS",
    "Suite",
    "SuiteFields",
    "bundled_suites",
    "evaluate_suite",
    "load_suite",
    "run_eval_cli",
    "save_geneval_folder",
    "validate_geneval_row",
]

GENEVAL_TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GENEVAL_RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")
DEFAULT_BATCH_SIZE = 64
MAX_FAILURE_ROWS = 1000  # failures.md lists at most this many
MAX_REPORTED_SKIPS = 100  # results.json lists at most this many skip reasons
GRID_SAMPLES = 64


# -- the suite schema -----------------------------------------------------------------------------
class SuiteFields(_Strict):
    """Which fields of a data row hold the prompt and the gold answer."""

    prompt: str = Field("prompt", description="field with the prompt (GSM8K: question, MATH500: problem)")
    answer: str | None = Field("answer", description="field with the gold answer; None for image suites")


class Suite(_Strict):
    """One evaluation suite (a YAML file; the bundled ones are in `maskgrpo/suites/`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="also the default output folder runs/eval/<name>")
    description: str = ""
    modality: Literal["text", "image"]
    data: str = Field(description="prompts (JSONL), relative to the suite file")
    fields: SuiteFields = SuiteFields()
    prompt_template: str = Field("{prompt}", description="how a prompt is shown to the model; must contain {prompt}")
    metrics: list[Spec] = Field(min_length=1, description="registry specs of `metrics`; an optional `name` labels one")
    sampler: Spec = Field(description="registry spec of `samplers` used to generate (--model)")
    image_tokenizer: Spec | None = Field(
        None, description="image suites: the VQ tokenizer that turns generated codes into images (--model); a relative `path` is relative to the suite file"
    )
    samples_per_prompt: int = Field(1, ge=1)
    seed: int = 0
    plugins: list[str] = Field([], description="modules or .py files (relative to the suite) to import first")
    licence: str | None = Field(None, description="where the data's licence notice is")

    source: str | None = Field(None, exclude=True)

    @field_validator("prompt_template")
    @classmethod
    def _has_slot(cls, v: str) -> str:
        if "{prompt}" not in v:
            raise ValueError("must contain '{prompt}'")
        return v

    @model_validator(mode="after")
    def _answer_for_text(self) -> "Suite":
        if self.modality == "text" and not self.fields.answer:
            raise ValueError("a text suite needs fields.answer (the gold answer field)")
        return self

    @property
    def source_dir(self) -> Path:
        return Path(self.source).resolve().parent if self.source else Path.cwd()

    @property
    def data_path(self) -> Path:
        path = Path(self.data)
        return path if path.is_absolute() else self.source_dir / path

    @property
    def where(self) -> str:
        return self.source or f"suite '{self.name}'"

    def format_prompt(self, prompt: str) -> str:
        # str.replace, not str.format: templates may hold LaTeX braces such as \boxed{}.
        return self.prompt_template.replace("{prompt}", prompt)

    def metric_specs(self) -> list[tuple[str, dict[str, Any]]]:
        """(label, registry spec without `name`) per metric; labels are unique."""
        out: list[tuple[str, dict[str, Any]]] = []
        seen: dict[str, int] = {}
        for spec in self.metrics:
            flat = {"type": spec} if isinstance(spec, str) else dict(spec)
            label = str(flat.pop("name", None) or flat.get("type"))
            seen[label] = seen.get(label, 0) + 1
            if seen[label] > 1:
                label = f"{label}_{seen[label]}"
            out.append((label, flat))
        return out


# The fields of a suite that hold paths it reads (`paths.resolve_fields`): relative to the suite
# file, or to the working directory for a `--set` value.
SUITE_PATHS: dict[str, str] = {
    "data": "file", "licence": "file", "metrics": "spec", "sampler": "spec", "image_tokenizer": "spec", "plugins": "plugins"
}


def _named_suites() -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for folder in suite_dirs():
        for file in sorted(Path(folder).glob("*.yaml")):
            found.setdefault(file.stem, []).append(file)
    return found


def bundled_suites() -> list[str]:
    """Names of the suites usable instead of a path: the package's own (`maskgrpo/suites/`) and
    those in the folders of `$MASKGRPO_SUITES`."""
    return sorted(_named_suites())


def _resolve_suite_path(suite: str | os.PathLike[str]) -> Path:
    path = Path(suite)
    if path.is_file():
        return path
    named = _named_suites().get(str(suite)) if not path.suffix and os.sep not in str(suite) else None
    if named and len(named) > 1:
        raise MaskGRPOError(f"suite '{suite}' is in more than one suite folder ({', '.join(map(str, named))}); give its path")
    if named:
        return named[0]
    if path.is_dir():
        raise MaskGRPOError(f"{path}: is a folder; expected a suite YAML file")
    raise MaskGRPOError(f"{path}: suite file not found (bundled suites: {', '.join(bundled_suites())})")


def load_suite(suite: str | os.PathLike[str] | Suite, overrides: Sequence[str] | None = None, check_components: bool = True) -> Suite:
    """Read and validate a suite: a path, the name of a bundled suite (`gsm8k`) or a `Suite`.

    `overrides` are `key=value` assignments as for recipes (`--set`). With `check_components`,
    every metric spec (and a geneval metric's detector) is checked against the registry and a
    text suite's sampler is built (cheap), so a typo fails here, naming the suite file and field.
    Image samplers that are not registered yet are only checked when generating.
    """
    if isinstance(suite, Suite):
        if overrides:
            raise MaskGRPOError("overrides apply to suite files; edit the Suite object instead")
        return suite
    path = _resolve_suite_path(suite)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{mark.line + 1}:" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"{path}:{where} invalid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a text file") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a suite must be a mapping of fields, got {type(data).__name__}")
    data = copy.deepcopy(data)
    resolve_fields(data, SUITE_PATHS, path.resolve().parent, where=str(path))  # the path rule: paths.py
    for assignment in overrides or []:
        try:
            apply_override(data, assignment, SUITE_PATHS)
        except MaskGRPOError as err:
            raise RecipeError(f"{path}: {err}") from None
    try:
        result = Suite.model_validate({**data, "source": str(path)})
    except pydantic.ValidationError as err:
        raise RecipeError(f"{path}: {format_validation_error(err)}") from None
    if check_components:
        check_suite(result)
    return result


def check_suite(suite: Suite) -> None:
    """Check the suite's component specs against the registries (builds nothing heavy)."""
    load_presets()
    load_entry_point_plugins()
    load_plugins(suite.plugins, suite.source_dir)
    for i, (_, spec) in enumerate(suite.metric_specs()):
        where = f"{suite.where}: metrics.{i}"
        _, values = metrics.validate(spec, where)
        if "detector" in values:
            detectors.validate(values["detector"], f"{where}.detector")
    if suite.modality == "text":
        _build_sampler(suite)
    else:
        flat = {"type": suite.sampler} if isinstance(suite.sampler, str) else suite.sampler
        if isinstance(flat, dict) and flat.get("type") in samplers:
            samplers.validate(suite.sampler, f"{suite.where}: sampler")


def _build_sampler(suite: Suite) -> Any:
    try:
        return samplers.build(suite.sampler, where="sampler")
    except MaskGRPOError as err:
        raise type(err)(f"{suite.where}: {err}") from None


# -- bad rows --------------------------------------------------------------------------------------
class _BadRows:
    """Raise on a bad row, or (skip_bad) remember it and go on."""

    def __init__(self, skip: bool):
        self.skip = skip
        self.reasons: list[str] = []

    def __call__(self, message: str) -> None:
        if not self.skip:
            raise MaskGRPOError(message)
        self.reasons.append(message)

    def __len__(self) -> int:
        return len(self.reasons)


def _iter_jsonl(path: Path, bad: _BadRows) -> Iterable[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; bad lines go to `bad` naming file:line."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                bad(f"{path}:{lineno}: not valid UTF-8 text")
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                bad(f"{path}:{lineno}: malformed JSON ({err.msg} at column {err.colno})")
                continue
            if not isinstance(obj, dict):
                bad(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                continue
            yield lineno, obj


def _need_file(path: Path, what: str) -> None:
    if not path.exists():
        raise MaskGRPOError(f"{path}: file not found")
    if path.is_dir():
        raise MaskGRPOError(f"{path}: is a folder; {what}")


# -- GenEval metadata --------------------------------------------------------------------------------
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
    from .metrics.detectors.base import GENEVAL_COLORS

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
            _save_image(im, folder / "samples" / f"{k:04d}.png")
    return root


def _save_image(image: Any, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".png", dir=target.parent)
    os.close(fd)
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- reading outputs ---------------------------------------------------------------------------------
def _read_text_outputs(path: Path, suite: Suite, limit: int | None, bad: _BadRows) -> list[dict[str, Any]]:
    _need_file(path, f"text suite '{suite.name}' scores a JSONL file with `completion` and `answer` per line")
    answer_keys = ["answer"] + ([suite.fields.answer] if suite.fields.answer and suite.fields.answer != "answer" else [])
    prompt_keys = ["prompt", "question"] + ([suite.fields.prompt] if suite.fields.prompt not in ("prompt", "question") else [])
    samples: list[dict[str, Any]] = []
    for lineno, row in _iter_jsonl(path, bad):
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


def _read_image_outputs(folder: Path, limit: int | None, bad: _BadRows) -> list[dict[str, Any]]:
    """One entry per image: index, metadata, image path. Structure and image headers are checked
    here, before any metric is built."""
    from PIL import Image

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
            bad(f"{meta_file}: file not found")
            continue
        rows = list(_iter_jsonl(meta_file, bad))
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
            try:
                with Image.open(file) as im:
                    im.verify()
            except Exception:
                bad(f"{file}: not an image")
                continue
            samples.append(
                {
                    "index": int(index_dir.name),
                    "sample": k,
                    "tag": row["tag"],
                    "prompt": row["prompt"],
                    "file": str(file.relative_to(folder)),
                    "path": str(file.resolve()),
                    "metadata": row,
                }
            )
    if not samples:
        raise MaskGRPOError(f"{folder}: no images to score" + (f" ({len(bad)} bad entries skipped)" if len(bad) else ""))
    return samples


def _read_suite_prompts(suite: Suite, limit: int | None, bad: _BadRows) -> list[dict[str, Any]]:
    path = suite.data_path
    _need_file(path, "a suite's `data` is a JSONL file")
    rows: list[dict[str, Any]] = []
    for lineno, row in _iter_jsonl(path, bad):
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


# -- scoring ---------------------------------------------------------------------------------------
class _MetricSet:
    """The suite's metrics, built; per-sample records are collected from each after `update`."""

    def __init__(self, suite: Suite):
        self.items: list[tuple[str, Any]] = []
        for i, (label, spec) in enumerate(suite.metric_specs()):
            try:
                self.items.append((label, metrics.build(spec, where=f"metrics.{i}")))
            except MaskGRPOError as err:
                raise type(err)(f"{suite.where}: {err}") from None

    @staticmethod
    def _per_sample(metric: Any) -> list[Any] | None:
        for attr in ("records", "scores"):
            value = getattr(metric, attr, None)
            if isinstance(value, list):
                return value
        return None

    def update(self, batch: dict[str, Any], samples: list[dict[str, Any]]) -> None:
        for label, metric in self.items:
            before = self._per_sample(metric)
            start = len(before) if before is not None else 0
            metric.update(batch)
            after = self._per_sample(metric)
            if after is None or len(after) - start != len(samples):
                continue
            for sample, rec in zip(samples, after[start:]):
                if isinstance(rec, dict):
                    for k, v in rec.items():
                        if k in ("completion", "answer", "prompt", "tag"):
                            continue
                        sample[k if k not in sample else f"{label}/{k}"] = v
                else:
                    sample[label] = rec

    def compute(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for label, metric in self.items:
            for k, v in metric.compute().items():
                if k == "n":
                    continue
                out[k if k not in out else f"{label}/{k}"] = v
        return out


def _progress(total: int, desc: str, enabled: bool | None) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", disable=(None if enabled is None else not enabled), leave=False, file=sys.stderr)


def _score_text(suite: Suite, samples: list[dict[str, Any]], batch_size: int, progress: bool | None) -> dict[str, Any]:
    scorer = _MetricSet(suite)
    with _progress(len(samples), f"{suite.name}: scoring", progress) as bar:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            batch = {
                "completions": [s["completion"] for s in chunk],
                "answers": [s["answer"] for s in chunk],
                "prompts": [s["prompt"] for s in chunk],
            }
            scorer.update(batch, chunk)
            bar.update(len(chunk))
    return scorer.compute()


def _score_images(suite: Suite, samples: list[dict[str, Any]], batch_size: int, progress: bool | None, bad: _BadRows) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from PIL import Image

    scorer = _MetricSet(suite)
    kept: list[dict[str, Any]] = []
    with _progress(len(samples), f"{suite.name}: scoring", progress) as bar:
        for start in range(0, len(samples), batch_size):
            chunk, images = [], []
            for s in samples[start : start + batch_size]:
                try:
                    with Image.open(s["path"]) as im:
                        images.append(im.convert("RGB"))
                except Exception:
                    bad(f"{s['path']}: not an image")
                    continue
                chunk.append(s)
            if chunk:
                batch = {"images": images, "metadata": [s["metadata"] for s in chunk], "prompts": [s["metadata"]["prompt"] for s in chunk]}
                scorer.update(batch, chunk)
                kept.extend(chunk)
            bar.update(len(samples[start : start + batch_size]))
    if not kept:
        raise MaskGRPOError("no images could be scored")
    return kept, scorer.compute()


def _check_length(backbone: Any, tokenizer: Any, sampler: Any, suite: Suite, rows: list[dict[str, Any]]) -> None:
    """The in-house transformer has a fixed maximum length: say which prompt does not fit
    (prompt + gen_length) before generating, not deep inside the sampler."""
    from .backbones.transformer import MaskedTransformer

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


def _generate_text(suite: Suite, model: str, limit: int | None, batch_size: int, progress: bool | None, device: str, bad: _BadRows) -> list[dict[str, Any]]:
    from .components import load_model
    from .generation import generate
    from .utils import resolve_device

    rows = _read_suite_prompts(suite, limit, bad)
    sampler = _build_sampler(suite)
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
    with _progress(len(samples), f"{suite.name}: generating", progress) as bar:
        for start in range(0, len(samples), batch_size):
            chunk = prompts[start : start + batch_size]
            rows_ = list(range(start, start + len(chunk)))  # sample i's own generator: the batch size changes nothing
            completions = generate(backbone, tokenizer, sampler, chunk, batch_size=len(chunk), seed=suite.seed, device=dev, row_ids=rows_)
            for s, c in zip(samples[start : start + batch_size], completions):
                s["completion"] = c
            bar.update(len(chunk))
    return samples


def _generate_images(
    suite: Suite, model: str, limit: int | None, batch_size: int, progress: bool | None, device: str, bad: _BadRows, folder: Path
) -> Path:
    """Sample `samples_per_prompt` images per suite row and write them in GenEval's layout to
    `folder`, which is then scored like any `--outputs` folder."""
    from .components import build_sampler, build_tokenizer, load_model
    from .generation import generate_images
    from .utils import resolve_device

    if suite.image_tokenizer is None:
        raise MaskGRPOError(f"{suite.where}: image_tokenizer: needed to turn generated codes into images (--model)")
    spec = suite.image_tokenizer  # its relative paths were resolved when the suite was read
    rows = _read_suite_prompts(suite, limit, bad)
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
    with _progress(len(prompts), f"{suite.name}: generating", progress) as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            rows_ = list(range(start, start + len(chunk)))
            images += generate_images(backbone, tokenizer, image_tokenizer, sampler, chunk, len(chunk), suite.seed, dev, rows_)
            bar.update(len(chunk))
    if folder.exists():
        shutil.rmtree(folder)
    save_geneval_folder(folder, [r["row"] for r in rows], [images[i * n : (i + 1) * n] for i in range(len(rows))])
    return folder


# -- reports ---------------------------------------------------------------------------------------
def _cell(text: Any, width: int) -> str:
    s = "" if text is None else " ".join(str(text).split())
    if len(s) > width:
        s = s[: width - 1] + "\u2026"
    return s.replace("\\", "\\\\").replace("|", "\\|") or " "


def write_failures_md(target: Path, suite: Suite, samples: list[dict[str, Any]], results: dict[str, Any]) -> None:
    """A markdown table of the failed samples: question, gold, extracted answer, reason."""
    from .metrics.math import gold_answer

    failures = [s for s in samples if s.get("correct") is False]
    shown = failures[:MAX_FAILURE_ROWS]
    headline = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in results["metrics"].items())
    lines = [
        f"# {suite.name}: failures",
        "",
        f"{headline} over {results['n']} samples; {len(failures)} failed"
        + (f" (first {len(shown)} shown)" if len(shown) < len(failures) else "")
        + (f"; {results['skipped']} bad rows skipped" if results["skipped"] else "")
        + ".",
        "",
    ]
    if not shown:
        lines.append("No failures.")
    else:
        lines += ["| # | line | question | gold | extracted | reason |", "| ---: | ---: | --- | --- | --- | --- |"]
        for s in shown:
            gold = gold_answer(s["answer"]) if isinstance(s.get("answer"), str) else s.get("answer")
            lines.append(
                f"| {s['index']} | {s.get('line', '')} | {_cell(s.get('prompt'), 80)} | {_cell(gold, 30)} "
                f"| {_cell(s.get('extracted') if s.get('extracted') is not None else '(none)', 30)} | {_cell(s.get('reason'), 40)} |"
            )
    atomic_write_text(target, "\n".join(lines) + "\n")


def _pick_for_grid(samples: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Up to `limit` samples, taken round-robin over tags so every tag is shown."""
    by_tag: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        by_tag[s.get("tag", "")].append(s)
    picked: list[dict[str, Any]] = []
    queues = [list(v) for v in by_tag.values()]
    while len(picked) < limit and any(queues):
        for q in queues:
            if q and len(picked) < limit:
                picked.append(q.pop(0))
    return sorted(picked, key=lambda s: (s["index"], s.get("sample", 0)))


def write_grid_png(target: Path, suite: Suite, samples: list[dict[str, Any]], results: dict[str, Any], max_samples: int = GRID_SAMPLES, cols: int = 8, cell: int = 128) -> None:
    """A grid of samples: each image with a green (pass) or red (fail) border, its prompt and the
    reason a check failed."""
    from PIL import Image, ImageDraw, ImageFont

    picked = _pick_for_grid(samples, max_samples)
    try:
        font = ImageFont.load_default(11)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    line_h = 13
    text_lines = 6
    border, pad = 4, 6
    cw = cell + 2 * border + pad
    ch = cell + 2 * border + text_lines * line_h + pad
    rows = max(1, math.ceil(len(picked) / cols))
    header = 2 * line_h + pad
    canvas = Image.new("RGB", (cols * cw + pad, header + rows * ch + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    metrics_line = ", ".join(f"{k} {v:.3f}" for k, v in results["metrics"].items() if isinstance(v, (int, float)))
    draw.text((pad, 2), f"{suite.name}: {len(picked)} of {results['n']} samples (green: pass, red: fail)", fill=(0, 0, 0), font=font)
    draw.text((pad, 2 + line_h), _fit(metrics_line, font, canvas.width - 2 * pad), fill=(60, 60, 60), font=font)
    chars = max(8, int(cell / max(font.getlength("n"), 1.0)))
    for i, s in enumerate(picked):
        x0 = pad + (i % cols) * cw
        y0 = header + (i // cols) * ch
        color = (40, 170, 60) if s.get("correct") else (220, 40, 40)
        draw.rectangle((x0, y0, x0 + cell + 2 * border - 1, y0 + cell + 2 * border - 1), fill=color)
        try:
            with Image.open(s["path"]) as im:
                im = im.convert("RGB")
                scale = cell / max(im.size)
                size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
                im = im.resize(size, Image.NEAREST if scale >= 1 else Image.LANCZOS)
        except Exception:
            im = Image.new("RGB", (cell, cell), (255, 255, 255))
        canvas.paste(im, (x0 + border + (cell - im.width) // 2, y0 + border + (cell - im.height) // 2))
        prompt = textwrap.wrap(f"{s['index']}: {s.get('prompt', '')}", chars)[:3]
        verdict = "PASS" if s.get("correct") else f"FAIL: {s.get('reason') or 'failed'}"
        lines = prompt + textwrap.wrap(verdict, chars)[: text_lines - len(prompt)]
        for j, text in enumerate(lines):
            fill = (0, 0, 0) if j < len(prompt) else color
            draw.text((x0, y0 + cell + 2 * border + 2 + j * line_h), text, fill=fill, font=font)
    _save_image(canvas, target)


def _fit(text: str, font: Any, width: float) -> str:
    while text and font.getlength(text) > width:
        text = text[:-2] + "\u2026" if len(text) > 2 else ""
    return text


def write_report_html(target: Path, suite: Suite, samples: list[dict[str, Any]], results: dict[str, Any]) -> None:
    """Every sample, grouped by tag: thumbnail (green/red border), prompt, verdict, reason, detections."""
    esc = html.escape
    by_tag: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in samples:
        by_tag[s.get("tag", "")].append(s)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{esc(suite.name)} evaluation</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:13px}"
        "img{width:96px;image-rendering:pixelated;border:4px solid}.pass{border-color:#28aa3c}.fail{border-color:#dc2828}"
        ".r{color:#b00}</style></head><body>",
        f"<h1>{esc(suite.name)}</h1>",
        f"<p>{results['n']} samples, {results['skipped']} skipped, {results['seconds']:.1f} s.</p>",
        "<table><tr><th>metric</th><th>value</th></tr>",
    ]
    for k, v in results["metrics"].items():
        parts.append(f"<tr><td>{esc(str(k))}</td><td>{v:.4f}</td></tr>" if isinstance(v, float) else f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>")
    parts.append("</table>")
    base = target.parent.resolve()
    for tag, items in by_tag.items():
        passed = sum(1 for s in items if s.get("correct"))
        parts.append(f"<h2>{esc(tag or 'samples')}: {passed}/{len(items)} pass</h2>")
        parts.append("<table><tr><th>image</th><th>#</th><th>prompt</th><th>verdict</th><th>detections</th></tr>")
        for s in items:
            ok = bool(s.get("correct"))
            src = Path(os.path.relpath(s["path"], base)).as_posix()
            dets = ", ".join(
                f"{d.get('color', '') + ' ' if d.get('color') else ''}{d.get('label', '?')} {d.get('score', 0):.2f}" for d in s.get("detections", [])
            )
            verdict = "pass" if ok else f"<span class='r'>fail: {esc(s.get('reason') or '')}</span>"
            parts.append(
                f"<tr><td><img class='{'pass' if ok else 'fail'}' src='{esc(src)}'></td><td>{s['index']}/{s.get('sample', 0)}</td>"
                f"<td>{esc(s.get('prompt', ''))}</td><td>{verdict}</td><td>{esc(dets)}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    atomic_write_text(target, "\n".join(parts) + "\n")


def print_results(results: dict[str, Any], out: Path, file: Any = None) -> None:
    """The metrics as a table (rich), then counts, speed and where the files are."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file or sys.stdout, highlight=False)
    table = Table(title=f"{results['suite']} ({results['n']} samples)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in results["metrics"].items():
        table.add_row(str(k), f"{v:.4f}" if isinstance(v, float) else str(v))
    console.print(table)
    console.print(
        f"n {results['n']}, skipped {results['skipped']}, {results['seconds']:.1f} s "
        f"({results['samples_per_second']:.1f} samples/s); results in {out}"
    )


# -- the entry points -----------------------------------------------------------------------------
def evaluate_suite(
    suite: str | os.PathLike[str] | Suite,
    *,
    model: str | None = None,
    outputs: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    skip_bad: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    overrides: Sequence[str] | None = None,
    device: str = "auto",
    progress: bool | None = None,
    print_table: bool = False,
) -> dict[str, Any]:
    """Score a model (`model`: preset name or model folder; generate, then score) or existing
    `outputs` (text: JSONL of `completion` + `answer`; images: GenEval-layout folder) on `suite`
    (a path, a bundled suite name such as "gsm8k", or a `Suite`).

    Writes `results.json`, `samples.jsonl` and the report (`failures.md`, or `grid.png` and
    `report.html`) into `out` (default `runs/eval/<suite name>`) and returns the results dict.
    `limit`: first N prompts (text outputs: first N rows). `skip_bad`: skip malformed rows and
    unreadable images (counted in `skipped`) instead of raising. `progress`: None shows a bar
    when stderr is a terminal.
    """
    if (model is None) == (outputs is None):
        raise MaskGRPOError("evaluate: give exactly one of `model` (generate, then score) or `outputs` (score only)")
    if limit is not None and limit < 1:
        raise MaskGRPOError(f"--limit: must be at least 1, got {limit}")
    if batch_size < 1:
        raise MaskGRPOError(f"--batch-size: must be at least 1, got {batch_size}")
    spec = load_suite(suite, overrides)
    out_dir = Path(out) if out is not None else Path("runs") / "eval" / spec.name
    bad = _BadRows(skip_bad)
    t0 = time.perf_counter()
    generation_seconds = None
    if spec.modality == "text":
        if outputs is not None:
            samples = _read_text_outputs(Path(outputs), spec, limit, bad)
        else:
            samples = _generate_text(spec, str(model), limit, batch_size, progress, device, bad)
            generation_seconds = time.perf_counter() - t0
        scores = _score_text(spec, samples, batch_size, progress)
    else:
        if model is not None:
            outputs = _generate_images(spec, str(model), limit, batch_size, progress, device, bad, out_dir / "images")
            generation_seconds = time.perf_counter() - t0
        samples = _read_image_outputs(Path(outputs), limit, bad)
        samples, scores = _score_images(spec, samples, batch_size, progress, bad)
    seconds = time.perf_counter() - t0
    results: dict[str, Any] = {
        "suite": spec.name,
        "suite_file": spec.source,
        "source": {"model": model} if model is not None else {"outputs": str(outputs)},
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

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "samples.jsonl", "".join(json.dumps(_public(s), ensure_ascii=False) + "\n" for s in samples))
    if spec.modality == "text":
        write_failures_md(out_dir / "failures.md", spec, samples, results)
    else:
        write_grid_png(out_dir / "grid.png", spec, samples, results)
        write_report_html(out_dir / "report.html", spec, samples, results)
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2) + "\n")
    if bad.reasons:
        print(f"maskgrpo: skipped {len(bad)} bad rows (first: {bad.reasons[0]})", file=sys.stderr)
    if print_table:
        print_results(results, out_dir)
    return results


def _public(sample: dict[str, Any]) -> dict[str, Any]:
    """A sample as written to samples.jsonl (an image sample's metadata row is in its folder;
    its tag and prompt are kept)."""
    return {k: v for k, v in sample.items() if k != "metadata"}


def run_eval_cli(args: Any) -> int:
    """`maskgrpo eval SUITE (--model M | --outputs PATH) [--out DIR] [--limit N] [--skip-bad] ...`"""
    evaluate_suite(
        args.suite,
        model=args.model,
        outputs=args.outputs,
        out=args.out,
        limit=args.limit,
        skip_bad=args.skip_bad,
        batch_size=getattr(args, "batch_size", DEFAULT_BATCH_SIZE),
        overrides=getattr(args, "set", None) or [],
        device=getattr(args, "device", "auto"),
        progress=False if getattr(args, "no_progress", False) else None,
        print_table=True,
    )
    return 0
