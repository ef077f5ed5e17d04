"""The verdict on one completion: its extracted answer against the gold, cheapest check first.

Its own module because it is the one place that orders the checks (exact string, multiple-choice
letter, exact rational, then the bounded math_verify worker) and names the reason of each verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .extract import extract_answer, gold_answer
from .normalize import MAX_VERIFY_CHARS, _choice, _normalize_text, normalize_number
from .verify import _unsafe_for_sympy, _verify_in_worker


@dataclass
class Judgement:
    """The verdict on one completion."""

    extracted: str | None
    correct: bool
    reason: str


def judge(completion: str, gold: str, timeout: float = 1.0) -> Judgement:
    """Extract the final answer of `completion` and check it against `gold`.

    `gold` may be a GSM8K solution ending in `#### N`, a bare number, or a LaTeX answer. Checks,
    in order: normalised string equality (`exact`), exact rational equality (`numeric`), then
    `math_verify` in a worker process bounded by `timeout` seconds (reason `timeout` when it
    runs out). Safe on hostile text; returns in about `timeout` seconds at most.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    pred, rule = extract_answer(completion)
    if pred is None:
        return Judgement(None, False, "no answer")
    gold_ans = gold_answer(gold)
    if gold_ans is None:
        return Judgement(pred, False, "no gold answer")
    if pred == gold_ans:
        return Judgement(pred, True, "exact")
    if len(pred) > MAX_VERIFY_CHARS:
        return Judgement(pred, False, "too long")
    npred, ngold = _normalize_text(pred), _normalize_text(gold_ans)
    if npred and npred == ngold:
        return Judgement(pred, True, "exact")
    cpred, cgold = _choice(npred), _choice(ngold)
    if cpred is not None and cgold is not None:
        return Judgement(pred, cpred == cgold, "choice" if cpred == cgold else "wrong choice")
    if npred.isalpha() and ngold.isalpha() and npred.lower() == ngold.lower():
        return Judgement(pred, True, "exact")
    fpred, fgold = normalize_number(pred), normalize_number(gold_ans)
    if fpred is not None and fgold is not None:
        return Judgement(pred, fpred == fgold, "numeric" if fpred == fgold else "numeric mismatch")
    if len(gold_ans) > MAX_VERIFY_CHARS:
        return Judgement(pred, False, "gold too long")
    for s in (pred, gold_ans):
        unsafe = _unsafe_for_sympy(s)
        if unsafe is not None:
            return Judgement(pred, False, f"refused: {unsafe}")
    ok, reason = _verify_in_worker(pred, gold_ans, timeout)
    return Judgement(pred, ok, reason)


def judge_many(completions: Sequence[str], golds: Sequence[str], timeout: float = 1.0) -> list[Judgement]:
    """`judge` over a batch (pairs `completions[i]` with `golds[i]`)."""
    if len(completions) != len(golds):
        raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
    return [judge(c, g, timeout) for c, g in zip(completions, golds)]
