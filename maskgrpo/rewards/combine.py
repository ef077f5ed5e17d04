"""Weighted sums of registered rewards, with every component kept for logging (reward hacking
shows up as one component rising alone)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import MaskGRPOError
from ..registry import rewards as reward_registry


class RewardError(MaskGRPOError):
    """A reward function raised or returned something unusable."""


@dataclass
class RewardTerm:
    name: str
    weight: float
    fn: Callable[..., list[float | None]]


class RewardSet:
    def __init__(self, specs: list[Any]):
        self.terms: list[RewardTerm] = []
        seen: dict[str, int] = {}
        for i, spec in enumerate(specs):
            fn = reward_registry.build(spec.component(), where=f"rewards.{i}")
            base = spec.name or spec.type
            name = base if base not in seen else f"{base}_{seen[base]}"
            seen[base] = seen.get(base, 0) + 1
            self.terms.append(RewardTerm(name, spec.weight, fn))

    def _call(self, term: RewardTerm, prompts: list[str], completions: list[str], columns: dict[str, list[Any]]) -> list[float | None]:
        try:
            values = list(term.fn(prompts, completions, **columns))
        except Exception as err:
            # find the first sample that fails on its own, so the message can name it
            for i in range(len(prompts)):
                try:
                    term.fn(prompts[i : i + 1], completions[i : i + 1], **{k: v[i : i + 1] for k, v in columns.items()})
                except Exception:
                    raise RewardError(
                        f"reward '{term.name}' raised {type(err).__name__}: {err} on sample {i} "
                        f"(prompt {prompts[i][:80]!r}, completion {completions[i][:80]!r})"
                    ) from err
            raise RewardError(f"reward '{term.name}' raised {type(err).__name__}: {err}") from err
        if len(values) != len(prompts):
            raise RewardError(f"reward '{term.name}' returned {len(values)} values for {len(prompts)} samples")
        return values

    def score(
        self, prompts: list[str], completions: list[str], columns: dict[str, list[Any]]
    ) -> tuple[list[float], dict[str, list[float | None]]]:
        """Total per sample (None terms are skipped, as TRL does) and each component's values.
        Non-finite values are returned as they are: the trainer reports them and skips the step."""
        components = {t.name: self._call(t, prompts, completions, columns) for t in self.terms}
        totals = []
        for i in range(len(prompts)):
            total = 0.0
            for term in self.terms:
                v = components[term.name][i]
                if v is not None:
                    total += term.weight * float(v)
            totals.append(total)
        return totals, components


def finite(values: list[float]) -> bool:
    return all(math.isfinite(v) for v in values)
