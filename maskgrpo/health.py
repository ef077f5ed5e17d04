"""Training health across processes: a task's counts (what the policy draws) as shares."""

from __future__ import annotations

from typing import Any

from .runtime import reduce_sum

__all__ = ["health_shares"]


def health_shares(accelerator: Any, counts: dict[str, dict[str, float]]) -> dict[str, float]:
    """`health/<group>/<name>`: each name's share of its group's counts, summed over processes
    (a task's `health_counts`, e.g. the colours and classes the shapes policy draws), and
    `health/<group>/distinct`: how many names hold at least 5% (a collapse drives it to 1)."""
    row: dict[str, float] = {}
    for group, by_name in counts.items():
        totals = {name: reduce_sum(accelerator, value) for name, value in by_name.items()}
        n = sum(totals.values())
        if n == 0:
            continue
        row.update({f"health/{group}/{name}": value / n for name, value in totals.items()})
        row[f"health/{group}/distinct"] = float(sum(value / n >= 0.05 for value in totals.values()))
    return row
