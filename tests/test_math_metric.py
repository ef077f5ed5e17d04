"""Math accuracy: answer extraction, number normalisation, judging (including hostile model text
that must neither execute nor hang), the worker's time bound off the main thread, and the
registered `math_accuracy` metric."""

from __future__ import annotations

import json
import math
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest

from maskgrpo.metrics import math as M
from maskgrpo.metrics.math import Judgement, MathAccuracy, extract_answer, judge, judge_many, normalize_number
from maskgrpo.metrics.math.verify import _verify_in_worker
from maskgrpo.registry import metrics

DATA = Path(__file__).resolve().parent.parent / "maskgrpo" / "suites" / "data"
BOUND_S = 1.5  # the most one judge call may take, hostile input included


@pytest.fixture(scope="module")
def warm():
    """Start the math_verify workers once (start-up is not part of the per-answer bound)."""
    assert M.warmup()
    yield


def timed_judge(completion: str, gold: str, timeout: float = 1.0) -> tuple[Judgement, float]:
    t0 = time.monotonic()
    verdict = judge(completion, gold, timeout=timeout)
    return verdict, time.monotonic() - t0


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected, rule",
    [
        ("so the result is \\boxed{42}.", "42", "boxed"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "boxed"),
        ("first \\boxed{1}, then \\boxed{2}, finally \\boxed{3}", "3", "boxed"),
        ("\\fbox{7}", "7", "boxed"),
        ("$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$.", "\\left( 3, \\frac{\\pi}{2} \\right)", "boxed"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}", "boxed"),
        ("\\boxed 5 is it", "5", "boxed"),
        ("\\boxed{3} and a truncated \\boxed{4", "3", "boxed"),  # the unbalanced last box is skipped
        ("reasoning\n#### 1,234", "1,234", "####"),
        ("#### 5\nmore\n#### 6", "6", "####"),
        ("The answer is 7.", "7", "answer_is"),
        ("so THE ANSWER IS: $\\frac{3}{4}$. Done", "\\frac{3}{4}", "answer_is"),
        ("The final answer is 3.5. I hope it is correct.", "3.5", "answer_is"),
        ("I got 3 apples and then 12.5 more", "12.5", "last_number"),
        ("costs 1,000,000 in total", "1,000,000", "last_number"),
        ("temperature is -4 today", "-4", "last_number"),
        ("no digits at all", None, "none"),
        ("", None, "none"),
    ],
)
def test_extract_answer(text, expected, rule):
    assert extract_answer(text) == (expected, rule)


def test_extract_is_linear_on_huge_nested_braces():
    text = "\\boxed{" + "{" * 100_000 + "x" + "}" * 100_000 + "}"
    t0 = time.monotonic()
    ans, rule = extract_answer(text)
    assert time.monotonic() - t0 < 1.0
    assert rule == "boxed" and len(ans) == 200_001
    # many unbalanced boxes must not make the scan quadratic
    text = "\\boxed{" * 20_000 + "1"
    t0 = time.monotonic()
    assert extract_answer(text) == ("1", "last_number")
    assert time.monotonic() - t0 < 1.0


