"""The chain world: seeded running-sum chains with worked steps, its held-out split, its suite,
its shipped policy and recipes."""

from __future__ import annotations

import json
import random

import pytest
import yaml

from maskgrpo.cli import main
from maskgrpo.errors import MaskGRPOError
from maskgrpo.registry import tasks
from maskgrpo.tokenizers.char import CharTokenizer
from maskgrpo.worlds.chain.task import (
    CHAIN_ALPHABET,
    LEVELS,
    MAX_VALUE,
    ChainTask,
    _is_held_out,
    check_steps,
    draw_problem,
    first_carry_step,
    parse_prompt,
    solve,
    work,
)

from .conftest import REPO

CHECKPOINT = REPO / "maskgrpo/checkpoints/chain-small"
SHIPPED_LEVELS = [1, 2]  # recipes/chain-sft.yaml, recipes/chain-grpo.yaml, the chain suite
GEN_LENGTH = 64


def test_the_task_is_registered_seeded_and_deterministic() -> None:
    task = tasks.build({"type": "chain", "levels": SHIPPED_LEVELS}, where="task")
    assert isinstance(task, ChainTask)
    again = ChainTask(levels=SHIPPED_LEVELS)
    assert [task.train_example(i) for i in range(50)] == [again.train_example(i) for i in range(50)]
    other = ChainTask(levels=SHIPPED_LEVELS, seed=1)
    assert [task.train_example(i).prompt for i in range(50)] != [other.train_example(i).prompt for i in range(50)]
    assert task.eval_examples() == other.eval_examples()  # the held-out set does not depend on the seed
    with pytest.raises(MaskGRPOError, match="task.levels"):
        ChainTask(levels=[9])
    with pytest.raises(MaskGRPOError, match="sft_carry_error"):
        ChainTask(sft_carry_error=2.0)


def test_held_out_problems_never_appear_in_training() -> None:
    task = ChainTask(levels=list(LEVELS))
    held = [e.prompt for e in task.eval_examples()]
    assert len(held) == len(set(held)) == task.n_eval
    train = {task.train_example(i).prompt for i in range(20000)}
    assert not set(held) & train
    # the split is by a hash of the problem: about a quarter of each level is held out
    rng = random.Random(0)
    for level in LEVELS:
        drawn = [draw_problem(level, rng) for _ in range(2000)]
        share = sum(map(_is_held_out, drawn)) / len(drawn)
        assert 0.2 < share < 0.3
    # equally many per level
    levels = [e.columns["level"] for e in task.eval_examples()]
    assert max(map(levels.count, LEVELS)) - min(map(levels.count, LEVELS)) <= 1


def test_targets_work_every_step_out_correctly() -> None:
    task = ChainTask(levels=list(LEVELS))
    for e in [task.train_example(i) for i in range(2000)] + task.eval_examples():
        start, ops = parse_prompt(e.prompt)
        assert len(ops) == LEVELS[e.columns["level"]].steps
        assert check_steps(e.prompt, e.target)
        *steps, final = e.target.split(";")
        # an independent re-check: each step is `a op b = c`, a is the previous c, c is right
        value = start
        for text, (op, b) in zip(steps, ops):
            lhs, rhs = text.split("=")
            assert lhs == f"{value}{op}{b}" and int(rhs) == eval(lhs)  # noqa: S307  (digits and + - only)
            value = int(rhs)
            assert 0 <= value <= MAX_VALUE
        assert final == f"#### {value}" and e.answer == str(value) == str(solve(e.prompt))
    assert ChainTask.make(draw_problem(2, random.Random(3))).target.count(";") == 5
    example = task.make(parse_problem("23+5-7+8-4="))
    assert example.target == "23+5=28;28-7=21;21+8=29;29-4=25;#### 25" and example.answer == "25"


def parse_problem(prompt: str):
    from maskgrpo.worlds.chain.task import Problem

    start, ops = parse_prompt(prompt)
    return Problem(3, start, tuple(ops))


def test_check_steps_rejects_wrong_work() -> None:
    prompt, good = "23+5-7+8-4=", "23+5=28;28-7=21;21+8=29;29-4=25;#### 25"
    assert check_steps(prompt, good)
    for bad in (
        "23+5=28;28-7=22;22+8=30;30-4=26;#### 26",  # a wrong step, carried on consistently
        "23+5=28;28-7=21;21+8=29;29-4=25;#### 24",  # the answer is not the last result
        "23+5=28;28+7=35;35+8=43;43-4=39;#### 39",  # not the prompt's operation
        "23+5=28;28-7=21;21+8=29;#### 29",  # a step left out
        "23+5=28;29-7=22;22+8=30;30-4=26;#### 26",  # not the previous result
        "#### 25",
    ):
        assert not check_steps(prompt, bad), bad


