"""The printed part of the plan: sizes in GiB / MiB, the memory lines, the fit verdicts.

Its own module because the wording and the verdict's limit (the reference GPU and the share of it
the estimate may use) are presentation, kept apart from the arithmetic that they print.
"""

from __future__ import annotations

import math
from typing import Any

from .memory import MemoryEstimate, Workload
from .shapes import ModelShape

GiB = 2**30
GPU_GIB = 80  # the reference GPU of the fit verdicts (A100 / H100 80 GB)
HEADROOM = 0.9  # share of the GPU the estimate may use; the rest is context and fragmentation


def _gib(x: int) -> str:
    return "0" if x == 0 else f"{x / GiB:.1f} GiB" if x >= GiB / 10 else f"{x / 2**20:.1f} MiB"


def _count(x: int) -> str:
    return f"{x / 1e9:.2f} B" if x >= 1e9 else f"{x / 1e6:.1f} M" if x >= 1e5 else str(x)


def _memory_lines(recipe: Any, shape: ModelShape, work: Workload, est: MemoryEstimate, origin: str, prompt_note: str) -> list[str]:
    """The estimate part by part, each with the numbers it came from."""
    P, stage, L, k = work.processes, work.shard_stage, work.gen_length, max(work.view_rows, 1)
    S, m, lora = work.prompt_length + L, math.ceil(work.rows * k / work.micro_batches), est.trainable if work.lora_r else 0

    def sharded(from_stage: int) -> str:
        return f", sharded / {P}" if P > 1 and stage >= from_stage else ""

    weights = {4: "fp32", 2: "bf16"}[shape.weight_bytes]
    lines = [
        f"memory per process (estimate; {shape.name}: {_count(shape.n_params)} params, d {shape.d_model}, {shape.n_layers} layers, "
        f"vocab {shape.vocab}, {weights} weights, from {origin}; {prompt_note}, completion {L}; "
        f"mixed_precision {work.mixed_precision}, gradient checkpointing {'on' if work.gradient_checkpointing else 'off'}):"
    ]
    parts = [
        ("parameters", est.parameters, f"{_count(shape.n_params)} x {shape.weight_bytes} B" + (f" + {_count(lora)} LoRA x 4 B" if lora else "")
         + sharded(3) + (", offloaded" if work.offload_params else "")),
        ("gradients", est.gradients, f"{_count(est.trainable)} trainable" + (f" (LoRA r {work.lora_r})" if lora else "") + sharded(2)),
        ("optimizer state", est.optimizer, "AdamW: 2 fp32 tensors per trainable" + sharded(1) + (", offloaded" if work.offload_optimizer else "")),
    ]  # fmt: skip
    if recipe.kind == "grpo":
        needed = recipe.grpo.beta > 0 or recipe.grpo.monitor_kl
        reason = "beta > 0" if recipe.grpo.beta > 0 else "grpo.monitor_kl"
        why = f"{reason}: a frozen copy" if est.reference else "LoRA: the base with the adapter off" if lora and needed else "beta = 0, monitor_kl off: none"
        parts.append(("reference model", est.reference, why))
    if est.autocast_copies:
        parts.append(("autocast copies", est.autocast_copies, "16-bit casts of the fp32 trainable weights"))
    guidance = " x 2 (guidance)" if work.cfg else ""
    described = {
        "rollout": f"no grad: {work.rows} rows{guidance} x {S} tokens; logits {work.rows} x {work.block_length} x {shape.vocab}",
        "scoring": f"old/ref log-probs, no grad: {work.rows * k} rows at once; logits at up to {L} positions per sequence",
        "loss": f"grad: {m} rows x {S} tokens x {shape.n_layers} layers{', checkpointed' if work.gradient_checkpointing else ''}; "
        f"logits at up to {math.ceil(L / k)} positions per row",
        "evaluation": f"no grad: {work.eval_rows} rows (train.eval_batch_size); logits {work.eval_rows} x {work.eval_block_length} x {shape.vocab}",
    }
    parts += [(f"{phase} activations", size, described[phase]) for phase, size in est.phases.items()]
    lines += [f"  {label:<26} {_gib(size)} ({why})" for label, size, why in parts]
    autocast = f" + autocast {_gib(est.autocast_copies)}" if est.autocast_copies else ""
    top = est.largest_phase
    lines.append(f"  {'peak':<26} {_gib(est.peak)} = persistent {_gib(est.persistent)} + {top} {_gib(est.phases[top])}{autocast}")
    return lines


def _verdict(label: str, peak: int, each: str = "") -> str:
    limit = HEADROOM * GPU_GIB * GiB
    return f"{label}: {'yes' if peak <= limit else 'no'} (estimate {_gib(peak)}{each}; limit {HEADROOM * GPU_GIB:.0f} GiB = {HEADROOM:.0%} of {GPU_GIB} GiB)"
