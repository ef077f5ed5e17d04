"""Rewards for math answers. They call the evaluation metric's judge, so training and
evaluation score an answer the same way."""

from __future__ import annotations

import re
from typing import Any, Literal

from ..metrics.math import judge
from ..registry import rewards


@rewards.register("math_accuracy")
def math_accuracy(prompts: list[str], completions: list[str], answer: list[str], timeout: float = 1.0, **columns: Any) -> list[float | None]:
    """1 if the extracted final answer equals the gold `answer` (numeric, then math-verify), else 0."""
    return [1.0 if judge(c, a, timeout=timeout).correct else 0.0 for c, a in zip(completions, answer)]


_FORMATS = {
    # the whole completion is `#### N` (the arithmetic world's answer form)
    "gsm8k": re.compile(r"^\s*####\s*-?[\d,]*\.?\d+\s*$"),
    # a GSM8K-style solution: free reasoning, then a final `#### N` line
    "gsm8k_solution": re.compile(r"####\s*-?[\d,]*\.?\d+\s*$"),
    # an answer in \boxed{...} anywhere
    "boxed": re.compile(r"\\boxed\{"),
    # d1's XML format
    "xml": re.compile(r"<reasoning>.*</reasoning>\s*<answer>.*</answer>\s*$", re.DOTALL),
}


@rewards.register("format")
def answer_format(
    prompts: list[str], completions: list[str], style: Literal["gsm8k", "gsm8k_solution", "boxed", "xml"] = "gsm8k", **columns: Any
) -> list[float | None]:
    """1 if the completion gives its answer in the requested form (`style`), else 0."""
    pattern = _FORMATS[style]
    return [1.0 if pattern.search(c) else 0.0 for c in completions]