# --------------------------------------------------------------------------------------------
# normalize_number
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, value",
    [
        ("42", Fraction(42)),
        ("1,000", Fraction(1000)),
        ("$1,234.50", Fraction(246900, 200)),
        ("\\$18.90", Fraction(1890, 100)),
        ("18 dollars", Fraction(18)),
        ("5 cm", Fraction(5)),
        ("5\\text{ cm}", Fraction(5)),
        ("50%", Fraction(50)),
        ("50\\%", Fraction(50)),
        ("90^\\circ", Fraction(90)),
        ("0.5", Fraction(1, 2)),
        (".5", Fraction(1, 2)),
        ("-3.25", Fraction(-13, 4)),
        ("3/4", Fraction(3, 4)),
        ("-3/4", Fraction(-3, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("\\dfrac{3}{4}", Fraction(3, 4)),
        ("\\tfrac{3}{4}", Fraction(3, 4)),
        ("\\frac34", Fraction(3, 4)),
        ("-\\frac12", Fraction(-1, 2)),
        ("\\frac{-1}{2}", Fraction(-1, 2)),
        ("x = 5", Fraction(5)),
        ("1{,}000", Fraction(1000)),
    ],
)
def test_normalize_number(text, value):
    assert normalize_number(text) == value


@pytest.mark.parametrize(
    "text",
    ["1e5", "10^5", "2**10", "3x", "\\sqrt{2}", "3\\pi", "1/0", "\\frac{1}{0}", "(1, 2)", "abc", "", "1" * 101, "9" * 1_000_000,
     "1,2", "\\frac{\\frac{1}{2}}{3}"],
)
def test_normalize_number_rejects(text):
    assert normalize_number(text) is None


# --------------------------------------------------------------------------------------------
# judging: equivalences (must be correct)
# --------------------------------------------------------------------------------------------

EQUIVALENT = [
    # fractions, decimals, LaTeX fraction commands
    ("\\boxed{0.5}", "\\frac{1}{2}"),
    ("\\boxed{1/2}", "0.5"),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\tfrac12}", "0.5"),
    ("\\boxed{\\frac{1}{2}}", "1/2"),
    ("\\boxed{0.75}", "\\frac34"),
    ("\\boxed{\\frac{28}{6}}", "\\frac{14}{3}"),
    ("\\boxed{4.5}", "\\frac{9}{2}"),
    ("\\boxed{2.50}", "2.5"),
    ("\\boxed{007}", "7"),
    # thousands separators, currency, units, percent
    ("\\boxed{1,000}", "1000"),
    ("#### 1,234", "1234"),
    ("The answer is 1,234,567.", "#### 1234567"),
    ("\\boxed{\\$18}", "18"),
    ("The answer is $18.", "#### 18"),
    ("She makes 18 dollars", "#### 18"),
    ("\\boxed{18 dollars}", "18"),
    ("\\boxed{5 cm}", "5"),
    ("\\boxed{5\\text{ cm}}", "5"),
    ("\\boxed{50\\%}", "50"),
    ("The answer is 50%.", "#### 50"),
    ("\\boxed{90^\\circ}", "90"),
    ("\\boxed{\\$18.90}", "\\$18.90"),
    # boxes: nested braces, several boxes (last wins), fbox
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt2}{2}"),
    ("maybe \\boxed{3}; no, \\boxed{4}", "4"),
    ("\\boxed{1} \\boxed{2} \\boxed{\\frac{1}{3}}", "\\frac{1}{3}"),
    ("\\fbox{12}", "12"),
    ("Thus $\\boxed{x = 5}$.", "5"),
    # GSM8K forms
    ("Janet sells 9 eggs.\n#### 18", "#### 18"),
    ("#### 18", "Janet sells 16 - 3 - 4 = 9 duck eggs.\n#### 18"),
    ("work... The answer is 7.", "7"),
    ("The answer is 7", "#### 7"),
    ("He has 3 + 4 = 7 apples", "7"),
    ("#### -5", "-5"),
    # negative numbers
    ("\\boxed{-3}", "-3"),
    ("\\boxed{-\\frac{1}{2}}", "-0.5"),
    ("\\boxed{-\\dfrac{3}{4}}", "\\frac{-3}{4}"),
    ("The answer is -12.", "#### -12"),
    # MATH500-style text answers
    ("\\boxed{C}", "\\text{(C)}"),
    ("\\boxed{(C)}", "\\text{(C)}"),
    ("\\boxed{\\text{(C)}}", "\\text{(C)}"),
    ("The answer is (B).", "\\text{(B)}"),
    ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}"),
    ("\\boxed{Evelyn}", "\\text{Evelyn}"),
    ("\\boxed{p-q}", "p - q"),
    ("\\boxed{-q + p}", "p - q"),
    ("\\boxed{\\textbf{odd}}", "\\text{odd}"),
    # tuples, intervals, sets
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{\\left(3,\\frac{\\pi}{2}\\right)}", "(3, \\frac{\\pi}{2})"),
    ("\\boxed{[1,3)}", "[1, 3)"),
    ("\\boxed{(-\\infty, 0]}", "(-\\infty,0]"),
    ("\\boxed{(1, 2)}", "(1,2)"),
    ("\\boxed{\\{1,2,3\\}}", "\\{3,2,1\\}"),
    # LaTeX equivalence (math_verify)
    ("\\boxed{x^2+2x}", "2x+x^2"),
    ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}"),
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}"),
    ("\\boxed{\\frac{\\pi}{2}}", "\\dfrac{\\pi}{2}"),
    ("\\boxed{\\pi/4}", "\\frac{\\pi}{4}"),
    ("\\boxed{6 - 5i}", "6-5i"),
    ("\\boxed{3^{4}}", "81"),
    ("\\boxed{2^{10}}", "1024"),
    ("\\boxed{\\sqrt{4}}", "2"),
    ("\\boxed{10^{3}}", "1,000"),
]


