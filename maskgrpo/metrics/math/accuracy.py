"""The registered `math_accuracy` metric: `judge` over batches, accumulated into an accuracy.

Its own module because it is the registry-facing side (the metric protocol: update, compute,
reset) and holds no math of its own.
"""

from __future__ import annotations

from ...registry import metrics
from .judge import judge_many


@metrics.register("math_accuracy")
class MathAccuracy:
    """Fraction of completions whose final answer equals the gold (numeric, then math-verify)."""

    def __init__(self, timeout: float = 1.0):
        if timeout <= 0:
            raise ValueError(f"math_accuracy: timeout must be positive, got {timeout}")
        self.timeout = timeout
        self.records: list[dict] = []

    def update(self, batch: dict) -> None:
        """Judge `batch["completions"]` against `batch["answers"]` and keep one record each."""
        completions, answers = batch["completions"], batch["answers"]
        for completion, answer, verdict in zip(completions, answers, judge_many(completions, answers, self.timeout)):
            self.records.append(
                {
                    "completion": completion,
                    "answer": answer,
                    "extracted": verdict.extracted,
                    "correct": verdict.correct,
                    "reason": verdict.reason,
                }
            )

    def compute(self) -> dict:
        n = len(self.records)
        correct = sum(1 for r in self.records if r["correct"])
        return {"accuracy": correct / n if n else float("nan"), "n": n}  # no samples: no score

    def reset(self) -> None:
        self.records = []
