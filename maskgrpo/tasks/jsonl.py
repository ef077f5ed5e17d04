"""Problems from JSONL files (GSM8K, MATH500, your own): one JSON object per line."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..errors import MaskGRPOError
from ..registry import tasks
from .base import Example


def read_rows(path: str, prompt_field: str, answer_field: str | None) -> list[dict]:
    file = Path(path)
    if not file.is_file():
        raise MaskGRPOError(f"task: data file not found: {file}")
    rows = []
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise MaskGRPOError(f"{file}:{n}: malformed JSON ({err.msg})") from None
        if not isinstance(row, dict) or prompt_field not in row or (answer_field is not None and answer_field not in row):
            raise MaskGRPOError(f"{file}:{n}: needs fields '{prompt_field}' and '{answer_field}'")
        rows.append(row)
    return rows


@tasks.register("jsonl")
class JsonlTask:
    """Prompts and gold answers from JSONL files; training rows in a seeded shuffled order.
    Gold answers may be full solutions (GSM8K's `#### N` is extracted by the math judge).
    `row_column` hands each whole row to the rewards as that column (GenEval metadata rows:
    `row_column: metadata` for the `geneval` reward, `answer_field: null`)."""

    def __init__(
        self,
        train_path: str,
        eval_path: str | None = None,
        prompt_field: str = "question",
        answer_field: str | None = "answer",
        prompt_template: str = "{prompt}",
        n_eval: int = 256,
        seed: int = 0,
        row_column: str | None = None,
        eval_prompt_field: str | None = None,
        eval_answer_field: str | None = None,
    ):
        if "{prompt}" not in prompt_template:
            raise MaskGRPOError("task.prompt_template: must contain {prompt}")
        self.template, self.n_eval, self.row_column = prompt_template, n_eval, row_column
        # the eval file may name its fields differently (GSM8K's question/answer vs MATH's problem/answer)
        self.fields = (prompt_field, answer_field)
        self.eval_fields = (eval_prompt_field or prompt_field, eval_answer_field if eval_answer_field is not None else answer_field)
        self.train_rows = read_rows(train_path, *self.fields)
        self.eval_rows = read_rows(eval_path, *self.eval_fields) if eval_path else []
        self.order = list(range(len(self.train_rows)))
        random.Random(seed).shuffle(self.order)

    def _example(self, row: dict, fields: tuple[str, str | None] | None = None) -> Example:
        prompt, answer = fields or self.fields
        # str.replace, not str.format: templates hold LaTeX braces such as \boxed{}
        gold = "" if answer is None else str(row[answer])
        columns = {} if self.row_column is None else {self.row_column: row}
        return Example(prompt=self.template.replace("{prompt}", row[prompt]), answer=gold, target=gold, columns=columns)

    def train_example(self, index: int) -> Example:
        return self._example(self.train_rows[self.order[index % len(self.order)]])

    def eval_examples(self) -> list[Example]:
        return [self._example(r, self.eval_fields) for r in self.eval_rows[: self.n_eval]]