@pytest.mark.parametrize("completion, gold", EQUIVALENT)
def test_equivalent(warm, completion, gold):
    verdict, elapsed = timed_judge(completion, gold)
    assert verdict.correct, verdict
    assert verdict.extracted is not None
    assert elapsed < BOUND_S


def test_enough_equivalence_cases():
    assert len(EQUIVALENT) >= 60


# --------------------------------------------------------------------------------------------
# judging: wrong answers and missing answers
# --------------------------------------------------------------------------------------------

WRONG = [
    ("\\boxed{0.51}", "\\frac{1}{2}"),
    ("\\boxed{2}", "1"),
    ("#### 1,235", "1234"),
    ("The answer is 8.", "#### 7"),
    ("\\boxed{4} then \\boxed{3}", "4"),  # the last box counts
    ("\\boxed{-3}", "3"),
    ("\\boxed{\\frac{14}{3}}", "\\frac{3}{14}"),
    ("\\boxed{D}", "\\text{(C)}"),
    ("\\boxed{Eve}", "\\text{Evelyn}"),
    ("\\boxed{p+q}", "p - q"),
    ("\\boxed{(3, \\pi)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
    ("\\boxed{(1,3)}", "[1, 3)"),
    ("\\boxed{x^2+2}", "x^2+2x"),
    ("\\boxed{5}", "50\\%"),
    ("I have 3 apples and 5 pears", "#### 3"),  # the last number is 5
]


@pytest.mark.parametrize("completion, gold", WRONG)
def test_wrong(warm, completion, gold):
    verdict, elapsed = timed_judge(completion, gold)
    assert not verdict.correct, verdict
    assert elapsed < BOUND_S


@pytest.mark.parametrize("completion", ["", "I do not know.", "The answer is", "\\boxed{}", "$$"])
def test_no_answer(completion):
    verdict = judge(completion, "#### 7")
    assert verdict.extracted is None
    assert verdict.correct is False and verdict.reason == "no answer"


def test_timeout_must_be_positive():
    with pytest.raises(ValueError):
        judge("\\boxed{1}", "1", timeout=0)


# --------------------------------------------------------------------------------------------
# hostile input: nothing executes, nothing hangs
# --------------------------------------------------------------------------------------------


def test_python_code_is_never_executed(warm, tmp_path):
    marker = tmp_path / "pwned"
    pwned = Path("/tmp/pwned")
    existed = pwned.exists()
    payloads = [
        f"__import__('os').system('touch {marker}')",
        "__import__('os').system('touch /tmp/pwned')",
        f"The answer is __import__('os').system('touch {marker}')",
        f"\\boxed{{__import__('os').system('touch {marker}')}}",
        f"\\boxed{{exec(\"open('{marker}', 'w')\")}}",
        f"\\boxed{{eval(\"__import__('pathlib').Path('{marker}').touch()\")}}",
        "\\boxed{__import__('os').system('touch /tmp/pwned')}",
    ]
    for payload in payloads:
        for gold in ("1", "x", "\\frac{1}{2}"):
            verdict, elapsed = timed_judge(payload, gold)
            assert verdict.correct is False, (payload, verdict)
            assert elapsed < BOUND_S
    time.sleep(0.2)
    assert not marker.exists()
    assert pwned.exists() == existed


HOSTILE = {
    "python_power_tower": "9**9**9**9",
    "boxed_python_power_tower": "\\boxed{9**9**9**9}",
    "latex_power_tower": "\\boxed{10^{10^{10^{10^{10}}}}}",
    "latex_tower_no_braces": "\\boxed{9^9^9^9^9}",
    "huge_factorial": "\\boxed{(10^{10})!}",  # passes the cheap screen: stopped by the worker bound
    "huge_binomial": "\\boxed{\\binom{10^{12}}{10^{6}}}",
    "nested_braces_100kB": "\\boxed{" + "{" * 50_000 + "}" * 50_000 + "}",
    "digits_1MB": "7" * 1_000_000,
    "boxed_digits_1MB": "\\boxed{" + "7" * 1_000_000 + "}",
    "huge_exponent": "\\boxed{2^{999999999999}}",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_input_is_bounded(warm, name):
    assert M.warmup()  # a previous timeout may have just promoted the spare worker
    verdict, elapsed = timed_judge(HOSTILE[name], "1")
    assert verdict.correct is False, verdict
    assert elapsed < BOUND_S, f"{name}: {elapsed:.2f}s ({verdict.reason})"


def test_worker_times_out_and_recovers(warm):
    t0 = time.monotonic()
    ok, reason = _verify_in_worker("10^{10^{10^{10}}}", "1", timeout=0.5)
    assert (ok, reason) == (False, "timeout")
    assert time.monotonic() - t0 < 1.0
    # the replacement answers normally, without a start-up wait
    verdict, elapsed = timed_judge("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}")
    assert verdict.correct and verdict.reason == "math_verify"
    assert elapsed < BOUND_S


def test_judge_from_a_thread_is_bounded(warm):
    results: list[tuple[Judgement, float]] = []

    def work():
        for completion in (HOSTILE["huge_factorial"], HOSTILE["latex_power_tower"], "\\boxed{2\\sqrt{3}}"):
            results.append(timed_judge(completion, "\\sqrt{12}"))

    thread = threading.Thread(target=work)
    t0 = time.monotonic()
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(results) == 3
    (factorial, t_fact), (tower, t_tower), (legit, t_legit) = results
    assert not factorial.correct and factorial.reason == "timeout"
    assert not tower.correct
    assert legit.correct
    assert max(t_fact, t_tower) < BOUND_S
    assert time.monotonic() - t0 < 3 * BOUND_S + 2.0  # the legit one may wait for a worker start


# --------------------------------------------------------------------------------------------
# real rows
# --------------------------------------------------------------------------------------------


def _rows(name: str, n: int) -> list[dict]:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    with path.open() as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def test_math500_golds_verify_against_themselves(warm):
    rows = _rows("math500_test.jsonl", 30)
    failures = []
    for i, row in enumerate(rows):
        gold = row["answer"]
        checks = {
            "boxed": judge("\\boxed{" + gold + "}", gold),
            "solution": judge(row["solution"], gold),  # the reference solution's last box
            "restyled": judge("The result is $\\boxed{" + gold.replace("\\frac", "\\dfrac").replace(" ", "") + "}$.", gold),
        }
        ok, why = _verify_in_worker(gold, gold, timeout=2.0)  # math_verify alone, no string shortcut
        checks["math_verify"] = Judgement(gold, ok, why)
        bad = {k: v.reason for k, v in checks.items() if not v.correct}
        if bad:
            failures.append((i, gold, bad))
    assert len(failures) <= 2, failures


def test_gsm8k_rows(warm):
    rows = _rows("gsm8k_test.jsonl", 30)
    for row in rows:
        solution = row["answer"]
        number = M.gold_answer(solution)
        assert number is not None
        assert judge(solution, solution).correct
        assert judge(f"Reasoning...\nThe answer is {number}.", solution).correct
        assert judge(f"$\\boxed{{{number}}}$", solution).correct
        value = normalize_number(number)
        assert not judge(f"\\boxed{{{value + 1}}}", solution).correct


# --------------------------------------------------------------------------------------------
# judge_many and the registered metric
# --------------------------------------------------------------------------------------------


def test_judge_many():
    verdicts = judge_many(["\\boxed{1}", "#### 2", "nothing"], ["1", "3", "4"])
    assert [v.correct for v in verdicts] == [True, False, False]
    assert verdicts[2].extracted is None
    with pytest.raises(ValueError):
        judge_many(["a"], ["1", "2"])


def test_math_accuracy_metric():
    assert "math_accuracy" in metrics
    entry = metrics.get("math_accuracy")
    assert entry.description.startswith("Fraction of completions")
    metric = metrics.build({"type": "math_accuracy", "timeout": 0.5})
    assert isinstance(metric, MathAccuracy) and metric.timeout == 0.5
    empty = metric.compute()
    assert empty["n"] == 0 and math.isnan(empty["accuracy"])  # no samples: no score, never 0
    metric.update({"completions": ["\\boxed{\\frac12}", "#### 3", "no idea"], "answers": ["0.5", "#### 4", "2"]})
    metric.update({"completions": ["The answer is 7."], "answers": ["7"]})
    assert metric.compute() == {"accuracy": 0.5, "n": 4}
    assert [r["correct"] for r in metric.records] == [True, False, False, True]
    assert set(metric.records[0]) == {"completion", "answer", "extracted", "correct", "reason"}
    assert metric.records[0]["extracted"] == "\\frac12"
    assert metric.records[2]["extracted"] is None
    metric.reset()
    assert metric.records == [] and metric.compute()["n"] == 0 and math.isnan(metric.compute()["accuracy"])


def test_math_accuracy_config_is_validated():
    from maskgrpo.errors import RecipeError

    with pytest.raises(RecipeError):
        metrics.build({"type": "math_accuracy", "timout": 1.0})
    with pytest.raises(RecipeError):
        metrics.build({"type": "math_accuracy", "timeout": "soon"})
