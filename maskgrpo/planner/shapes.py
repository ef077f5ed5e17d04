"""What the estimate needs of an architecture, from a config.json or a known preset.

Its own module because reading sizes must never build a model nor download weights: it reads a
local (or already cached) config.json, or falls back to the known 8B architectures below.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MaskGRPOError

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
    from ..backbones.llada import LLaDAConfig

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
    from ..registry import backbones

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
    from ..components import build_tokenizer

    try:
        vocab = build_tokenizer(recipe.tokenizer).vocab_size
        if recipe.image_tokenizer is not None:
            vocab += build_tokenizer(recipe.image_tokenizer).codebook_size
        return int(vocab)
    except Exception:  # the planner never stops a check over a size it cannot read
        return None


def _codebook(recipe: Any) -> int | None:
    """Codes of the image tokenizer: a local config.json's num_vq_embeddings, or a known type."""
    from ..registry import tokenizers

    if recipe.image_tokenizer is None:
        return None
    flat = tokenizers.expand(recipe.image_tokenizer, where="image_tokenizer")
    cfg = _local_config(flat.get("path"), recipe.source_dir) if flat.get("path") else None
    if cfg and cfg.get("num_vq_embeddings"):
        return int(cfg["num_vq_embeddings"])
    return KNOWN_CODEBOOKS.get(flat["type"])
