"""Batch and memory planner for `maskgrpo check`: how a recipe's batch splits over processes, and
an estimate of peak memory per process, from arithmetic alone (no model is built).

Why: a run that does not divide over its processes, or that does not fit its GPU, should fail in
a second at `check`, not after loading 16 GB of weights on eight machines.

One module per concern: `shapes` (an architecture's sizes, read from config.json or known
presets, never by building the model), `parallel` (processes and sharding, from the accelerate
config), `memory` (the estimate's formulas), `plan` (a recipe's batch split, checks and
workload), `report` (the printed lines and the fit verdicts). This package exposes their public
API.
"""

from .memory import MemoryEstimate, Workload, estimate_memory, estimate_peak_bytes
from .parallel import Parallel, read_accelerate_config
from .plan import Plan, plan_recipe
from .shapes import KNOWN_ARCHITECTURES, KNOWN_CODEBOOKS, ModelShape, llada_shape, recipe_model_shape, transformer_shape

__all__ = [
    "KNOWN_ARCHITECTURES",
    "KNOWN_CODEBOOKS",
    "MemoryEstimate",
    "ModelShape",
    "Parallel",
    "Plan",
    "Workload",
    "estimate_memory",
    "estimate_peak_bytes",
    "llada_shape",
    "plan_recipe",
    "read_accelerate_config",
    "recipe_model_shape",
    "transformer_shape",
]
