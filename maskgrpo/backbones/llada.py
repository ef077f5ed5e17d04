"""Native LLaDA backbone (LLaDA-8B, and MMaDA-8B which shares the architecture), no remote code.

Follows LLaDA's modeling_llada.py (the copy in MMaDA's repository, `LLaDALlamaBlock`): a
bidirectional transformer with RoPE, RMSNorm, a SiLU-gated MLP (`ff_out(silu(ff_proj(x)) *
up_proj(x))`), no biases and separate q/k/v projections. Parameters carry the checkpoint's own
names (`model.transformer.wte`, `model.transformer.blocks.N.q_proj`, ..., `model.transformer.ff_out`)
so the official safetensors shards load strictly, and LoRA targets are the paper's names. The
authors' file does not run under transformers 5 (DESIGN.md section 8); this one needs only torch.

Padding: keys where `attention_mask` is False are masked out of attention (left-padded prompts).
LLaDA's own hub file ignores masks (it was trained without padding); `mask_padding: false`
reproduces that. RoPE positions count from the first column, padding included, as the reference
does; attention scores only see position differences, so left padding does not move them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import MaskGRPOError
from ..registry import backbones
from ..utils import atomic_directory
from ..weights import check_tensors, load_tensors, local_folder, shapes, tensor_files

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
KV = tuple[torch.Tensor, torch.Tensor]

# config.json fields whose other values change the architecture; the reference's defaults
# (its ModelConfig) apply where a field is absent. LLaDA-8B and MMaDA-8B use exactly these.
_REQUIRED_VALUES: dict[str, tuple[Any, tuple[Any, ...]]] = {
    # field: (reference default, supported values)
    "block_type": ("sequential", ("llama",)),
    "activation_type": ("swiglu", ("silu",)),
    "layer_norm_type": ("default", ("rms",)),
    "rope": (False, (True,)),
    "alibi": (False, (False,)),
    "attention_layer_norm": (False, (False,)),
    "include_bias": (False, (False,)),
    "include_qkv_bias": (False, (False, None)),
    "bias_for_layer_norm": (None, (False, None)),
    "layer_norm_with_affine": (True, (True,)),
    "block_group_size": (1, (1,)),
}


@dataclass(frozen=True)
class LLaDAConfig:
    """The architecture read from a checkpoint's config.json (LLaDA's field names)."""

    d_model: int
    n_heads: int
    n_kv_heads: int
    n_layers: int
    mlp_hidden_size: int
    embedding_size: int  # rows of wte and ff_out: the logits' width (MMaDA: text + image codes)
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    rope_full_precision: bool = True
    weight_tying: bool = True
    scale_logits: bool = False
    input_emb_norm: bool = False
    attention_dropout: float = 0.1
    residual_dropout: float = 0.1
    embedding_dropout: float = 0.1
    mask_token_id: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> LLaDAConfig:
        """Validate `raw` (defaults as in the reference's ModelConfig); an unsupported value is
        a one-line error naming the field."""
        for name, (default, allowed) in _REQUIRED_VALUES.items():
            value = raw.get(name, default)
            if value not in allowed:
                raise MaskGRPOError(f"{source}: {name} = {value!r} is not supported by the native LLaDA backbone (supported: {', '.join(map(repr, allowed))})")
        for name in ("d_model", "n_heads", "n_layers"):
            if not isinstance(raw.get(name), int) or raw[name] <= 0:
                raise MaskGRPOError(f"{source}: {name} must be a positive integer, got {raw.get(name)!r}")
        d, heads = raw["d_model"], raw["n_heads"]
        if d % heads:
            raise MaskGRPOError(f"{source}: d_model {d} is not divisible by n_heads {heads}")
        kv = _kv_heads(raw, heads, source)
        if heads % kv:
            raise MaskGRPOError(f"{source}: n_heads {heads} is not a multiple of n_kv_heads {kv}")
        vocab = raw.get("vocab_size", 50257)
        embedding = raw.get("embedding_size", 50304) or vocab
        if embedding < vocab:
            raise MaskGRPOError(f"{source}: embedding_size {embedding} is smaller than vocab_size {vocab}")
        mlp = raw.get("mlp_hidden_size") or raw.get("mlp_ratio", 4) * d
        return cls(
            d_model=d,
            n_heads=heads,
            n_kv_heads=kv,
            n_layers=raw["n_layers"],
            mlp_hidden_size=int(mlp),
            embedding_size=int(embedding),
            rope_theta=float(raw.get("rope_theta", 10000.0)),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
            rope_full_precision=bool(raw.get("rope_full_precision", True)),
            weight_tying=bool(raw.get("weight_tying", True)),
            scale_logits=bool(raw.get("scale_logits", False)),
            input_emb_norm=bool(raw.get("input_emb_norm", False)),
            attention_dropout=float(raw.get("attention_dropout", 0.1)),
            residual_dropout=float(raw.get("residual_dropout", 0.1)),
            embedding_dropout=float(raw.get("embedding_dropout", 0.1)),
            mask_token_id=raw.get("mask_token_id"),
            raw=dict(raw),
        )


def _kv_heads(raw: dict[str, Any], heads: int, source: str) -> int:
    """The reference's effective_n_kv_heads: n_kv_heads, or 1 / n_heads from multi_query_attention."""
    kv, mqa = raw.get("n_kv_heads"), raw.get("multi_query_attention")
    if kv is None:
        return 1 if mqa is True else heads
    if mqa is not None and kv != (1 if mqa else heads):
        raise MaskGRPOError(f"{source}: n_kv_heads {kv} contradicts multi_query_attention {mqa}")
    return int(kv)


class RMSNorm(nn.Module):
    """RMS norm computed in float32, then scaled by the weight in the input's dtype (as the
    reference's RMSLayerNorm)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), float32 [..., L, head_dim] for integer positions [..., L]: frequencies
    theta^(-2i/d), each repeated over the two halves of a head (rotate-half layout)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.to(torch.float32)[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i + d/2}) of every head: x cos + rotate_half(x) sin."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class LLaDABlock(nn.Module):
    """Pre-norm block: x + attn(attn_norm(x)), then x + ff_out(silu(ff_proj(h)) * up_proj(h))."""

    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.cfg = cfg
        d, kv_dim, hidden = cfg.d_model, cfg.n_kv_heads * cfg.head_dim, cfg.mlp_hidden_size
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv_dim, bias=False)
        self.v_proj = nn.Linear(d, kv_dim, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.ff_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.ff_out = nn.Linear(hidden, d, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None, past: KV | None = None, future: KV | None = None
    ) -> tuple[torch.Tensor, KV]:
        """`past`: this layer's (keys, values) of earlier columns, keys already rotated; `future`:
        those of later columns (the dual block cache). Returns the new hidden states and the
        (keys, values) of all columns (past + these + future)."""
        cfg = self.cfg
        b, length, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, length, cfg.n_heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, length, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, length, cfg.n_kv_heads, cfg.head_dim).transpose(1, 2)
        if cfg.rope_full_precision:
            q, k = apply_rope(q.float(), cos, sin).to(q.dtype), apply_rope(k.float(), cos, sin).to(k.dtype)
        else:
            q, k = apply_rope(q, cos.to(q.dtype), sin.to(q.dtype)), apply_rope(k, cos.to(k.dtype), sin.to(k.dtype))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if future is not None:
            k, v = torch.cat([k, future[0]], dim=2), torch.cat([v, future[1]], dim=2)
        drop = cfg.attention_dropout if self.training else 0.0
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop, enable_gqa=cfg.n_kv_heads != cfg.n_heads)
        att = self.attn_out(att.transpose(1, 2).reshape(b, length, cfg.d_model))
        x = x + F.dropout(att, cfg.residual_dropout, self.training)
        h = self.ff_norm(x)
        h = self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))
        return x + F.dropout(h, cfg.residual_dropout, self.training), (k, v)


class LLaDAModel(nn.Module):
    """`transformer.{wte, blocks, ln_f, ff_out}`: the reference's LLaDAModel parameter tree."""

    def __init__(self, cfg: LLaDAConfig):
        super().__init__()
        self.cfg = cfg
        parts: dict[str, nn.Module] = {
            "wte": nn.Embedding(cfg.embedding_size, cfg.d_model),
            "blocks": nn.ModuleList(LLaDABlock(cfg) for _ in range(cfg.n_layers)),
            "ln_f": RMSNorm(cfg.d_model, cfg.rms_norm_eps),
        }
        if not cfg.weight_tying:
            parts["ff_out"] = nn.Linear(cfg.d_model, cfg.embedding_size, bias=False)
        self.transformer = nn.ModuleDict(parts)


def _attention_mask(mask: torch.Tensor | None, batch: int, keys: int) -> torch.Tensor | None:
    """[B, keys] (True = real token) -> SDPA's boolean [B, 1, 1, keys], or None without padding.
    A row with no real key at all attends everywhere (its output is padding anyway, not NaN)."""
    if mask is None:
        return None
    mask = mask.bool()
    if mask.shape != (batch, keys):
        raise MaskGRPOError(f"backbone: attention_mask has shape {list(mask.shape)}, expected {[batch, keys]}")
    if bool(mask.all()):
        return None
    mask = mask | ~mask.any(dim=1, keepdim=True)
    return mask[:, None, None, :]


class LLaDABackbone(nn.Module):
    """The mask predictor over a LLaDAModel: tokens -> logits over the whole embedding."""

    def __init__(self, cfg: LLaDAConfig, mask_token_id: int, mask_padding: bool = True, gradient_checkpointing: bool = False):
        super().__init__()
        self.cfg = cfg
        self.model = LLaDAModel(cfg)
        self._mask_token_id = int(mask_token_id)
        self.mask_padding = mask_padding
        self.gradient_checkpointing = gradient_checkpointing

    # -- the backbone contract ---------------------------------------------------------------------
    @property
    def mask_token_id(self) -> int:
        return self._mask_token_id

    @property
    def vocab_size(self) -> int:
        return self.cfg.embedding_size

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits_from_hidden(self.hidden(tokens, attention_mask))

    def hidden(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm hidden states [B, L, d_model]; `logits_from_hidden` projects any subset."""
        return self.hidden_states(tokens, attention_mask)[0]

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        t = self.model.transformer
        logits = F.linear(hidden, t.wte.weight) if self.cfg.weight_tying else t.ff_out(hidden)
        return logits * (1 / math.sqrt(self.cfg.d_model)) if self.cfg.scale_logits else logits

    # -- the seam for a KV cache (prefix caching in rollouts) ---------------------------------------
    def hidden_states(
        self,
        tokens: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: list[KV] | None = None,
        future_key_values: list[KV] | None = None,
    ) -> tuple[torch.Tensor, list[KV]]:
        """(hidden [B, L, d], per-layer (keys, values) of past + these + future columns).

        With `past_key_values` (one (k, v) per layer, keys rotated, [B, kv_heads, P, head_dim]),
        `tokens` are the columns after those P; `position_ids` default to P + arange(L), and
        `attention_mask` covers all P + L (+ F) keys. Feeding a full pass's keys/values for a prefix
        reproduces that pass's outputs on the rest exactly (a test checks this).
        `future_key_values` (F columns after these, keys rotated at their own positions) are
        attended to as well: the dual block cache of the text sampler."""
        cfg, t = self.cfg, self.model.transformer
        batch, length = tokens.shape
        past_len = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        future_len = 0 if future_key_values is None else future_key_values[0][0].shape[2]
        for name, given in (("past_key_values", past_key_values), ("future_key_values", future_key_values)):
            if given is not None and len(given) != cfg.n_layers:
                raise MaskGRPOError(f"backbone: {name} has {len(given)} layers, the model {cfg.n_layers}")
        if position_ids is None:
            position_ids = torch.arange(past_len, past_len + length, device=tokens.device)
        cos, sin = rope_tables(position_ids, cfg.head_dim, cfg.rope_theta)
        if cos.dim() == 3:  # per-row positions [B, L]: broadcast over heads
            cos, sin = cos[:, None], sin[:, None]
        mask = _attention_mask(attention_mask, batch, past_len + length + future_len) if self.mask_padding else None
        x = t.wte(tokens)
        if cfg.input_emb_norm:
            x = x * cfg.d_model**0.5
        x = F.dropout(x, cfg.embedding_dropout, self.training)
        present: list[KV] = []
        for i, block in enumerate(t.blocks):
            past = None if past_key_values is None else past_key_values[i]
            future = None if future_key_values is None else future_key_values[i]
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, kv = checkpoint(block, x, cos, sin, mask, past, future, use_reentrant=False)
            else:
                x, kv = block(x, cos, sin, mask, past, future)
            present.append(kv)
        return t.ln_f(x), present

    def hidden_kv(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None, start: int = 0, cache: list[KV] | None = None
    ) -> tuple[torch.Tensor, list[KV]]:
        """The KV-cache forward of the text sampler (backbones.base.KVCacheBackbone) over
        `hidden_states`: columns start:start+n against the cache's columns before and after
        them, RoPE positions start + arange(n) as in the full pass (padding included, as there)."""
        if cache is None:
            if start != 0:
                raise MaskGRPOError("backbone: hidden_kv without a cache needs the whole sequence (start 0)")
            return self.hidden_states(tokens, attention_mask)
        end = start + tokens.shape[1]
        if start < 0 or end > cache[0][0].shape[2]:
            raise MaskGRPOError(f"backbone: hidden_kv columns {start}:{end} outside the cached {cache[0][0].shape[2]}")
        past = [(k[:, :, :start], v[:, :, :start]) for k, v in cache]
        future = [(k[:, :, end:], v[:, :, end:]) for k, v in cache] if end < cache[0][0].shape[2] else None
        positions = torch.arange(start, end, device=tokens.device)
        return self.hidden_states(tokens, attention_mask, positions, past, future)

    # -- LoRA (peft), what the trainer's apply_lora and reference policy use --------------------------
    def add_adapter(self, config: Any, adapter_name: str = "default") -> None:
        """Inject a peft adapter (e.g. LoraConfig on q_proj, ..., ff_out). Adapter weights are
        kept in float32 even on a bf16 base: at lr 3e-6 bf16 updates would round to nothing."""
        from peft import inject_adapter_in_model

        inject_adapter_in_model(config, self, adapter_name=adapter_name)
        self.peft_config = {**getattr(self, "peft_config", {}), adapter_name: config}
        for name, p in self.named_parameters():
            if "lora_" in name:
                p.data = p.data.float()

    def _tuner_layers(self) -> list[Any]:
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.modules() if isinstance(m, BaseTunerLayer)]
        if not layers:
            raise MaskGRPOError("backbone: no adapter attached (add_adapter first)")
        return layers

    def disable_adapters(self) -> None:
        for layer in self._tuner_layers():
            layer.enable_adapters(False)

    def enable_adapters(self) -> None:
        for layer in self._tuner_layers():
            layer.enable_adapters(True)

    def gradient_checkpointing_enable(self) -> None:
        self.gradient_checkpointing = True

    # -- saving and loading ------------------------------------------------------------------------
    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under the checkpoint's names: adapter weights left out, peft's `.base_layer`
        wrapping undone, so a saved folder loads as the base model."""
        return {k.replace(".base_layer.", "."): v for k, v in self.state_dict().items() if "lora_" not in k}

    def save_pretrained(self, save_directory: str | os.PathLike[str], max_shard_size: str | int = "5GB") -> None:
        """config.json (the checkpoint's fields) + safetensors in the hub layout (shards and an
        index above `max_shard_size`); with an adapter attached also peft's adapter files.
        Atomic: written beside the target, then renamed over it."""
        from huggingface_hub import save_torch_state_dict

        with atomic_directory(save_directory) as tmp:
            raw = {**self.cfg.raw, "mask_token_id": self.mask_token_id}
            (tmp / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
            state = {k: v.contiguous() for k, v in self.base_state_dict().items()}
            save_torch_state_dict(state, tmp, max_shard_size=max_shard_size)
            if any("lora_" in k for k in self.state_dict()):
                _save_adapter(self, tmp)

    @classmethod
    def from_config(
        cls, config: dict[str, Any], mask_token_id: int | None = None, dtype: torch.dtype = torch.float32, seed: int = 0, **options: Any
    ) -> LLaDABackbone:
        """A new, randomly initialised model (normal(0, init_std) weights, unit norms): for tests,
        benchmarks and tiny fixtures."""
        cfg = LLaDAConfig.from_dict(config)
        model = cls(cfg, _mask_id(mask_token_id, cfg, "config"), **options)
        std = float(config.get("init_std", 0.02))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.ones_like(p) if name.endswith("norm.weight") or "ln_f" in name else torch.randn(p.shape, generator=g) * std)
        return model.to(dtype)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        mask_token_id: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        **options: Any,
    ) -> LLaDABackbone:
        """Build on the meta device, check every tensor's name and shape against the headers,
        then assign the weights shard by shard (strict; see maskgrpo.weights)."""
        folder = local_folder(str(path), "backbone.path", ["*.json", "*.safetensors"])
        if not (folder / "config.json").is_file():
            raise MaskGRPOError(f"backbone.path: no config.json in {folder}")
        config_file = folder / "config.json"
        try:
            raw = json.loads(config_file.read_text())
        except json.JSONDecodeError as err:
            raise MaskGRPOError(f"backbone.path: {config_file} is not valid JSON ({err})") from None
        cfg = LLaDAConfig.from_dict(raw, str(config_file))
        with torch.device("meta"):
            model = cls(cfg, _mask_id(mask_token_id, cfg, str(config_file)), **options)
        files = tensor_files(folder, "backbone.path")
        check_tensors(shapes(files, "backbone.path"), {k: tuple(v.shape) for k, v in model.state_dict().items()}, "backbone.path", folder)
        load_tensors(model, files, dtype, device)
        return model.eval()


def _mask_id(given: int | None, cfg: LLaDAConfig, source: str) -> int:
    mask = given if given is not None else cfg.mask_token_id
    if mask is None:
        raise MaskGRPOError(f"backbone.mask_token_id: not in {source}; set it in the preset")
    if not 0 <= int(mask) < cfg.embedding_size:
        raise MaskGRPOError(f"backbone.mask_token_id: {mask} is outside the embedding (size {cfg.embedding_size})")
    return int(mask)


def _save_adapter(model: nn.Module, folder: Path) -> None:
    """peft's adapter files (adapter_config.json, adapter_model.safetensors) for the default adapter."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = get_peft_model_state_dict(model, adapter_name="default")
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "adapter_model.safetensors")
    model.peft_config["default"].save_pretrained(str(folder))


@backbones.register("llada")
def build_llada(
    *,
    path: str,
    mask_token_id: int | None = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    device: str = "cpu",
    gradient_checkpointing: bool = False,
    mask_padding: bool = True,
) -> LLaDABackbone:
    """Native LLaDA / MMaDA (no remote code): a local folder or hub id in the hub layout, loaded
    strictly from its safetensors; `device` is where the weights land (cuda: straight onto the GPU)."""
    return LLaDABackbone.from_pretrained(
        path, mask_token_id, _DTYPES[dtype], device, gradient_checkpointing=gradient_checkpointing, mask_padding=mask_padding
    )
