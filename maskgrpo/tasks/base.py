"""Tasks: where prompts and gold answers come from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Example:
    """One problem. `target` is the completion SFT teaches; `answer` is what rewards check."""

    prompt: str
    answer: str
    target: str = ""
    columns: dict[str, Any] = field(default_factory=dict)


class Task(Protocol):
    def train_example(self, index: int) -> Example: ...

    def eval_examples(self) -> list[Example]: ...
