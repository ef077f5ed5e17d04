"""Problems from JSONL files (GSM8K, MATH500, your own): one JSON object per line."""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from ..errors import MaskGRPOError, UnreadableFile
from ..registry import tasks
from .base import Example

MAX_LINE_BYTES = 64 * 2**20  # a longer JSONL line is a bad row, never read into memory whole


def open_regular_file(path: str | os.PathLike[str]) -> BinaryIO:
    """`path` opened for binary reading, or `UnreadableFile` when it is missing or not a regular
    file: a FIFO would block the reader forever and a device (a symlink to /dev/zero) never
    ends. The file is opened without blocking and checked by its descriptor, so what is read is
    what was checked."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise UnreadableFile(path, "file not found") from None
    except IsADirectoryError:
        raise UnreadableFile(path, "is a folder") from None
    except OSError as err:
        raise UnreadableFile(path, f"cannot open ({err.strerror or type(err).__name__})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnreadableFile(path, "is a folder" if stat.S_ISDIR(mode) else "not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def parse_json_line(raw: bytes) -> tuple[Any, str | None]:
    """(value, None), or (None, why the line cannot be read): not UTF-8, malformed JSON, nested
    too deeply (RecursionError) or an integer too long for Python (ValueError)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not valid UTF-8 text"
    try:
        return json.loads(line), None
    except json.JSONDecodeError as err:
        return None, f"malformed JSON ({err.msg} at column {err.colno})"
    except RecursionError:
        return None, "nested too deeply to read (RecursionError in the JSON parser)"
    except ValueError as err:  # int too long: "Exceeds the limit (4300 digits) for integer string conversion: ..."
        return None, f"unreadable JSON value ({str(err).split(':')[0][:120]})"


def _lines(f: BinaryIO) -> Iterator[bytes | None]:
    """The file's lines; None for a line longer than MAX_LINE_BYTES (the rest of it is skipped)."""
    while raw := f.readline(MAX_LINE_BYTES + 1):
        if len(raw) <= MAX_LINE_BYTES or raw.endswith(b"\n"):
            yield raw
            continue
        while (rest := f.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
            pass
        yield None


def iter_jsonl(path: Path, bad: Callable[[str], None]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file; a line that is not a JSON
    object goes to `bad` as one message naming file:line (`bad` raises, or records and goes on)."""
    with open_regular_file(path) as f:
        for lineno, raw in enumerate(_lines(f), 1):
            if raw is None:
                bad(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES // 2**20} MiB")
                continue
            if not raw.strip():
                continue
            obj, problem = parse_json_line(raw)
            if problem is not None:
                bad(f"{path}:{lineno}: {problem}")
                continue
            if not isinstance(obj, dict):
                bad(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                continue
            yield lineno, obj


def _raise(message: str) -> None:
    raise MaskGRPOError(message)


def read_rows(path: str, prompt_field: str, answer_field: str | None) -> list[dict]:
    file = Path(path)
    if not file.exists():
        raise MaskGRPOError(f"task: data file not found: {file}")  # a folder or a FIFO: iter_jsonl says which
    rows = []
    for n, row in iter_jsonl(file, _raise):
        if prompt_field not in row or (answer_field is not None and answer_field not in row):
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
