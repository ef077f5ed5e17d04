"""Batch and memory planner for `maskgrpo check`: how a recipe's batch splits over processes, and
an estimate of peak memory per process, from arithmetic alone (no model is built).

Why: a run that does not divide over its processes, or that does not fit its GPU, should fail in
a second at `check`, not after loading 16 GB of weights on eight machines.

Batch arithmetic (GRPO). P processes, p = `train.prompts_per_step` (global), G = group size:
each process rolls out R = p·G/P rows (whole groups: p must divide by P). A = `optim.grad_accum`
micro-batches of ceil(R·k/A) rows make one optimizer step, where k = 1, except for the `trace`
estimator, whose masked view stacks k rows per sequence (k = the number of step groups with
`schedule: all`, ceil(groups/mu) with `cycle`). Each of the mu = `grpo.num_iterations` inner
iterations is one optimizer step, so a rollout batch makes mu optimizer steps.

SFT: R = `sft.batch_size`/P rows in one micro-batch, no rollout, every weight trains.

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
               + reference N·w if beta > 0 without LoRA (a frozen copy, not sharded)
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

import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import MaskGRPOError

GiB = 2**30
GPU_GIB = 80  # the reference GPU of the fit verdicts (A100 / H100 80 GB)
HEADROOM = 0.9  # share of the GPU the estimate may use; the rest is context and fragmentation
PAPER_PROMPT_TOKENS = 256  # the paper's prompt budget, assumed where the backbone has no max_length

# config.json of the 8B presets (their weights are not on every machine): LLaDA's field names,
# read by the native backbone's LLaDAConfig. MMaDA-8B is LLaDA's architecture with image codes
# appended to the embedding (126464 + 8192 rows).
_LLADA_8B = {
    "d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32, "mlp_hidden_size": 12288,
    "vocab_size": 126464, "embedding_size": 126464, "weight_tying": False, "max_sequence_length": 4096,
    "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms", "rope": True, "mask_token_id": 126336,
}  # fmt: skip
KNOWN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llada-8b-instruct": _LLADA_8B,
    "GSAI-ML/LLaDA-8B-Instruct": _LLADA_8B,
    "mmada-8b": {**_LLADA_8B, "vocab_size": 134656, "embedding_size": 134656},
    "Gen-Verse/MMaDA-8B-Base": {**_LLADA_8B, "vocab_size": 134656, "embedding_size": 134656},
}
KNOWN_CODEBOOKS = {"magvitv2": 8192}  # image tokenizer type -> codes, where no local config says
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


# -- model sizes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of an architecture; `linears` (qualified name, in, out) lists every
    nn.Linear under the names the model really has, so LoRA targets match as peft matches them."""

    name: str
    d_model: int
    n_layers: int
    mlp_hidden: int
    vocab: int  # width of the logits
    n_params: int
    linears: tuple[tuple[str, int, int], ...]
    gated_mlp: bool  # SwiGLU (LLaDA) or GELU (the timm blocks of the in-house transformer)
    weight_bytes: int = 4
    max_length: int | None = None

    def lora_params(self, r: int, targets: list[str] | str) -> int:
        """r·(in + out) per linear that peft would wrap: a list matches a full name or a name
        suffix after a dot, a string is a regex on full names, `all-linear` is every linear
        (the head included: peft drops it only for transformers' PreTrainedModel)."""
        if isinstance(targets, str) and targets.lower() == "all-linear":
            chosen = self.linears
        elif isinstance(targets, str):
            chosen = tuple(x for x in self.linears if re.fullmatch(targets, x[0]))
        else:
            chosen = tuple(x for x in self.linears if any(x[0] == t or x[0].endswith("." + t) for t in targets))
        if not chosen:
            raise MaskGRPOError(
                f"lora.target_modules: {targets!r} matches no linear module of {self.name}; its linears are named like {self.linears[0][0]}"
            )
        return sum(r * (fan_in + fan_out) for _, fan_in, fan_out in chosen)


