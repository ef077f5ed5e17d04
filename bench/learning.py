"""The paper's ablation in miniature: each estimator on the arithmetic task with the same
budget and three seeds; final held-out greedy accuracy, mean +- std. No estimator is tuned more
than another: every run is its recipe (`recipes/arith-grpo[-NAME].yaml`, which differ only in
the estimator) with the same overrides.

    python -m bench.learning                  # 5 estimators x 3 seeds at the recipes' budget
    python -m bench.learning --steps 60       # a shorter budget
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from maskgrpo.recipe import load_recipe
from maskgrpo.trainer import GRPOTrainer

from .common import save, table

RECIPES = {
    "d1": "recipes/arith-grpo-d1.yaml",
    "unigrpo": "recipes/arith-grpo-unigrpo.yaml",
    "random": "recipes/arith-grpo-random.yaml",
    "fading_out": "recipes/arith-grpo.yaml",
    "trace": "recipes/arith-grpo-trace.yaml",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps per run (default: the recipe's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--estimators", nargs="+", default=list(RECIPES))
    args = parser.parse_args()
    rows, runs = [], []
    for name in args.estimators:
        finals, before, seconds = [], None, []
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                overrides = [f"seed={seed}", f"output_dir={tmp}/run", "train.eval_every=0"]
                if args.steps:
                    overrides.append(f"train.steps={args.steps}")
                trainer = GRPOTrainer(load_recipe(RECIPES[name], overrides), progress=False)
                start = time.time()
                summary = trainer.train()
                seconds.append(time.time() - start)
            before = summary["before"]
            finals.append(summary["after"])
            runs.append({"estimator": name, "seed": seed, "before": summary["before"], "after": summary["after"], "seconds": seconds[-1]})
            print(f"{name} seed {seed}: {summary['before']:.3f} -> {summary['after']:.3f} ({seconds[-1]:.0f} s)", flush=True)
        rows.append(
            {
                "estimator": name,
                "before": before,
                "after mean": statistics.mean(finals),
                "after std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                "gain": statistics.mean(finals) - before,
                "seconds/run": statistics.mean(seconds),
            }
        )
    print(table(rows, ["estimator", "before", "after mean", "after std", "gain", "seconds/run"]))
    print(f"results: {save('learning', {'steps': args.steps, 'seeds': args.seeds, 'rows': rows, 'runs': runs})}")


if __name__ == "__main__":
    main()
