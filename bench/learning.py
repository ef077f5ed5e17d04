"""The paper's text ablation in miniature: each estimator on one world with the same budget and
three seeds; held-out greedy accuracy before and after, mean +- std, the reward curves as one
PNG, and (chain) the noise of each estimator's log-likelihood estimate against the ELBO.

No estimator is tuned more than another: every run is its recipe, and a world's recipes differ
only in the estimator (tests/test_recipe.py checks it), run with the same overrides. The seed
changes the rollouts, the masks and the problem order.

    python -m bench.learning --world chain        # 6 estimators x 3 seeds (issue 13's table)
    python -m bench.learning                      # the arithmetic world (8-token completions)
    python -m bench.learning --world chain --steps 10 --seeds 0 --estimators fading_out d1
    python -m bench.learning --world chain --estimators d1 trace --name learning-chain-a   # one half per core
    python -m bench.learning --world chain --combine bench/results/learning-chain-*.json --name learning-chain
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from maskgrpo.recipe import load_recipe
from maskgrpo.trainer import GRPOTrainer

from .common import RESULTS, save, table

WORLDS = {
    "arith": {
        "d1": "recipes/arith-grpo-d1.yaml",
        "unigrpo": "recipes/arith-grpo-unigrpo.yaml",
        "random": "recipes/arith-grpo-random.yaml",
        "fading_out": "recipes/arith-grpo.yaml",
        "trace": "recipes/arith-grpo-trace.yaml",
    },
    # the paper's steps in order: d1 -> random masks at fixed seeds -> fading-out (AR-like) ->
    # the truncated rate range (gamma 0 -> 0.6); UniGRPO and TraceRL beside them
    "chain": {
        "d1": "recipes/chain-grpo-d1.yaml",
        "unigrpo": "recipes/chain-grpo-unigrpo.yaml",
        "trace": "recipes/chain-grpo-trace.yaml",
        "random": "recipes/chain-grpo-random.yaml",
        "fading_out_gamma0": "recipes/chain-grpo-gamma0.yaml",
        "fading_out": "recipes/chain-grpo.yaml",
    },
}


def reward_curve(run: Path) -> list[float]:
    """The batch reward of every step, from the run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [row["reward/mean"] for row in rows if "reward/mean" in row]


def plot_curves(curves: dict[str, list[list[float]]], path: Path, title: str) -> Path:
    """Mean batch reward over seeds per estimator (band: min..max over seeds), one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, runs in curves.items():
        steps = min(len(c) for c in runs)
        per_step = [[c[s] for c in runs] for s in range(steps)]
        x = range(1, steps + 1)
        ax.plot(x, [statistics.mean(v) for v in per_step], label=name)
        ax.fill_between(x, [min(v) for v in per_step], [max(v) for v in per_step], alpha=0.15)
    ax.set(xlabel="GRPO step", ylabel="batch reward (mean over seeds)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def summarise(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, list[list[float]]]]:
    """One row per estimator (in order of first appearance) over its seeds, and its reward curves."""
    by_estimator: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_estimator.setdefault(run["estimator"], []).append(run)
    rows = []
    for estimator, group in by_estimator.items():
        finals = [r["after"] for r in group]
        rows.append(
            {
                "estimator": estimator,
                "seeds": len(group),
                "before": group[0]["before"],
                "after mean": statistics.mean(finals),
                "after std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                "gain": statistics.mean(finals) - group[0]["before"],
                "seconds/run": statistics.mean(r["seconds"] for r in group),
            }
        )
    return rows, {e: [r["rewards"] for r in group] for e, group in by_estimator.items()}


def read_runs(path: Path) -> list[dict[str, Any]]:
    """The runs of an earlier bench.learning result file; one line naming the file if unreadable."""
    try:
        return list(json.loads(path.read_text())["runs"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"bench.learning: --combine: {path}: not a bench.learning result ({type(exc).__name__}: {exc})") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=sorted(WORLDS), default="arith")
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps per run (default: the recipe's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--estimators", nargs="+", default=None, help="a subset of the world's (default: all)")
    parser.add_argument("--no-variance", action="store_true", help="skip the log-likelihood noise measurement")
    parser.add_argument("--combine", nargs="+", metavar="JSON", help="merge earlier result files (e.g. parallel halves) into one table and PNG; runs nothing")
    parser.add_argument("--name", default=None, help="results name (default learning[-WORLD]); give two parallel halves their own")
    args = parser.parse_args()
    recipes = WORLDS[args.world]
    names = args.estimators or list(recipes)
    unknown = [n for n in names if n not in recipes]
    if unknown:
        raise SystemExit(f"bench.learning: --estimators: {unknown} not in world {args.world!r} ({', '.join(recipes)})")
    name = args.name or ("learning" if args.world == "arith" else f"learning-{args.world}")
    runs = [r for f in args.combine for r in read_runs(Path(f))] if args.combine else []
    for estimator in [] if args.combine else names:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                overrides = [f"seed={seed}", f"output_dir={tmp}/run", "train.eval_every=0"]
                if args.steps:
                    overrides.append(f"train.steps={args.steps}")
                trainer = GRPOTrainer(load_recipe(recipes[estimator], overrides), progress=False)
                start = time.time()
                summary = trainer.train()
                seconds = time.time() - start
                rewards = reward_curve(Path(tmp) / "run")
            runs.append({"estimator": estimator, "seed": seed, "before": summary["before"], "after": summary["after"], "seconds": seconds, "rewards": rewards})
            print(f"{estimator} seed {seed}: {summary['before']:.3f} -> {summary['after']:.3f} ({seconds:.0f} s)", flush=True)
    rows, curves = summarise(runs)
    print(table(rows, ["estimator", "seeds", "before", "after mean", "after std", "gain", "seconds/run"]))
    RESULTS.mkdir(exist_ok=True)
    png = plot_curves(curves, RESULTS / f"{name}.png", f"GRPO on the {args.world} world, seeds {sorted({r['seed'] for r in runs})}")
    print(f"reward curves: {png}")
    payload: dict[str, Any] = {"world": args.world, "steps": args.steps, "seeds": args.seeds, "rows": rows, "runs": runs}
    if not args.no_variance and not args.combine:
        from .estimator_variance import COLUMNS, measure

        payload["variance"] = measure({n: recipes[n] for n in names})
        print(table(payload["variance"], COLUMNS))
    print(f"results: {save(name, payload)}")


if __name__ == "__main__":
    main()