def test_an_early_wrong_step_changes_the_final_answer() -> None:
    rng = random.Random(7)
    changed = 0
    for _ in range(500):
        problem = draw_problem(3, rng)
        at = first_carry_step(problem.start, problem.ops)
        if at is None:
            continue
        steps, right = work(problem.start, problem.ops)
        wrong_steps, wrong = work(problem.start, problem.ops, mistake_at=at)
        assert wrong != right  # a forgotten carry is off by 10, and the later steps keep it
        assert wrong_steps[:at] == steps[:at] and wrong_steps[at] != steps[at]
        changed += 1
    assert changed > 400
    # the same through the task: mistaken SFT targets keep the gold answer, work consistently
    # from the wrong value and end at a wrong answer
    task = ChainTask(levels=SHIPPED_LEVELS, sft_carry_error=1.0)
    for e in map(task.train_example, range(300)):
        start, ops = parse_prompt(e.prompt)
        if first_carry_step(start, ops) is None:
            assert check_steps(e.prompt, e.target)
            continue
        assert not check_steps(e.prompt, e.target) and e.target.split("#### ")[1] != e.answer == str(solve(e.prompt))


def test_completions_are_long_and_fit_gen_length() -> None:
    tok = CharTokenizer(CHAIN_ALPHABET)
    task = ChainTask(levels=list(LEVELS))
    lengths = {level: [] for level in LEVELS}
    for e in [task.train_example(i) for i in range(3000)] + task.eval_examples():
        ids = tok.encode(e.target)
        assert tok.unk_token_id not in ids and tok.decode(ids) == e.target
        assert tok.unk_token_id not in tok.encode(e.prompt)
        lengths[e.columns["level"]].append(len(ids))
    assert max(max(v) for v in lengths.values()) <= GEN_LENGTH
    for level in SHIPPED_LEVELS:  # the shipped levels: 30-46 tokens, nearly all of them 32 or more
        values = lengths[level]
        assert min(values) >= 30 and sum(v >= 32 for v in values) / len(values) > 0.9


def test_the_char_alphabet_only_grows() -> None:
    from maskgrpo.tokenizers.char import ARITHMETIC_ALPHABET

    assert CHAIN_ALPHABET.startswith(ARITHMETIC_ALPHABET.rstrip(" ")) and set(ARITHMETIC_ALPHABET) < set(CHAIN_ALPHABET)
    recipe = yaml.safe_load((REPO / "recipes/chain-sft.yaml").read_text())
    assert recipe["tokenizer"] == {"type": "char", "alphabet": CHAIN_ALPHABET}
    assert CharTokenizer().alphabet == ARITHMETIC_ALPHABET  # arith-small's tokenizer is unchanged


def test_shipped_chain_suite_matches_the_task() -> None:
    suite = yaml.safe_load((REPO / "maskgrpo/suites/chain.yaml").read_text())
    rows = [json.loads(x) for x in (REPO / "maskgrpo/suites" / suite["data"]).read_text().splitlines()]
    expected = ChainTask(levels=SHIPPED_LEVELS).eval_examples()
    assert [(r["prompt"], r["answer"], r["level"]) for r in rows] == [(e.prompt, e.answer, e.columns["level"]) for e in expected]
    assert suite["sampler"]["gen_length"] == GEN_LENGTH and suite["metrics"] == [{"type": "math_accuracy"}]
    for name in ("chain-sft", "chain-grpo"):
        recipe = yaml.safe_load((REPO / f"recipes/{name}.yaml").read_text())
        assert recipe["task"]["levels"] == SHIPPED_LEVELS
        assert recipe["sampler"]["gen_length"] == GEN_LENGTH


@pytest.mark.parametrize("name", ["chain-sft", "chain-grpo"])
def test_chain_recipes_check(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(REPO / f"recipes/{name}.yaml")]) == 0
    assert "ok" in capsys.readouterr().out


def test_shipped_policy_loads_and_works_steps_out() -> None:
    from maskgrpo.components import build_run
    from maskgrpo.generation import generate
    from maskgrpo.recipe import load_recipe

    parts = build_run(load_recipe(REPO / "recipes/chain-grpo.yaml"))
    assert parts.tokenizer.alphabet == CHAIN_ALPHABET
    weights = CHECKPOINT / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size < 5_000_000
    examples = parts.eval_set[:8]
    texts = generate(parts.backbone.eval(), parts.tokenizer, parts.eval_sampler, [e.prompt for e in examples])
    # greedy completions are worked chains ending in an answer (right or wrong)
    assert sum(t.count(";") >= 3 and "#### " in t for t in texts) >= 6, texts
