"""Scoring: the suite's metrics, built once, fed in batches; per-sample records are copied onto
the samples (what `samples.jsonl` shows) and `compute()` gives the suite's numbers."""

from __future__ import annotations

from typing import Any

from ..errors import MaskGRPOError
from ..registry import metrics
from ..utils import progress_bar
from .outputs import BadRows
from .suite import Suite

__all__ = ["MetricSet", "score_images", "score_text"]


class MetricSet:
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


def score_text(suite: Suite, samples: list[dict[str, Any]], batch_size: int, progress: bool | None) -> dict[str, Any]:
    scorer = MetricSet(suite)
    with progress_bar(len(samples), f"{suite.name}: scoring", progress) as bar:
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


def score_images(suite: Suite, samples: list[dict[str, Any]], batch_size: int, progress: bool | None, bad: BadRows) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The samples whose image could be opened, and the suite's numbers over them."""
    from PIL import Image

    scorer = MetricSet(suite)
    kept: list[dict[str, Any]] = []
    with progress_bar(len(samples), f"{suite.name}: scoring", progress) as bar:
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