def transformer_shape(
    vocab_size: int, d_model: int = 128, n_layers: int = 3, n_heads: int = 4, mlp_ratio: float = 4.0, max_length: int = 64, name: str = "transformer"
) -> ModelShape:
    """The in-house transformer (maskgrpo/backbones/transformer.py): timm blocks with qkv bias and
    a GELU MLP, learned positions, LayerNorms, an untied head with bias."""
    d, h, v = d_model, int(d_model * mlp_ratio), vocab_size
    per_layer = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d)
    n_params = v * d + max_length * d + n_layers * per_layer + 2 * d + (d * v + v)
    linears: list[tuple[str, int, int]] = []
    for i in range(n_layers):
        p = f"blocks.{i}."
        linears += [(p + "attn.qkv", d, 3 * d), (p + "attn.proj", d, d), (p + "mlp.fc1", d, h), (p + "mlp.fc2", h, d)]
    linears.append(("head", d, v))
    return ModelShape(name, d, n_layers, h, v, n_params, tuple(linears), gated_mlp=False, weight_bytes=4, max_length=max_length)


def llada_shape(config: dict[str, Any], weight_bytes: int = 2, name: str = "llada") -> ModelShape:
    """LLaDA / MMaDA from a config.json dict, read by the native backbone's own LLaDAConfig."""
    from .backbones.llada import LLaDAConfig

    cfg = LLaDAConfig.from_dict(config, name)
    d, h, e, kv = cfg.d_model, cfg.mlp_hidden_size, cfg.embedding_size, cfg.n_kv_heads * cfg.head_dim
    linears: list[tuple[str, int, int]] = []
    for i in range(cfg.n_layers):
        p = f"model.transformer.blocks.{i}."
        linears += [(p + "q_proj", d, d), (p + "k_proj", d, kv), (p + "v_proj", d, kv), (p + "attn_out", d, d)]
        linears += [(p + "ff_proj", d, h), (p + "up_proj", d, h), (p + "ff_out", h, d)]
    if not cfg.weight_tying:
        linears.append(("model.transformer.ff_out", d, e))
    n_params = e * d + 2 * d * cfg.n_layers + d + sum(i * o for _, i, o in linears)  # wte, norms, ln_f, linears
    max_length = config.get("max_sequence_length")
    return ModelShape(name, d, cfg.n_layers, h, e, n_params, tuple(linears), gated_mlp=True, weight_bytes=weight_bytes, max_length=max_length)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _local_config(path: str | None, base: Path) -> dict[str, Any] | None:
    """config.json of a local folder (as given, or relative to the recipe), or of a hub id already
    in the local Hugging Face cache; never downloads."""
    if not path:
        return None
    for folder in (Path(path), base / path):
        if (folder / "config.json").is_file():
            return _read_json(folder / "config.json")
    if path.count("/") == 1 and not path.startswith("."):
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(path, "config.json")
        except Exception:  # a malformed id, no cache: simply not found
            found = None
        if isinstance(found, str):
            return _read_json(Path(found))
    return None


def _preset_names(registry: Any, spec: Any) -> list[str]:
    """The chain of preset names a spec goes through (`llada-8b-instruct`, ...)."""
    presets = {p.name: p for p in registry.presets()}
    name = spec if isinstance(spec, str) else spec.get("type") if isinstance(spec, dict) else None
    names: list[str] = []
    while isinstance(name, str) and name in presets and name not in names:
        names.append(name)
        name = presets[name].spec.get("type")
    return names


def recipe_model_shape(recipe: Any) -> tuple[ModelShape | None, str]:
    """(shape, where the numbers came from), or (None, why the size is unknown)."""
    from .registry import backbones, load_presets

    load_presets()
    flat = backbones.expand(recipe.backbone, where="backbone")
    kind, base = flat["type"], recipe.source_dir
    names = _preset_names(backbones, recipe.backbone)
    label = names[0] if names else kind
    if kind == "transformer":
        cfg = _local_config(flat.get("path"), base) if flat.get("path") else None
        if flat.get("path") and cfg is None:
            return None, f"model size unknown (no config.json at {flat['path']})"
        if cfg is None:
            cfg = {k: v for k, v in flat.items() if k != "type"}
            if cfg.get("vocab_size") is None:
                cfg["vocab_size"] = _tokenizer_vocab(recipe)
                if cfg["vocab_size"] is None:
                    return None, "model size unknown (the tokenizer's vocabulary could not be read)"
        keys = ("vocab_size", "d_model", "n_layers", "n_heads", "mlp_ratio", "max_length")
        shape = transformer_shape(**{k: cfg[k] for k in keys if cfg.get(k) is not None}, name=label)
        return shape, "config.json" if flat.get("path") else "recipe spec"
    if kind == "llada":
        weight_bytes = _BYTES[flat.get("dtype", "float32")]
        cfg = _local_config(flat.get("path"), base)
        if cfg is not None:
            return llada_shape(cfg, weight_bytes, label), "config.json"
        for key in names + [str(flat.get("path"))]:
            if key in KNOWN_ARCHITECTURES:
                return llada_shape(KNOWN_ARCHITECTURES[key], weight_bytes, label), "known architecture (weights not here)"
        return None, f"model size unknown (no config.json for {flat.get('path')})"
    return None, f"model size unknown (backbone type '{kind}': no local architecture the planner can read)"


