"""A GRPO recipe on several seeds, scored by a suite before and after: a claim about a recipe is
a distribution over seeds, never one run (issue 16: the same recipe went 0.117 -> 0.250 on one
machine and 0.117 -> 0.050 on another).

Each seed is one `maskgrpo train RECIPE --set seed=S` in its own process (the seed changes the
rollouts, the masks and the prompt order), then `maskgrpo eval SUITE --model` on the start
model (once), on `model/` and on `model-best/` when the run kept one. Reports per-tag mean +- std
before and after, the gain per seed, whether every seed gained at least `--min-gain`, the in-run
evaluations (last / best, the "stays up" check) and the wall time of each run.

    python -m bench.seeds recipes/shapes-grpo.yaml --suite shapes \\
        --eval-set samples_per_prompt=8 --eval-set seed=1            # 3 seeds, 480 images each
    python -m bench.seeds recipes/shapes-grpo-maskgit.yaml --suite shapes --eval-set sampler.type=maskgit ...
    python -m bench.seeds R --set grpo.beta=0.05 --name beta0.05     # a sweep point: same command, overrides
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .common import RESULTS, table


def maskgrpo(args: list[str], threads: int, log: Path) -> float:
    """Run `python -m maskgrpo ARGS` with `threads` torch threads; seconds of wall time. Output
    goes to `log`; a failure prints its tail and stops the benchmark."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    with log.open("a") as out:
        done = subprocess.run([sys.executable, "-m", "maskgrpo", *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise SystemExit(f"bench.seeds: `maskgrpo {' '.join(args)}` failed (exit {done.returncode}); log: {log}")
    return time.perf_counter() - start


def evaluate(suite: str, model: str, out: Path, eval_set: list[str], threads: int, log: Path) -> dict[str, float]:
    args = ["eval", suite, "--model", model, "--out", str(out), "--no-progress"]
    for assignment in eval_set:
        args += ["--set", assignment]
    maskgrpo(args, threads, log)
    return json.loads((out / "results.json").read_text())["metrics"]


def in_run_evaluations(run: Path) -> list[tuple[int, float]]:
    """(step, score) of the run's own evaluations, from metrics.jsonl (step 0 is in the report)."""
    points = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        for key in ("eval/geneval", "eval/accuracy"):
            if isinstance(row.get(key), (int, float)):
                points.append((row["step"], row[key]))
    return points


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe")
    parser.add_argument("--suite", required=True, help="the suite that scores before and after (e.g. shapes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override for every seed")
    parser.add_argument("--eval-set", action="append", default=[], help="suite override, as `maskgrpo eval --set`")
    parser.add_argument("--before", default=None, help="the start model (default: the recipe's backbone preset)")
    parser.add_argument("--min-gain", type=float, default=0.10, help="the gain every seed must reach")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default=None, help="results name (default: the recipe's stem)")
    parser.add_argument("--out", default="runs/bench-seeds", help="folder for the runs")
    args = parser.parse_args()

    import yaml

    recipe = yaml.safe_load(Path(args.recipe).read_text())
    name = args.name or Path(args.recipe).stem
    base = Path(args.out) / name
    base.mkdir(parents=True, exist_ok=True)
    log = base / "log.txt"
    before_model = args.before or recipe["backbone"]
    if not isinstance(before_model, str):
        raise SystemExit("bench.seeds: the recipe's backbone is not a preset name; give --before MODEL")
    print(f"{name}: {len(args.seeds)} seeds, overrides {args.overrides or 'none'}; log {log}", flush=True)
    before = evaluate(args.suite, before_model, base / "eval-before", args.eval_set, args.threads, log)
    print(f"  before: {before['overall']:.3f}", flush=True)

    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        run = base / f"seed{seed}"
        train_args = ["train", args.recipe, "--overwrite", "--no-progress", "--set", f"seed={seed}", "--set", f"output_dir={run}"]
        for assignment in args.overrides:
            train_args += ["--set", assignment]
        seconds = maskgrpo(train_args, args.threads, log)
        after = evaluate(args.suite, str(run / "model"), run / "eval-after", args.eval_set, args.threads, log)
        entry: dict[str, Any] = {"seed": seed, "train_seconds": round(seconds, 1), "after": after, "in_run": in_run_evaluations(run)}
        if (run / "model-best").is_dir():
            entry["best_model"] = evaluate(args.suite, str(run / "model-best"), run / "eval-best", args.eval_set, args.threads, log)
        scores = [s for _, s in entry["in_run"]]
        entry["last_over_best"] = scores[-1] / max(scores) if scores and max(scores) > 0 else None
        runs.append(entry)
        print(f"  seed {seed}: {before['overall']:.3f} -> {after['overall']:.3f} ({after['overall'] - before['overall']:+.3f}) in {seconds:.0f} s", flush=True)

    tags = [k for k in before if k != "overall"] + ["overall"]
    rows = [
        {
            "tag": tag,
            "before": before[tag],
            **{f"seed {r['seed']}": r["after"][tag] for r in runs},
            "after (mean ± std)": mean_std([r["after"][tag] for r in runs]),
            "gain (mean)": statistics.mean(r["after"][tag] for r in runs) - before[tag],
        }
        for tag in tags
    ]
    gains = [r["after"]["overall"] - before["overall"] for r in runs]
    summary = {
        "recipe": args.recipe,
        "overrides": args.overrides,
        "suite": args.suite,
        "eval_set": args.eval_set,
        "seeds": args.seeds,
        "threads": args.threads,
        "before": before,
        "runs": runs,
        "gains": gains,
        "every_seed_gains": all(g >= args.min_gain for g in gains),
        "min_gain": args.min_gain,
        "stays_up": all((r["last_over_best"] or 0) >= 0.8 for r in runs),
    }
    print(table(rows, list(rows[0])))
    print(
        f"gain per seed: {', '.join(f'{g:+.3f}' for g in gains)}; every seed >= {args.min_gain}: {summary['every_seed_gains']}; "
        f"last in-run eval >= 0.8 x best on every seed: {summary['stays_up']}; train s: {', '.join(str(r['train_seconds']) for r in runs)}"
    )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"seeds-{name}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
