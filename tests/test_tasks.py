"""Tasks: the arithmetic world's held-out split and SFT mistakes, JSONL datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maskgrpo.errors import MaskGRPOError
from maskgrpo.registry import tasks
from maskgrpo.worlds.arithmetic.task import ArithmeticTask, carry_mistake

from .conftest import REPO


def test_training_never_sees_a_held_out_problem() -> None:
    task = ArithmeticTask(levels=[1, 2, 3, 4])
    held = {e.prompt for e in task.eval_examples()}
    train = {task.train_example(i).prompt for i in range(5000)}
    assert held and not held & train
    assert task.train_example(17) == task.train_example(17)  # a pure function of (seed, index)


def test_shipped_arith_suite_matches_the_task() -> None:
    rows = [json.loads(x) for x in (REPO / "maskgrpo/suites/arith/heldout.jsonl").read_text().splitlines()]
    expected = ArithmeticTask(levels=[1, 3]).eval_examples()
    assert [(r["prompt"], r["answer"]) for r in rows] == [(e.prompt, e.answer) for e in expected]


def test_sft_carry_error_corrupts_only_targets_of_carry_problems() -> None:
    assert carry_mistake("+", 7, 5) == 2 and carry_mistake("+", 47, 5) == 42
    assert carry_mistake("-", 12, 5) == 13 and carry_mistake("+", 3, 4) is None
    task = ArithmeticTask(levels=[1, 3], sft_carry_error=1.0)
    for i in range(300):
        e = task.train_example(i)
        a, b = map(int, e.prompt[:-1].split("+"))
        assert e.answer == str(a + b)  # the gold answer rewards check is always right
        wrong = carry_mistake("+", a, b)
        assert e.target == f"#### {a + b if wrong is None else wrong}"
    clean = ArithmeticTask(levels=[1, 3])
    assert all(e.target == f"#### {e.answer}" for e in map(clean.train_example, range(300)))


def test_jsonl_task_keeps_latex_braces_in_the_template(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?", "answer": "#### 4"}\n')
    task = tasks.build({"type": "jsonl", "train_path": str(data), "eval_path": str(data), "prompt_template": "{prompt} Put it in \\boxed{}."})
    assert task.eval_examples()[0].prompt == "1+1? Put it in \\boxed{}."
    assert {task.train_example(i).answer for i in range(2)} == {"#### 2", "#### 4"}
    data.write_text('{"question": "x"}\n')
    with pytest.raises(MaskGRPOError, match=r"d\.jsonl:1: needs fields"):
        tasks.build({"type": "jsonl", "train_path": str(data)})