def _tokenizer_vocab(recipe: Any) -> int | None:
    """A new in-house transformer takes its vocabulary from the tokenizers (cheap ones: char, word)."""
    from .components import build_tokenizer

    try:
        vocab = build_tokenizer(recipe.tokenizer).vocab_size
        if recipe.image_tokenizer is not None:
            vocab += build_tokenizer(recipe.image_tokenizer).codebook_size
        return int(vocab)
    except Exception:  # the planner never stops a check over a size it cannot read
        return None


# -- processes -----------------------------------------------------------------------------------


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


# -- the estimate --------------------------------------------------------------------------------


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
    reference: bool = False  # beta > 0 without LoRA: a frozen copy of the policy
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


# -- a recipe's plan -------------------------------------------------------------------------------


def _options(registry: Any, spec: Any, where: str) -> tuple[str, dict[str, Any]]:
    """A component's type and all its options, defaults included (nothing is built)."""
    flat = registry.expand(spec, where=where)
    entry = registry.get(flat["type"], where)
    model = entry.params.model_validate({k: v for k, v in flat.items() if k != "type"})
    return flat["type"], {**{k: getattr(model, k) for k in type(model).model_fields}, **(model.model_extra or {})}


def _sampler(spec: Any, where: str) -> dict[str, Any]:
    """gen_length, the positions projected per step, step count, guidance and sampling."""
    from .registry import samplers

    _, o = _options(samplers, spec, where)
    image = "image_tokens" in o
    gen = int(o["image_tokens"] if image else o.get("gen_length", 0))
    return {
        "gen_length": gen,
        "block_length": gen if image else int(o.get("block_length") or gen),
        "steps": int(o.get("steps") or gen),
        "cfg": float(o.get("cfg_scale") or 0) > 0,
        "sampling": float(o.get("temperature", 0) or 0) > 0,
        "codebook_size": o.get("codebook_size") if image and "codebook_size" in (spec if isinstance(spec, dict) else {}) else None,
        "image": image,
    }


def _codebook(recipe: Any) -> int | None:
    """Codes of the image tokenizer: a local config.json's num_vq_embeddings, or a known type."""
    from .registry import tokenizers

    if recipe.image_tokenizer is None:
        return None
    flat = tokenizers.expand(recipe.image_tokenizer, where="image_tokenizer")
    cfg = _local_config(flat.get("path"), recipe.source_dir) if flat.get("path") else None
    if cfg and cfg.get("num_vq_embeddings"):
        return int(cfg["num_vq_embeddings"])
    return KNOWN_CODEBOOKS.get(flat["type"])


@dataclass
class Plan:
    """What `check` prints: the batch lines, the memory lines, the fit verdicts."""

    batch: list[str]
    memory: list[str]
    verdicts: list[str]

    def lines(self) -> list[str]:
        return self.batch + self.memory + self.verdicts


def _gib(x: int) -> str:
    return "0" if x == 0 else f"{x / GiB:.1f} GiB" if x >= GiB / 10 else f"{x / 2**20:.1f} MiB"


def _count(x: int) -> str:
    return f"{x / 1e9:.2f} B" if x >= 1e9 else f"{x / 1e6:.1f} M" if x >= 1e5 else str(x)


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


