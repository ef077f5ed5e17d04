"""How a run spreads over processes: count, sharding (ZeRO / FSDP) and CPU offload.

Its own module because it reads accelerate's config format (and DeepSpeed's), which has nothing
to do with the recipe's batch or the memory formulas that use the result.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ..errors import MaskGRPOError
from .shapes import _read_json


@dataclass(frozen=True)
class Parallel:
    """How a run spreads over processes: count, what is sharded (ZeRO stage; FSDP full shard = 3,
    SHARD_GRAD_OP = 2), what is offloaded to the CPU, and a description for the printout."""

    processes: int = 1
    shard_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    engine: str = "single process"
    mixed_precision: str | None = None

    def describe(self) -> str:
        what = "" if self.engine == "single process" else ", " + self.engine
        if self.offload_optimizer or self.offload_params:
            what += ", " + " and ".join(n for n, on in (("optimizer", self.offload_optimizer), ("parameters", self.offload_params)) if on) + " offloaded to CPU"
        return f"{self.processes} process{'es' if self.processes != 1 else ''}{what}"


_FSDP_STAGES = {"FULL_SHARD": 3, "HYBRID_SHARD": 3, "SHARD_GRAD_OP": 2, "HYBRID_SHARD_ZERO2": 2, "NO_SHARD": 0}


def read_accelerate_config(path: str | Path) -> Parallel:
    """num_processes, distributed_type, deepspeed_config (zero_stage, offload_*_device, or a
    deepspeed_config_file) and fsdp_config (sharding strategy) of an accelerate config YAML."""
    path = Path(path)
    where = f"train.accelerate_config: {path}"
    if not path.is_file():
        raise MaskGRPOError(f"{where}: file not found (a relative path is relative to the recipe file; in --set, to the working directory)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise MaskGRPOError(f"{where}: invalid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise MaskGRPOError(f"{where}: expected a mapping of accelerate settings")
    processes = data.get("num_processes", 1)
    if not isinstance(processes, int) or processes < 1:
        raise MaskGRPOError(f"{where}: num_processes must be a positive integer, got {processes!r}")
    kind = str(data.get("distributed_type", "NO")).upper()
    mixed = data.get("mixed_precision")
    mixed = None if mixed is None else "no" if mixed is False else str(mixed)  # YAML reads a bare `no` as false
    if kind == "DEEPSPEED":
        ds = data.get("deepspeed_config") or {}
        stage = ds.get("zero_stage")
        opt_dev, par_dev = ds.get("offload_optimizer_device"), ds.get("offload_param_device")
        if stage is None and ds.get("deepspeed_config_file"):
            file = Path(ds["deepspeed_config_file"])
            file = file if file.is_absolute() else path.parent / file
            zero = ((_read_json(file) or {}).get("zero_optimization") or {}) if file.is_file() else {}
            if not zero and not file.is_file():
                raise MaskGRPOError(f"{where}: deepspeed_config_file {file} not found")
            stage = zero.get("stage", 0)
            opt_dev = (zero.get("offload_optimizer") or {}).get("device")
            par_dev = (zero.get("offload_param") or {}).get("device")
        stage = int(stage or 0)
        if stage not in (0, 1, 2, 3):
            raise MaskGRPOError(f"{where}: deepspeed_config.zero_stage must be 0-3, got {stage}")
        off_opt, off_par = str(opt_dev).lower() in ("cpu", "nvme"), str(par_dev).lower() in ("cpu", "nvme")
        return Parallel(processes, stage, off_opt, off_par and stage == 3, f"DeepSpeed ZeRO-{stage}", mixed)
    if kind == "FSDP":
        fsdp = data.get("fsdp_config") or {}
        strategy = fsdp.get("fsdp_sharding_strategy", fsdp.get("fsdp_reshard_after_forward", "FULL_SHARD"))
        if isinstance(strategy, bool):  # FSDP2: reshard after forward (full shard) or not (like ZeRO-2)
            strategy = "FULL_SHARD" if strategy else "SHARD_GRAD_OP"
        elif isinstance(strategy, int) and 1 <= strategy <= 5:  # FSDP1's enum values
            strategy = ["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2"][strategy - 1]
        strategy = str(strategy).upper()
        if strategy not in _FSDP_STAGES:
            raise MaskGRPOError(f"{where}: fsdp sharding strategy {strategy!r} unknown (one of {', '.join(_FSDP_STAGES)})")
        offload = bool(fsdp.get("fsdp_offload_params", False))
        return Parallel(processes, _FSDP_STAGES[strategy], offload, offload, f"FSDP {strategy}", mixed)
    engine = {"NO": "single process", "MULTI_GPU": "DDP", "MULTI_CPU": "DDP on CPUs (gloo)"}.get(kind, kind)
    return Parallel(processes, 0, engine=engine if processes > 1 or kind != "NO" else "single process", mixed_precision=mixed)


def _parallel(recipe: Any, num_processes: int | None) -> tuple[Parallel, str]:
    """From the recipe's accelerate config (relative to the recipe file), `--num-processes`
    overriding its count; else one process."""
    acc = recipe.train.accelerate_config
    par = read_accelerate_config(recipe.source_dir / acc) if acc else Parallel()
    if acc:  # resolved when the recipe was read; shown as the recipe file would name it
        acc = os.path.relpath(recipe.source_dir / acc, recipe.source_dir)
    source = f"accelerate config {acc}" if acc else "no accelerate config"
    if num_processes is not None:
        if num_processes < 1:
            raise MaskGRPOError(f"--num-processes: must be >= 1, got {num_processes}")
        engine = par.engine if acc or num_processes == 1 else "DDP"
        par = replace(par, processes=num_processes, engine=engine)
        source = f"--num-processes {num_processes}" + (f" with {acc}" if acc else "")
    return par, source
