"""Suites: the schema of a suite file, finding one by name, loading and checking it.

A suite (YAML) names its data, the fields that hold the prompt and the gold answer, the metrics
(registry specs), the sampler that generates for it and how many samples per prompt. The file is
read by the recipe loader (`recipe.read_schema`: `--set` overrides, the path rule, one-line
errors naming the file and field).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import Field, field_validator, model_validator

from ..errors import MaskGRPOError
from ..paths import suite_dirs
from ..recipe import Spec, _Strict, read_schema
from ..registry import detectors, load_entry_point_plugins, load_plugins, metrics, samplers

__all__ = ["SUITE_PATHS", "Suite", "SuiteFields", "build_suite_sampler", "bundled_suites", "check_suite", "load_suite"]


MAX_SAMPLES_PER_PROMPT = 10_000
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096  # a few KB of PNG can claim 10000 x 10000 pixels (GiBs decoded)
MAX_IMAGE_PIXELS = 16384 * 16384


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
    samples_per_prompt: int = Field(1, ge=1, le=MAX_SAMPLES_PER_PROMPT)
    max_image_pixels: int = Field(
        DEFAULT_MAX_IMAGE_PIXELS,
        ge=1,
        le=MAX_IMAGE_PIXELS,
        description="image suites: a larger image (width x height, read from its header before decoding) cannot be read",
    )
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
    result = read_schema(path, Suite, list(overrides or []), SUITE_PATHS, source=str(path))
    if check_components:
        check_suite(result)
    return result


def check_suite(suite: Suite) -> None:
    """Check the suite's component specs against the registries (builds nothing heavy)."""
    load_entry_point_plugins()
    load_plugins(suite.plugins, suite.source_dir)
    for i, (_, spec) in enumerate(suite.metric_specs()):
        where = f"{suite.where}: metrics.{i}"
        _, values = metrics.validate(spec, where)
        if "detector" in values:
            detectors.validate(values["detector"], f"{where}.detector")
    if suite.modality == "text":
        build_suite_sampler(suite)
    else:
        flat = {"type": suite.sampler} if isinstance(suite.sampler, str) else suite.sampler
        if isinstance(flat, dict) and flat.get("type") in samplers:
            samplers.validate(suite.sampler, f"{suite.where}: sampler")


def build_suite_sampler(suite: Suite) -> Any:
    """The suite's sampler (a text suite's); errors name the suite file."""
    try:
        return samplers.build(suite.sampler, where="sampler")
    except MaskGRPOError as err:
        raise type(err)(f"{suite.where}: {err}") from None
