"""Does a fast rollout mode cost accuracy? Issue 14's check on the chain world: the `chain` suite
(192 held-out problems, greedy, 64 tokens in blocks of 32) decoded with every cache mode and
threshold, against `cache: none`, in one process so the time ratios compare like with like.

    python -m bench.cache_accuracy                         # chain-small and chain-carry
    python -m bench.cache_accuracy --models chain-small --thresholds 0.9

Reported per (model, cache, threshold): accuracy, its difference from `cache: none` (points),
generation seconds and the speed-up against `cache: none` on the same model.
"""

from __future__ import annotations

import argparse
import tempfile

from maskgrpo.eval.harness import evaluate_suite

from .common import save, table

MODES = ["none", "prefix", "dual"]


def measure(models: list[str], thresholds: list[float | None], suite: str = "chain", limit: int | None = None) -> list[dict[str, object]]:
    rows = []
    for model in models:
        reference: dict[str, float] = {}
        for threshold in thresholds:
            for cache in MODES:
                overrides = [f"sampler.cache={cache}"] + ([f"sampler.threshold={threshold}"] if threshold is not None else [])
                with tempfile.TemporaryDirectory() as out:
                    res = evaluate_suite(suite, model=model, out=out, overrides=overrides, limit=limit, progress=False)
                accuracy, seconds = res["metrics"]["accuracy"], res["generation_seconds"]
                if not reference:
                    reference = {"accuracy": accuracy, "seconds": seconds}
                rows.append(
                    {
                        "model": model,
                        "cache": cache,
                        "threshold": "off" if threshold is None else threshold,
                        "accuracy": accuracy,
                        "vs none (points)": 100 * (accuracy - reference["accuracy"]),
                        "seconds": seconds,
                        "speed-up": reference["seconds"] / seconds,
                    }
                )
                print(table(rows[-1:], COLUMNS), flush=True)
    return rows


COLUMNS = ["model", "cache", "threshold", "accuracy", "vs none (points)", "seconds", "speed-up"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["chain-small", "chain-carry"])
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.9], help="besides `off`")
    parser.add_argument("--limit", type=int, default=None, help="first N problems only")
    args = parser.parse_args()
    rows = measure(args.models, [None, *args.thresholds], limit=args.limit)
    print(table(rows, COLUMNS))
    print(f"results: {save('cache-accuracy', {**vars(args), 'rows': rows})}")


if __name__ == "__main__":
    main()