def _split(recipe: Any, processes: int) -> tuple[int, int]:
    """(rows per process, global rows); refuses batches that do not split into whole groups."""
    if recipe.kind == "sft":
        batch = recipe.sft.batch_size
        if batch % processes:
            raise MaskGRPOError(f"sft.batch_size: {batch} examples do not split over {processes} processes; use a multiple of {processes}")
        return batch // processes, batch
    prompts, G = recipe.train.prompts_per_step, recipe.grpo.group_size
    if prompts % processes:
        raise MaskGRPOError(f"train.prompts_per_step: {prompts} prompts do not split over {processes} processes; use a multiple of {processes}")
    rows = prompts * G // processes
    accum = recipe.optim.grad_accum
    if accum > rows:
        raise MaskGRPOError(
            f"optim.grad_accum: {accum} micro-batches but only {rows} rollout rows per process ({prompts} prompts x G {G} / {processes}); use grad_accum <= {rows}"
        )
    return rows, prompts * G


def _view_rows(recipe: Any, steps: int) -> tuple[int, str]:
    """k, the masked rows per sequence in one inner iteration, and a note for trace."""
    from .registry import estimators

    if recipe.estimator is None:
        return 1, ""
    kind, o = _options(estimators, recipe.estimator, "estimator")
    if kind != "trace":
        return 1, ""
    mu = recipe.grpo.num_iterations
    shrink = o.get("shrink") or math.ceil(steps / mu)
    groups = math.ceil(steps / shrink)
    if o.get("schedule", "all") == "all":
        return groups, f"trace (schedule: all) stacks {groups} step groups per sequence: loss rows x {groups}"
    k = math.ceil(groups / mu) if groups > mu else 1
    return k, f"trace (schedule: cycle) scores {groups} step groups over the {mu} iterations: loss rows x {k}"


def plan_recipe(recipe: Any, num_processes: int | None = None, prompt_length: int | None = None) -> Plan:
    """The batch plan and memory estimate of a grpo or sft recipe; raises MaskGRPOError (one line
    saying how to fix it) on settings that cannot run."""
    grpo = recipe.kind == "grpo"
    par, source = _parallel(recipe, num_processes)
    rows, total = _split(recipe, par.processes)
    sampler = _sampler(recipe.sampler, "sampler")
    L = sampler["gen_length"]
    k, trace_note = _view_rows(recipe, sampler["steps"]) if grpo else (1, "")
    accum = recipe.optim.grad_accum if grpo else 1

    batch = [f"batch plan ({par.describe()}; {source}):"]
    if grpo:
        prompts, G, mu = recipe.train.prompts_per_step, recipe.grpo.group_size, recipe.grpo.num_iterations
        micro = math.ceil(rows * k / accum)
        batch += [
            f"  global prompts per step    {prompts} (train.prompts_per_step), group size G {G}: {total} completions",
            f"  rollout rows per process   {rows} = {prompts} x {G} / {par.processes}",
            f"  micro-batches              {accum} (optim.grad_accum) of {micro} loss rows" + (f" ({rows} x {k} / {accum})" if k > 1 else ""),
            f"  inner iterations mu        {mu} (grpo.num_iterations)",
            f"  optimizer steps            {mu} per rollout batch (one per inner iteration), {mu * recipe.train.steps} in the run",
        ]
        if trace_note:
            batch.append(f"  note: {trace_note}")
        if (rows * k) % accum:
            used = math.ceil(rows * k / micro)
            batch.append(f"  note: {rows * k} loss rows do not split evenly: micro-batches of {micro}, {used} of them (not {accum})")
    else:
        batch += [
            f"  global batch               {total} (sft.batch_size)",
            f"  rows per process           {rows} = {total} / {par.processes}, one micro-batch",
            f"  optimizer steps            {recipe.sft.steps}",
        ]
    if par.mixed_precision and par.mixed_precision not in ("no", recipe.train.mixed_precision):
        batch.append(f"  note: the accelerate config says mixed_precision {par.mixed_precision}, the recipe {recipe.train.mixed_precision}: the recipe's applies (the trainer passes it to Accelerator)")

    shape, origin = recipe_model_shape(recipe)
    if shape is None:
        return Plan(batch, [f"memory per process: {origin}"], [])
    if prompt_length is None:
        assumed = shape.max_length is None or shape.max_length > PAPER_PROMPT_TOKENS + L
        prompt_length = PAPER_PROMPT_TOKENS if assumed else shape.max_length - L
        prompt_note = f"prompt {prompt_length} tokens assumed (--prompt-length)" if assumed else f"prompt up to {prompt_length} tokens (max_length {shape.max_length} - {L})"
    else:
        prompt_note = f"prompt {prompt_length} tokens (--prompt-length)"
    if shape.max_length is not None and prompt_length + L > shape.max_length:
        raise MaskGRPOError(
            f"sampler: {prompt_length} prompt + {L} completion tokens exceed the backbone's max_length {shape.max_length}; shorten gen_length or the prompts"
        )
    if prompt_length < 1:
        raise MaskGRPOError(f"sampler.gen_length: {L} completion tokens fill the backbone's max_length {shape.max_length}; no room for a prompt")

    work = _workload(recipe, shape, par, rows, k, prompt_length, sampler)
    est = estimate_memory(shape, work)
    memory = _memory_lines(recipe, shape, work, est, origin, prompt_note)
    verdicts: list[str] = []
    if str((recipe.train if grpo else recipe.sft).device) != "cpu":  # a GPU recipe: does it fit on 1 and on 8?
        named = par.processes > 1 or bool(getattr(recipe.train if grpo else recipe.sft, "accelerate_config", None))
        for n in sorted({1, 8, par.processes}):
            alt = replace(par, processes=n, engine=par.engine if named else "DDP")
            note = "" if named else "; assumed: the recipe names no accelerate config"
            what = "one 80 GB GPU" if n == 1 else f"{n} x 80 GB GPUs ({alt.describe()}{note})"
            try:
                rows_n, _ = _split(recipe, n)
            except MaskGRPOError as err:
                verdicts.append(f"fits {what}: cannot run: {err}")
                continue
            peak = estimate_memory(shape, replace(work, rows=rows_n, processes=n)).peak
            verdicts.append(_verdict(f"fits {what}", peak, " per process" if n > 1 else ""))
    return Plan(batch, memory, verdicts)


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
        lora_ref = lora and recipe.grpo.beta > 0
        why = "beta > 0: a frozen copy" if est.reference else "LoRA: the base with the adapter off" if lora_ref else "beta = 0: none"
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


