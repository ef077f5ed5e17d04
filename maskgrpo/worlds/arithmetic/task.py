"""The small text world: seeded arithmetic problems with GSM8K-style answers (`#### 12`).

Problems are a pure function of (seed, index), so any run can be replayed. A fixed slice of the
problem space (by a hash of the problem) is held out (a quarter of each level): training never sees an evaluation problem.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from ...errors import MaskGRPOError
from ...registry import tasks
from ...tasks.base import Example


@dataclass(frozen=True)
class Level:
    op: str
    a: tuple[int, int]
    b: tuple[int, int]
    description: str


# Ordered by difficulty for a small model; carries and two-digit operands are the hard part.
LEVELS: dict[int, Level] = {
    1: Level("+", (0, 9), (0, 9), "single-digit sums"),
    2: Level("-", (0, 18), (0, 9), "differences a-b >= 0 with a < 19"),
    3: Level("+", (10, 49), (0, 9), "two-digit plus one-digit"),
    4: Level("*", (0, 9), (0, 9), "single-digit products"),
    5: Level("+", (10, 99), (10, 99), "two-digit sums"),
}


def _is_held_out(level: int, a: int, b: int, fraction_eighths: int = 2) -> bool:
    digest = hashlib.sha256(f"{level}:{a}:{b}".encode()).digest()
    return digest[0] % 8 < fraction_eighths


def _all_problems(level: int) -> list[tuple[int, int]]:
    spec = LEVELS[level]
    pairs = [(a, b) for a in range(spec.a[0], spec.a[1] + 1) for b in range(spec.b[0], spec.b[1] + 1)]
    if spec.op == "-":
        pairs = [(a, b) for a, b in pairs if a >= b]
    return pairs


def format_answer(value: int) -> str:
    return f"#### {value}"


def carry_mistake(op: str, a: int, b: int) -> int | None:
    """The answer a pupil gives who forgets to carry (sums) or borrows the wrong way round
    (differences); None when the problem has no carry or borrow to get wrong."""
    if op == "+" and (a % 10) + (b % 10) >= 10:
        return a + b - 10
    if op == "-" and a % 10 < b % 10:
        return (a // 10 - b // 10) * 10 + (b % 10 - a % 10)
    return None


@tasks.register("arithmetic")
class ArithmeticTask:
    """Seeded arithmetic problems (`7+5=` -> `#### 12`) over difficulty `levels`; 1/4 of each
    level's problems are held out for evaluation."""

    def __init__(
        self,
        levels: list[int] = [1, 2, 3, 4],  # noqa: B006
        seed: int = 0,
        n_eval: int = 256,
        sft_carry_error: float = 0.0,
    ):
        if not 0 <= sft_carry_error <= 1:
            raise MaskGRPOError("task.sft_carry_error: must be in [0, 1]")
        self.sft_carry_error = sft_carry_error
        unknown = [lv for lv in levels if lv not in LEVELS]
        if unknown or not levels:
            raise MaskGRPOError(f"task.levels: unknown level(s) {unknown}; known: {sorted(LEVELS)}")
        self.levels, self.seed, self.n_eval = list(levels), seed, n_eval
        self._train: list[tuple[int, int, int]] = []
        self._held: list[tuple[int, int, int]] = []
        for lv in self.levels:
            for a, b in _all_problems(lv):
                (self._held if _is_held_out(lv, a, b) else self._train).append((lv, a, b))
        self._pools = {lv: [p for p in self._train if p[0] == lv] for lv in self.levels}

    @staticmethod
    def make(level: int, a: int, b: int, mistaken: bool = False) -> Example:
        """`mistaken`: the SFT target carries the systematic carry/borrow mistake (the gold
        `answer` that rewards check is always right)."""
        op = LEVELS[level].op
        value = a + b if op == "+" else a - b if op == "-" else a * b
        wrong = carry_mistake(op, a, b) if mistaken else None
        target = format_answer(value if wrong is None else wrong)
        return Example(prompt=f"{a}{op}{b}=", answer=str(value), target=target, columns={"level": level})

    def train_example(self, index: int) -> Example:
        """Training problem `index`. With `sft_carry_error` p, a fraction p of the targets of
        carry/borrow problems carry the mistake: an SFT policy then has a systematic error
        that is often its greedy answer, while sampling still finds the right one, which is
        what GRPO can fix."""
        rng = random.Random(self.seed * 1_000_003 + index)
        level = rng.choice(self.levels)  # levels equally likely, whatever their sizes
        pool = self._pools[level]
        problem = rng.choice(pool)
        return self.make(*problem, mistaken=rng.random() < self.sft_carry_error)

    def eval_examples(self) -> list[Example]:
        rng = random.Random(12345)  # the held-out set does not depend on the run's seed
        held = list(self._held)
        rng.shuffle(held)
        return [self.make(*p) for p in held[: self.n_eval]]
