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
    python -m bench.seeds --combine bench/results/seeds-a.json bench/results/seeds-b.json --name ab  # one table
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
    parser.add_argument("recipe", nargs="?", help="the GRPO recipe (not with --combine)")
    parser.add_argument("--combine", nargs="+", metavar="JSON", help="merge result files of single-seed runs into one table (needs --name)")
    parser.add_argument("--suite", help="the suite that scores before and after (e.g. shapes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override for every seed")
    parser.add_argument("--eval-set", action="append", default=[], help="suite override, as `maskgrpo eval --set`")
    parser.add_argument("--before", default=None, help="the start model (default: the recipe's backbone preset)")
    parser.add_argument("--held-out", nargs="*", default=[], metavar="TAG", help="tags that must not fall (mean after >= before), e.g. colors position color_attr")
    parser.add_argument("--min-gain", type=float, default=0.10, help="the gain every seed must reach")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default=None, help="results name (default: the recipe's stem)")
    parser.add_argument("--out", default="runs/bench-seeds", help="folder for the runs")
    args = parser.parse_args()
    if args.combine:
        if not args.name:
            parser.error("--combine needs --name")
        return combine(args.name, args.combine)
    if not args.recipe or not args.suite:
        parser.error("give RECIPE and --suite (or --combine)")

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

    report(name, {"recipe": args.recipe, "overrides": args.overrides, "suite": args.suite, "eval_set": args.eval_set, "threads": args.threads, "held_out": args.held_out}, before, runs, args.min_gain)


def report(name: str, meta: dict[str, Any], before: dict[str, float], runs: list[dict[str, Any]], min_gain: float) -> None:
    """Print the per-tag table and the checks; save bench/results/seeds-NAME.json."""
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
        **meta,
        "seeds": [r["seed"] for r in runs],
        "before": before,
        "runs": runs,
        "gains": gains,
        "every_seed_gains": all(g >= min_gain for g in gains),
        "min_gain": min_gain,
        "stays_up": all((r["last_over_best"] or 0) >= 0.8 for r in runs),
        "held_out_falls": {r["tag"]: r["gain (mean)"] for r in rows if r["tag"] in meta.get("held_out", []) and r["gain (mean)"] < 0},
    }
    print(table(rows, list(rows[0])))
    print(
        f"gain per seed: {', '.join(f'{g:+.3f}' for g in gains)}; every seed >= {min_gain}: {summary['every_seed_gains']}; "
        f"last in-run eval >= 0.8 x best on every seed: {summary['stays_up']}; train s: {', '.join(str(r['train_seconds']) for r in runs)}"
    )
    if meta.get("held_out"):
        falls = summary["held_out_falls"]
        print(f"held-out tags ({', '.join(meta['held_out'])}) falling on the mean: {', '.join(f'{t} {d:+.3f}' for t, d in falls.items()) or 'none'}")
    best = [(r["seed"], r["best_model"]["overall"]) for r in runs if "best_model" in r]
    if best:
        print("model-best/: " + ", ".join(f"seed {s} {v:.3f} ({v - before['overall']:+.3f})" for s, v in best))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"seeds-{name}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"saved {path}")


def combine(name: str, paths: list[str]) -> None:
    """One table from several result files of the same recipe, overrides and suite (seeds run
    as separate commands, e.g. side by side at one thread each); the before scores must agree."""
    parts = []
    for p in paths:
        try:
            parts.append(json.loads(Path(p).read_text()))
        except (OSError, ValueError) as err:
            raise SystemExit(f"bench.seeds --combine: cannot read {p}: {err}") from None
    keys = ("recipe", "overrides", "suite", "eval_set")
    for p, part in zip(paths[1:], parts[1:]):
        differ = [k for k in keys + ("before",) if part.get(k) != parts[0].get(k)]
        if differ:
            raise SystemExit(f"bench.seeds --combine: {p} differs from {paths[0]} in {', '.join(differ)}")
    runs = sorted((r for part in parts for r in part["runs"]), key=lambda r: r["seed"])
    meta = {k: parts[0][k] for k in keys} | {"threads": parts[0].get("threads"), "held_out": parts[0].get("held_out", []), "combined_from": paths}
    report(name, meta, parts[0]["before"], runs, parts[0]["min_gain"])


if __name__ == "__main__":
    main()
