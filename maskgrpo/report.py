"""The run's human-readable summary: report.md and a PNG of reward and accuracy curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .utils import atomic_write_text


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def plot_curves(
    rows: list[dict[str, Any]], eval_history: list[dict[str, float]], target: Path, title: str, key: str = "eval/accuracy", label: str = "held-out greedy accuracy"
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [x["step"] for x in rows if "reward/mean" in x]
    rewards = [x["reward/mean"] for x in rows if "reward/mean" in x]
    ax.plot(steps, rewards, color="tab:blue", alpha=0.35, label="reward (batch mean)")
    window = max(1, len(rewards) // 20)
    if len(rewards) >= window:
        smooth = [sum(rewards[max(0, i - window + 1) : i + 1]) / len(rewards[max(0, i - window + 1) : i + 1]) for i in range(len(rewards))]
        ax.plot(steps, smooth, color="tab:blue", label=f"reward ({window}-step mean)")
    ax.plot([e["step"] for e in eval_history], [e[key] for e in eval_history], "o-", color="tab:red", label=label)
    ax.set_xlabel("GRPO step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = target.with_name(f".{target.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(target)


def write_report(
    out: Path, recipe: Any, eval_history: list[dict[str, float]], seconds: float, key: str = "eval/accuracy", label: str = "held-out greedy accuracy"
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
        "",
        "| metric | first 10% of steps | last 10% of steps |",
        "| --- | --- | --- |",
    ]
    for metric in ["reward/mean", *reward_keys, "frac_zero_std", "kl", "clip_ratio", "seconds"]:
        lines.append(f"| {metric} | {mean(first, metric):.4f} | {mean(last, metric):.4f} |")
    lines += ["", f"| step | {label} |", "| --- | --- |"]
    lines += [f"| {e['step']} | {e[key]:.3f} |" for e in eval_history]
    lines += ["", "![curves](curves.png)", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return {"before": before, "after": after, "steps": len(rows), "seconds": seconds}


def save_image_grid(images: list, captions: list[str], target: Path, cols: int = 8, scale: int = 3) -> None:
    """Samples people look at: each image enlarged, its prompt underneath."""
    from PIL import Image, ImageDraw

    if not images:
        return
    w, h = images[0].size
    cw, ch = w * scale, h * scale + 28
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * cw, rows * ch), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, caption) in enumerate(zip(images, captions)):
        x, y = (i % cols) * cw, (i // cols) * ch
        grid.paste(image.resize((w * scale, h * scale), Image.NEAREST), (x, y))
        words, line, lines = caption.replace("a photo of ", "").split(), "", []
        for word in words:
            if len(line) + len(word) > cw // 6:
                lines.append(line)
                line = ""
            line = f"{line} {word}".strip()
        lines.append(line)
        for k, text in enumerate(lines[:2]):
            draw.text((x + 2, y + h * scale + 2 + 12 * k), text, fill="black")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp.png")
    grid.save(tmp)
    tmp.replace(target)
