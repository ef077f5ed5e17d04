"""Scoring: the suite's metrics, built once, fed in batches; per-sample records are copied onto
the samples (what `samples.jsonl` shows) and `compute()` gives the suite's numbers."""

from __future__ import annotations

from typing import Any

from ..errors import MaskGRPOError, UnreadableFile
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
            self._copy_records(label, metric, start, samples)

    def fail(self, samples: list[dict[str, Any]], where: str) -> None:
        """Score samples whose output could not be read as failures: a metric with
        `record_failure(metadata, reason)` records its own failed result, one with a `scores`
        list gets 0 (its minimum); any other metric cannot, and that is an error."""
        for label, metric in self.items:
            before = self._per_sample(metric)
            start = len(before) if before is not None else 0
            record = getattr(metric, "record_failure", None)
            if callable(record):
                for s in samples:
                    record(s.get("metadata", {}), f"unreadable image: {s['unreadable']}")
            elif isinstance(getattr(metric, "scores", None), list):
                metric.scores.extend([0.0] * len(samples))
            else:
                raise MaskGRPOError(
                    f"{where}: metric '{label}' cannot score an unreadable image as a failure; "
                    "--exclude-unreadable leaves such images out (counted in results.json)"
                )
            self._copy_records(label, metric, start, samples)

    def _copy_records(self, label: str, metric: Any, start: int, samples: list[dict[str, Any]]) -> None:
        after = self._per_sample(metric)
        if after is None or len(after) - start != len(samples):
            return
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
    """The samples scored (an image that cannot be decoded is a failed sample, or with
    `bad.exclude_unreadable` left out) and the suite's numbers over them."""
    from .outputs import open_image

    scorer = MetricSet(suite)
    kept: list[dict[str, Any]] = []
    with progress_bar(len(samples), f"{suite.name}: scoring", progress) as bar:
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            readable, images, failed = [], [], []
            for s in chunk:
                if "unreadable" not in s:
                    try:
                        images.append(open_image(s["path"], suite.max_image_pixels))
                        readable.append(s)
                        continue
                    except UnreadableFile as err:
                        if not bad.unreadable_sample(err):
                            continue
                        s["unreadable"] = err.reason
                failed.append(s)
            if readable:
                scorer.update({"images": images, "metadata": [s["metadata"] for s in readable], "prompts": [s["metadata"]["prompt"] for s in readable]}, readable)
            if failed:
                scorer.fail(failed, suite.where)
            scored = {id(s) for s in readable + failed}
            kept.extend(s for s in chunk if id(s) in scored)
            bar.update(len(chunk))
    if not kept:
        raise MaskGRPOError("no images could be scored")
    return kept, scorer.compute()
