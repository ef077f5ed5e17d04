"""The small reasoning world: running-sum chains with the work written out (`#### 31`).

A problem is a start value and a row of additions (and, at levels 3-6, subtractions),
`7+5+7+8+4=`; the SFT target works it out left to right, one step per `;`, then gives the
answer: `7+5=12;12+7=19;19+8=27;27+4=31;#### 31` (30-38 characters at level 1, 38-46 at
level 2, up to 61 at level 6), so completions are long. Every step starts from the previous
step's result, so an early mistake propagates to the answer: the left-to-right structure that
the fading-out estimator is about. The running value stays in 0..99 (an operation that would
leave that range is flipped).

Problems are a pure function of (seed, index), so any run can be replayed. A quarter of each
level's problems (by a hash of the problem) is held out: training never sees an evaluation
problem, and the problem space is large enough that held-out accuracy measures how well the
model does arithmetic step by step, not what it memorised.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from ...errors import MaskGRPOError
from ...registry import tasks
from ...tasks.base import Example
from ..arithmetic.task import carry_mistake, format_answer

# The `char` tokenizer's alphabet for this world: the arithmetic one plus the step separator.
CHAIN_ALPHABET = "0123456789+-*=?#; "
SEPARATOR = ";"
MAX_VALUE = 99


@dataclass(frozen=True)
class Level:
    steps: int
    ops: str
    start: tuple[int, int]
    operand: tuple[int, int]
    description: str


# Ordered by difficulty for a small model (more steps, subtractions, larger values).
LEVELS: dict[int, Level] = {
    1: Level(4, "+", (1, 9), (1, 9), "5 one-digit terms, additions"),
    2: Level(5, "+", (1, 9), (1, 9), "6 one-digit terms, additions"),
    3: Level(4, "+-", (10, 49), (1, 9), "a two-digit start, 4 additions or subtractions of one digit"),
    4: Level(5, "+-", (10, 49), (1, 9), "a two-digit start, 5 additions or subtractions of one digit"),
    5: Level(6, "+-", (10, 49), (1, 9), "a two-digit start, 6 additions or subtractions of one digit"),
    6: Level(6, "+-", (10, 49), (10, 49), "a two-digit start, 6 additions or subtractions of two digits"),
}

_STEP = re.compile(r"(\d+)([+-])(\d+)=(\d+)")
_PROMPT = re.compile(r"\d+(?:[+-]\d+)+=")


@dataclass(frozen=True)
class Problem:
    level: int
    start: int
    ops: tuple[tuple[str, int], ...]  # (operator, operand) per step

    @property
    def prompt(self) -> str:
        return f"{self.start}" + "".join(f"{op}{b}" for op, b in self.ops) + "="


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b


def _is_held_out(problem: Problem, fraction_eighths: int = 2) -> bool:
    digest = hashlib.sha256(f"{problem.level}:{problem.prompt}".encode()).digest()
    return digest[0] % 8 < fraction_eighths


def draw_problem(level: int, rng: random.Random) -> Problem:
    """One problem of `level` from `rng` (the running value stays in 0..MAX_VALUE)."""
    spec = LEVELS[level]
    start = value = rng.randint(*spec.start)
    ops = []
    for _ in range(spec.steps):
        op, b = rng.choice(spec.ops), rng.randint(*spec.operand)
        if not 0 <= _apply(op, value, b) <= MAX_VALUE:
            op = "-" if op == "+" else "+"
        value = _apply(op, value, b)
        ops.append((op, b))
    return Problem(level, start, tuple(ops))


def parse_prompt(prompt: str) -> tuple[int, list[tuple[str, int]]]:
    """`23+5-7=` -> (23, [("+", 5), ("-", 7)])."""
    if not _PROMPT.fullmatch(prompt):
        raise MaskGRPOError(f"not a chain problem: {prompt!r}")
    numbers = re.findall(r"\d+", prompt)
    operators = re.findall(r"[+-]", prompt)
    return int(numbers[0]), list(zip(operators, map(int, numbers[1:])))


def work(start: int, ops: list[tuple[str, int]] | tuple[tuple[str, int], ...], mistake_at: int | None = None) -> tuple[list[str], int]:
    """The worked steps (`23+5=28`) and the final value. `mistake_at`: that step forgets its
    carry or borrow (`carry_mistake`), and every later step starts from the wrong value."""
    steps, value = [], start
    for i, (op, b) in enumerate(ops):
        result = _apply(op, value, b)
        if i == mistake_at:
            wrong = carry_mistake(op, value, b)
            result = result if wrong is None else wrong
        steps.append(f"{value}{op}{b}={result}")
        value = result
    return steps, value


def solve(prompt: str) -> int:
    start, ops = parse_prompt(prompt)
    return work(start, ops)[1]


def format_target(steps: list[str], value: int) -> str:
    return SEPARATOR.join([*steps, format_answer(value)])


def check_steps(prompt: str, completion: str) -> bool:
    """Whether `completion` works `prompt` out correctly: every step is true arithmetic,
    starts from the previous result with the prompt's next operation, and the answer after
    `####` is the last result."""
    start, ops = parse_prompt(prompt)
    *steps, answer = completion.split(SEPARATOR)
    if len(steps) != len(ops) or not answer.startswith("#### "):
        return False
    value = start
    for text, (op, b) in zip(steps, ops):
        m = _STEP.fullmatch(text)
        if m is None or (int(m[1]), m[2], int(m[3])) != (value, op, b) or int(m[4]) != _apply(op, value, b):
            return False
        value = int(m[4])
    return answer == format_answer(value)


def first_carry_step(start: int, ops: list[tuple[str, int]] | tuple[tuple[str, int], ...]) -> int | None:
    """Index of the first step with a carry or borrow (None when there is none)."""
    value = start
    for i, (op, b) in enumerate(ops):
        if carry_mistake(op, value, b) is not None:
            return i
        value = _apply(op, value, b)
    return None


@tasks.register("chain")
class ChainTask:
    """Seeded running-sum chains (`7+5+7=` -> `7+5=12;12+7=19;#### 19`) over difficulty
    `levels`; 1/4 of each level's problems are held out for evaluation (`n_eval` of them,
    equally many per level)."""

    def __init__(
        self,
        levels: list[int] = [1, 2],  # noqa: B006
        seed: int = 0,
        n_eval: int = 192,
        sft_carry_error: float = 0.0,
    ):
        if not 0 <= sft_carry_error <= 1:
            raise MaskGRPOError("task.sft_carry_error: must be in [0, 1]")
        unknown = [lv for lv in levels if lv not in LEVELS]
        if unknown or not levels:
            raise MaskGRPOError(f"task.levels: unknown level(s) {unknown}; known: {sorted(LEVELS)}")
        if n_eval < 0:
            raise MaskGRPOError("task.n_eval: must be >= 0")
        self.levels, self.seed, self.n_eval, self.sft_carry_error = list(levels), seed, n_eval, sft_carry_error

    @staticmethod
    def make(problem: Problem, mistaken: bool = False) -> Example:
        """`mistaken`: the SFT target forgets the carry or borrow of its first step that has
        one, and works the rest out correctly from the wrong value (the gold `answer` that
        rewards check is always right)."""
        steps, value = work(problem.start, problem.ops)
        target = format_target(steps, value)
        if mistaken:
            at = first_carry_step(problem.start, problem.ops)
            if at is not None:
                target = format_target(*work(problem.start, problem.ops, mistake_at=at))
        return Example(prompt=problem.prompt, answer=str(value), target=target, columns={"level": problem.level})

    def train_example(self, index: int) -> Example:
        """Training problem `index` (never a held-out one). With `sft_carry_error` p, a fraction
        p of the targets carry the forgotten-carry mistake."""
        rng = random.Random(self.seed * 1_000_003 + index)
        level = rng.choice(self.levels)
        problem = draw_problem(level, rng)
        while _is_held_out(problem):
            problem = draw_problem(level, rng)
        return self.make(problem, mistaken=rng.random() < self.sft_carry_error)

    def eval_examples(self) -> list[Example]:
        """`n_eval` distinct held-out problems, equally many per level, in a fixed order that
        does not depend on the run's seed."""
        rng = random.Random(12345)
        per_level = [self.n_eval // len(self.levels) + (i < self.n_eval % len(self.levels)) for i in range(len(self.levels))]
        chosen: list[Problem] = []
        for level, n in zip(self.levels, per_level):
            seen: set[str] = set()
            while len(seen) < n:
                problem = draw_problem(level, rng)
                if _is_held_out(problem) and problem.prompt not in seen:
                    seen.add(problem.prompt)
                    chosen.append(problem)
        rng.shuffle(chosen)
        return [self.make(p) for p in chosen]
