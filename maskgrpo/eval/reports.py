"""The harness's reports: `failures.md` (text suites), `grid.png` and `report.html` (image
suites), the rich table printed by `maskgrpo eval`, and the rows of `samples.jsonl`."""

from __future__ import annotations

import html
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..report import save_image_grid
from ..utils import atomic_write_text
from .suite import Suite

__all__ = ["print_results", "public_sample", "unreadable_note", "write_failures_md", "write_grid_png", "write_report_html"]

MAX_FAILURE_ROWS = 1000  # failures.md lists at most this many
GRID_SAMPLES = 64


def public_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A sample as written to samples.jsonl (an image sample's metadata row is in its folder;
    its tag and prompt are kept)."""
    return {k: v for k, v in sample.items() if k != "metadata"}


def unreadable_note(results: dict[str, Any]) -> str | None:
    """What became of unreadable images ("2 unreadable images scored as failures", "1 unreadable
    image excluded from the score ..."), or None when every image could be read."""
    n = results.get("unreadable") or 0
    if not n:
        return None
    what = f"{n} unreadable image{'s' if n != 1 else ''}"
    if results.get("excluded"):
        return f"{what} excluded from the score (--exclude-unreadable)"
    return f"{what} scored as {'failures' if n != 1 else 'a failure'}"


def _cell(text: Any, width: int) -> str:
    s = "" if text is None else " ".join(str(text).split())
    if len(s) > width:
        s = s[: width - 1] + "\u2026"
    return s.replace("\\", "\\\\").replace("|", "\\|") or " "


def write_failures_md(target: Path, suite: Suite, samples: list[dict[str, Any]], results: dict[str, Any]) -> None:
    """A markdown table of the failed samples: question, gold, extracted answer, reason."""
    from ..metrics.math import gold_answer

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


def _open_image(sample: dict[str, Any], cell: int, max_pixels: int) -> Any:
    from PIL import Image

    from ..errors import UnreadableFile
    from .outputs import open_image

    if "unreadable" not in sample:  # an unreadable file is never opened again (it may be a FIFO)
        try:
            return open_image(sample["path"], max_pixels)
        except UnreadableFile:
            pass
    return Image.new("RGB", (cell, cell), (255, 255, 255))  # a failed sample without an image: blank


def write_grid_png(
    target: Path, suite: Suite, samples: list[dict[str, Any]], results: dict[str, Any], max_samples: int = GRID_SAMPLES, cols: int = 8, cell: int = 128
) -> None:
    """A grid of samples (the renderer the trainer's sample grids use): each image with a green
    (pass) or red (fail) border, its prompt and the reason a check failed."""
    picked = _pick_for_grid(samples, max_samples)
    metrics_line = ", ".join(f"{k} {v:.3f}" for k, v in results["metrics"].items() if isinstance(v, (int, float)))
    save_image_grid(
        [_open_image(s, cell, suite.max_image_pixels) for s in picked],
        [f"{s['index']}: {s.get('prompt', '')}" for s in picked],
        target,
        cols=cols,
        cell=cell,
        passed=[bool(s.get("correct")) for s in picked],
        notes=["PASS" if s.get("correct") else f"FAIL: {s.get('reason') or 'failed'}" for s in picked],
        header=[f"{suite.name}: {len(picked)} of {results['n']} samples (green: pass, red: fail)", metrics_line + (f"; {note}" if (note := unreadable_note(results)) else "")],
        caption_lines=3,
        note_lines=3,
    )


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
        f"<p>{results['n']} samples, {results['skipped']} skipped, {results['seconds']:.1f} s."
        + (f" {esc(note)}." if (note := unreadable_note(results)) else "")
        + "</p>",
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
            thumb = f"<img class='{'pass' if ok else 'fail'}' src='{esc(src)}'>" if "unreadable" not in s else "<span class='r'>(unreadable)</span>"
            parts.append(
                f"<tr><td>{thumb}</td><td>{s['index']}/{s.get('sample', 0)}</td>"
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
    if note := unreadable_note(results):
        console.print(note)
