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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=sorted(WORLDS), default="arith")
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps per run (default: the recipe's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--estimators", nargs="+", default=None, help="a subset of the world's (default: all)")
    parser.add_argument("--no-variance", action="store_true", help="skip the log-likelihood noise measurement")
    parser.add_argument("--name", default=None, help="results name (default learning[-WORLD]); give two parallel halves their own")
    args = parser.parse_args()
    recipes = WORLDS[args.world]
    names = args.estimators or list(recipes)
    unknown = [n for n in names if n not in recipes]
    if unknown:
        raise SystemExit(f"bench.learning: --estimators: {unknown} not in world {args.world!r} ({', '.join(recipes)})")
    name = args.name or ("learning" if args.world == "arith" else f"learning-{args.world}")
    rows, runs, curves = [], [], {}
    for estimator in names:
        finals, before, seconds, curves[estimator] = [], None, [], []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                overrides = [f"seed={seed}", f"output_dir={tmp}/run", "train.eval_every=0"]
                if args.steps:
                    overrides.append(f"train.steps={args.steps}")
                trainer = GRPOTrainer(load_recipe(recipes[estimator], overrides), progress=False)
                start = time.time()
                summary = trainer.train()
                seconds.append(time.time() - start)
                curves[estimator].append(reward_curve(Path(tmp) / "run"))
            before = summary["before"]
            finals.append(summary["after"])
            runs.append({"estimator": estimator, "seed": seed, "before": before, "after": summary["after"], "seconds": seconds[-1], "rewards": curves[estimator][-1]})
            print(f"{estimator} seed {seed}: {before:.3f} -> {summary['after']:.3f} ({seconds[-1]:.0f} s)", flush=True)
        rows.append(
            {
                "estimator": estimator,
                "before": before,
                "after mean": statistics.mean(finals),
                "after std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                "gain": statistics.mean(finals) - before,
                "seconds/run": statistics.mean(seconds),
            }
        )
    print(table(rows, ["estimator", "before", "after mean", "after std", "gain", "seconds/run"]))
    RESULTS.mkdir(exist_ok=True)
    png = plot_curves(curves, RESULTS / f"{name}.png", f"GRPO on the {args.world} world, seeds {args.seeds}")
    print(f"reward curves: {png}")
    payload: dict[str, Any] = {"world": args.world, "steps": args.steps, "seeds": args.seeds, "rows": rows, "runs": runs}
    if not args.no_variance:
        from .estimator_variance import COLUMNS, measure

        payload["variance"] = measure({n: recipes[n] for n in names})
        print(table(payload["variance"], COLUMNS))
    print(f"results: {save(name, payload)}")


if __name__ == "__main__":
    main()
