"""The memory estimate per process, as formulas over a model's shape and a step's workload.

Its own module because these formulas are the model of memory that `check` and bench/scale.py
both use; they take numbers only (no recipe, no printing), so they can be checked on their own.

Memory per process: an ESTIMATE for "does it fit" and for ranking settings, not yet checked
against measured peaks (bench/scale.py is to do that). Notation: N parameters, T trainable
(LoRA: r·(in + out) per targeted linear, else N), w bytes per weight as loaded (the preset's `dtype`; 4 for float32), a bytes per activation (2
under bf16/fp16 autocast or with 16-bit weights, else 4), d hidden, h MLP hidden, n layers, V
logit width, S = prompt + completion tokens, L = completion tokens, b = positions the sampler
projects per step (text: a block; images: every image token). s = MLP-wide tensors a layer saves
for backward (SwiGLU 4, GELU 2), u = MLP-wide tensors alive at once without grad (3, 2).

    persistent = weights N·w (+ 4·T for fp32 LoRA adapters)   / P at ZeRO-3 (FSDP full shard)
               + gradients T·g (g = 4 for LoRA, w otherwise)  / P at ZeRO-2 and 3
               + AdamW state 8·T (two fp32 tensors)           / P at ZeRO-1, 2, 3; 0 if offloaded
               + reference N·w if beta > 0 or monitor_kl, without LoRA (a frozen copy, not sharded)
    phases (the largest one counts):
      rollout    c·R·S·max(6d, 2d + u·h)·a + R·b·(c·a·V + k_s·V_s)     no grad, all R rows at once
      scoring    k·R·S·max(6d, 2d + u·h)·a + R·L·V·(a + 8)             old/ref log-probs, no grad,
                 the whole masked view in one pass (as the trainer computes them)
      loss       m·S·n·(8d + s·h)·a + m·(L/k)·V·(a + 12)               m = rows per micro-batch
                 (gradient checkpointing: n·(8d + s·h) -> n·d + 8d + s·h: layer inputs + one layer)
      evaluation like the rollout, with `train.eval_batch_size` rows and the eval sampler
    + 2·T when fp32 trainable weights run under autocast (its 16-bit copies are kept for backward)
    peak = persistent + largest phase (+ autocast copies)

c = 2 with classifier-free guidance (conditional and unconditional rows in one batch); V_s = the
width the sampler samples from (V for text, the codebook for images), k_s = 24 bytes when
sampling (float32 softmax, float64 running sum) or 4 when greedy. Every completion position may
be scored (fading-out's last iteration masks nearly all), so the logits terms are upper bounds.

Left out: attention scores (flash / memory-efficient SDPA assumed: no S² term), dropout masks
(GRPO turns dropout off), the CUDA context and allocator fragmentation (the fit verdict keeps 10 %
of the GPU for them), DeepSpeed's fp32 master copy of 16-bit trainable weights, the layer that
ZeRO-3 / FSDP gathers, and the reward models. 1 GiB = 2**30 bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .shapes import ModelShape


@dataclass(frozen=True)
class Workload:
    """Per-process sizes of one GRPO step (or one SFT step: `rollout=False`). Rows are rollout
    rows of this process; `view_rows` = k stacked masked rows per sequence (trace)."""

    rows: int
    prompt_length: int
    gen_length: int
    block_length: int | None = None  # positions projected per sampler step (default: gen_length)
    micro_batches: int = 1
    view_rows: int = 1
    lora_r: int | None = None
    lora_targets: list[str] | str = "all-linear"
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    shard_stage: int = 0
    processes: int = 1
    offload_optimizer: bool = False
    offload_params: bool = False
    reference: bool = False  # beta > 0 or monitor_kl, without LoRA: a frozen copy of the policy
    cfg: bool = False  # classifier-free guidance in the rollout
    sampling: bool = True  # temperature > 0 in the rollout
    sampled_width: int | None = None  # V_s: the vocabulary the sampler samples from (images: the codebook)
    rollout: bool = True
    eval_rows: int = 0  # evaluation batch (0: no evaluation phase)
    eval_block_length: int | None = None
    eval_cfg: bool = False
    eval_sampling: bool = False


@dataclass
class MemoryEstimate:
    """Bytes per process by part; `peak` = persistent parts + the largest phase."""

    parameters: int
    gradients: int
    optimizer: int
    reference: int
    autocast_copies: int
    phases: dict[str, int] = field(default_factory=dict)
    trainable: int = 0

    @property
    def persistent(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.reference

    @property
    def largest_phase(self) -> str:
        return max(self.phases, key=self.phases.get) if self.phases else ""

    @property
    def peak(self) -> int:
        return self.persistent + (max(self.phases.values()) if self.phases else 0) + self.autocast_copies


def estimate_memory(model: ModelShape, work: Workload) -> MemoryEstimate:
    """The formulas of the module docstring, part by part."""
    w, d, h, n, v = model.weight_bytes, model.d_model, model.mlp_hidden, model.n_layers, model.vocab
    half = work.mixed_precision in ("bf16", "fp16")
    a = 2 if half or w == 2 else 4
    P = max(work.processes, 1)
    lora = model.lora_params(work.lora_r, work.lora_targets) if work.lora_r else 0
    trainable = lora or model.n_params
    grad_bytes = 4 if lora else w

    parameters = model.n_params * w + 4 * lora
    if work.shard_stage >= 3:
        parameters //= P
    if work.offload_params:
        parameters = 0
    gradients = trainable * grad_bytes // (P if work.shard_stage >= 2 else 1)
    if work.offload_params:
        gradients = 0
    optimizer = 0 if work.offload_optimizer else 8 * trainable // (P if work.shard_stage >= 1 else 1)
    reference = model.n_params * w if work.reference and not lora else 0
    trainable_fp32 = (lora > 0) or w == 4
    autocast = 2 * trainable if half and trainable_fp32 else 0

    S, L = work.prompt_length + work.gen_length, work.gen_length
    nograd_per_token = max(6 * d, 2 * d + (3 if model.gated_mlp else 2) * h) * a
    saved_per_layer = 8 * d + (4 if model.gated_mlp else 2) * h
    vs = work.sampled_width or v

    def generate(rows: int, block: int | None, cfg: bool, sampling: bool) -> int:
        c = 2 if cfg else 1
        return c * rows * S * nograd_per_token + rows * (block or L) * (c * a * v + (24 if sampling else 4) * vs)

    phases: dict[str, int] = {}
    k = max(work.view_rows, 1)
    if work.rollout:
        phases["rollout"] = generate(work.rows, work.block_length, work.cfg, work.sampling)
        phases["scoring"] = k * work.rows * S * nograd_per_token + work.rows * L * v * (a + 8)
    m = math.ceil(work.rows * k / max(work.micro_batches, 1))
    per_token = (n * d + saved_per_layer) if work.gradient_checkpointing else n * saved_per_layer
    phases["loss"] = m * S * per_token * a + m * math.ceil(L / k) * v * (a + 12)
    if work.eval_rows:
        phases["evaluation"] = generate(work.eval_rows, work.eval_block_length, work.eval_cfg, work.eval_sampling)
    return MemoryEstimate(parameters, gradients, optimizer, reference, autocast, phases, trainable)


def estimate_peak_bytes(model: ModelShape, **workload: Any) -> int:
    """Peak bytes per process for `model` under `Workload(**workload)`: pure arithmetic, for
    benchmarks that compare it with a measured peak (e.g. `rows=8, prompt_length=32,
    gen_length=256, lora_r=8, mixed_precision="bf16"`)."""
    return estimate_memory(model, Workload(**workload)).peak
