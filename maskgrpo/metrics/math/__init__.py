"""Math accuracy: extract a final answer from model text and judge it against a gold answer.

Extraction (`extract_answer`) tries, in order: the last `\\boxed{...}` / `\\fbox{...}` (braces
matched by a linear scan, never a regex), GSM8K's `#### N`, "the answer is X", and finally the
last number in the text.

Judging (`judge`) tries a light string normalisation, then exact rational arithmetic
(`normalize_number`, built on `fractions.Fraction`), then `math_verify` for LaTeX equivalence.
Model output is untrusted: nothing here calls `eval`/`exec`/`sympify` on it, and `math_verify`
(which uses sympy, and can hang on inputs such as `10^{10^{10^{10}}}`) only ever runs in a
separate, long-lived worker process that is killed and replaced when an answer takes longer
than `timeout` seconds. The bound therefore also holds when `judge` is called from a thread
other than the main one (where signal-based timeouts do not work).

One module per concern: `extract` (finding the answer in text), `normalize` (plain numbers and
strings, with the size limits that keep that work bounded), `verify` (the math_verify worker
process and its time bound), `judge` (the verdict on one completion), `accuracy` (the
registered `math_accuracy` metric). This package exposes their public API.
"""

from .accuracy import MathAccuracy
from .extract import extract_answer, gold_answer
from .judge import Judgement, judge, judge_many
from .normalize import normalize_number
from .verify import warmup

__all__ = [
    "Judgement",
    "MathAccuracy",
    "extract_answer",
    "gold_answer",
    "judge",
    "judge_many",
    "normalize_number",
    "warmup",
]