def _workload(recipe: Any, shape: ModelShape, par: Parallel, rows: int, k: int, prompt_length: int, sampler: dict[str, Any]) -> Workload:
    grpo, t = recipe.kind == "grpo", recipe.train
    lora = recipe.lora if grpo else None  # sft trains every weight
    sampled = sampler["codebook_size"] or (_codebook(recipe) if sampler["image"] else None)
    ev: dict[str, Any] = {"eval_rows": 0}
    if grpo and _evaluates(recipe):
        es = _sampler(recipe.eval_sampler, "eval_sampler") if recipe.eval_sampler is not None else {**sampler, "sampling": sampler["image"]}
        ev = {"eval_rows": t.eval_batch_size, "eval_block_length": es["block_length"], "eval_cfg": es["cfg"], "eval_sampling": es["sampling"]}
    return Workload(
        rows=rows,
        prompt_length=prompt_length,
        gen_length=sampler["gen_length"],
        block_length=sampler["block_length"],
        micro_batches=recipe.optim.grad_accum if grpo else 1,
        view_rows=k,
        lora_r=lora.r if lora else None,
        lora_targets=lora.target_modules if lora else "all-linear",
        mixed_precision=t.mixed_precision,
        gradient_checkpointing=t.gradient_checkpointing or bool(_backbone_option(recipe, "gradient_checkpointing")),
        shard_stage=par.shard_stage,
        processes=par.processes,
        offload_optimizer=par.offload_optimizer,
        offload_params=par.offload_params,
        reference=grpo and recipe.grpo.beta > 0,
        cfg=sampler["cfg"],
        sampling=sampler["sampling"],
        sampled_width=sampled,
        rollout=grpo,
        **ev,
    )


def _evaluates(recipe: Any) -> bool:
    """Does the run evaluate (before and after at least)? Only if its task has eval data."""
    from .registry import tasks

    try:
        return bool(tasks.build(recipe.task, where="task").eval_examples())
    except Exception:  # a task that cannot be read here is the check's business, not the planner's
        return True


def _backbone_option(recipe: Any, name: str) -> Any:
    from .registry import backbones

    return backbones.expand(recipe.backbone, where="backbone").get(name)
