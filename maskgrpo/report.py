"""The run's human-readable summary: report.md, a PNG of reward and accuracy curves, and the image
grid of samples (also `maskgrpo eval`'s grid.png)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, Sequence

from .utils import atomic_save_image, atomic_write_text


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def plot_curves(
    rows: list[dict[str, Any]], eval_history: list[dict[str, float]], target: Path, title: str, key: str = "eval/accuracy", label: str = "held-out greedy accuracy"
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    health = [k for k in ("kl", "entropy") if any(isinstance(x.get(k), (int, float)) for x in rows)]
    fig, axes = plt.subplots(2 if health else 1, 1, figsize=(7, 6.5 if health else 4), sharex=True, squeeze=False)
    ax = axes[0][0]
    steps = [x["step"] for x in rows if "reward/mean" in x]
    rewards = [x["reward/mean"] for x in rows if "reward/mean" in x]
    ax.plot(steps, rewards, color="tab:blue", alpha=0.35, label="reward (batch mean)")
    window = max(1, len(rewards) // 20)
    if len(rewards) >= window:
        smooth = [sum(rewards[max(0, i - window + 1) : i + 1]) / len(rewards[max(0, i - window + 1) : i + 1]) for i in range(len(rewards))]
        ax.plot(steps, smooth, color="tab:blue", label=f"reward ({window}-step mean)")
    ax.plot([e["step"] for e in eval_history], [e[key] for e in eval_history], "o-", color="tab:red", label=label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if health:  # drift from the reference and the rollouts' entropy: they move before the score falls
        low, right = axes[1][0], None
        for i, k in enumerate(health):
            target_ax = low if i == 0 else (right := low.twinx())
            pts = [(x["step"], x[k]) for x in rows if isinstance(x.get(k), (int, float))]
            target_ax.plot([a for a, _ in pts], [b for _, b in pts], color=("tab:purple", "tab:green")[i], label=k)
            target_ax.set_ylabel(k)
            if k == "kl":  # k3 is heavy-tailed once the policy drifts: a log scale keeps the start readable
                target_ax.set_yscale("symlog", linthresh=0.01)
        low.grid(alpha=0.3)
        low.legend(*[sum(z, []) for z in zip(*(a.get_legend_handles_labels() for a in (low, right) if a is not None))], loc="upper left")
    axes[-1][0].set_xlabel("GRPO step")
    fig.tight_layout()
    tmp = target.with_name(f".{target.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(target)


def write_report(
    out: Path,
    recipe: Any,
    eval_history: list[dict[str, float]],
    seconds: float,
    key: str = "eval/accuracy",
    label: str = "held-out greedy accuracy",
    best: dict[str, Any] | None = None,
) -> dict[str, Any]:
    rows = read_metrics(out / "metrics.jsonl")
    plot_curves(rows, eval_history, out / "curves.png", recipe.name, key, label)
    before, after = (eval_history[0][key], eval_history[-1][key]) if eval_history else (float("nan"), float("nan"))
    reward_keys = sorted({k for x in rows for k in x if k.startswith("reward/") and k.endswith("/mean") and k != "reward/mean"})
    first, last = rows[: max(1, len(rows) // 10)], rows[-max(1, len(rows) // 10) :]

    def mean(xs: list[dict[str, Any]], key: str) -> float:
        vals = [x[key] for x in xs if isinstance(x.get(key), (int, float))]
        return sum(vals) / len(vals) if vals else float("nan")

    lines = [
        f"# {recipe.name}",
        "",
        f"- estimator: `{json.dumps(recipe.estimator)}`, sampler: `{json.dumps(recipe.sampler)}`",
        f"- steps: {len(rows)}, group size {recipe.grpo.group_size}, mu {recipe.grpo.num_iterations}, "
        f"prompts per step {recipe.train.prompts_per_step}; wall time this session {seconds:.0f} s",
        f"- {label}: **{before:.3f} -> {after:.3f}** ({after - before:+.3f})" if eval_history else f"- {label}: no evaluation (the task has no eval data)",
        *([f"- best evaluation: {best['score']:.3f} at step {best['step']}, kept in `model-best/`"] if best else []),
        "",
        "| metric | first 10% of steps | last 10% of steps |",
        "| --- | --- | --- |",
    ]
    health_keys = sorted({k for x in rows for k in x if k.startswith("health/")})
    for metric in ["reward/mean", *reward_keys, "frac_zero_std", "kl", "entropy", "clip_ratio", *health_keys, "seconds"]:
        lines.append(f"| {metric} | {mean(first, metric):.4f} | {mean(last, metric):.4f} |")
    lines += ["", f"| step | {label} |", "| --- | --- |"]
    lines += [f"| {e['step']} | {e[key]:.3f} |" for e in eval_history]
    lines += ["", "![curves](curves.png)", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return {"before": before, "after": after, "steps": len(rows), "seconds": seconds}


PASS_COLOR, FAIL_COLOR = (40, 170, 60), (220, 40, 40)


def save_image_grid(
    images: Sequence[Any],
    captions: Sequence[str],
    target: Path,
    cols: int = 8,
    scale: int = 3,
    *,
    cell: int | None = None,
    passed: Sequence[bool] | None = None,
    notes: Sequence[str] | None = None,
    header: Sequence[str] = (),
    caption_lines: int = 2,
    note_lines: int = 3,
) -> None:
    """The one image grid people look at (training samples and `maskgrpo eval`'s grid.png): each
    image fitted into a square of `cell` pixels (default: `scale` times the first image, pixels
    kept sharp), its caption underneath. With `passed`, a green (pass) or red (fail) border and
    each image's `notes` (the reason a check failed) in that colour; `header` lines on top."""
    from PIL import Image, ImageDraw, ImageFont

    if not images:
        return
    try:
        font = ImageFont.load_default(11)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    side = cell or max(images[0].size) * scale
    border = 4 if passed is not None else 0
    line_h, pad = 13, 6
    text_lines = caption_lines + (note_lines if notes is not None else 0)
    cw = side + 2 * border + pad
    ch = side + 2 * border + text_lines * line_h + pad
    top = len(header) * line_h + pad if header else 0
    rows = (len(images) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * cw + pad, top + rows * ch + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, text in enumerate(header):
        draw.text((pad, 2 + j * line_h), _fit(text, font, canvas.width - 2 * pad), fill=(0, 0, 0) if j == 0 else (60, 60, 60), font=font)
    chars = max(8, int(side / max(font.getlength("n"), 1.0)))
    for i, image in enumerate(images[: len(captions)]):
        x0, y0 = pad + (i % cols) * cw, top + pad + (i // cols) * ch
        color = (0, 0, 0)
        if passed is not None:
            color = PASS_COLOR if passed[i] else FAIL_COLOR
            draw.rectangle((x0, y0, x0 + side + 2 * border - 1, y0 + side + 2 * border - 1), fill=color)
        im = image.convert("RGB")
        fit = side / max(im.size)
        im = im.resize((max(1, round(im.width * fit)), max(1, round(im.height * fit))), Image.NEAREST if fit >= 1 else Image.LANCZOS)
        canvas.paste(im, (x0 + border + (side - im.width) // 2, y0 + border + (side - im.height) // 2))
        lines = _wrap(captions[i].replace("a photo of ", ""), chars, caption_lines)
        shown = len(lines)
        if notes is not None:
            lines += _wrap(notes[i], chars, text_lines - shown)
        for j, text in enumerate(lines):
            draw.text((x0, y0 + side + 2 * border + 2 + j * line_h), text, fill=(0, 0, 0) if j < shown else color, font=font)
    atomic_save_image(canvas, target)


def _wrap(text: str, chars: int, most: int) -> list[str]:
    """`text` wrapped at `chars`, at most `most` lines; a cut ends in an ellipsis."""
    lines = textwrap.wrap(text, chars)
    if len(lines) > most > 0:
        lines = lines[:most]
        lines[-1] = lines[-1][: chars - 1] + "\u2026"
    return lines[: max(most, 0)]


def _fit(text: str, font: Any, width: float) -> str:
    while text and font.getlength(text) > width:
        text = text[:-2] + "\u2026" if len(text) > 2 else ""
    return text
