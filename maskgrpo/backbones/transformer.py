"""The in-house bidirectional transformer mask predictor, for CPUs, tests and the small worlds.

Built from timm's tested blocks (fused SDPA attention, Mlp, LayerNorm) and diffusers'
ModelMixin/ConfigMixin for `save_pretrained`/`from_pretrained` with safetensors. One model serves
text and images: image codes live in the same vocabulary after the text tokens (MMaDA-style).
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders.peft import PeftAdapterMixin
from diffusers.models.modeling_utils import ModelMixin
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from ..errors import MaskGRPOError
from ..registry import backbones
from ..utils import atomic_directory
from ..weights import check_tensors, load_tensors, shapes, tensor_files
from .base import KV


class MaskedTransformer(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """Bidirectional transformer: tokens -> logits over the whole vocabulary at every position.

    PeftAdapterMixin gives it the same LoRA API as transformers models (`add_adapter`,
    `disable_adapters`, `enable_adapters`)."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        vocab_size: int,
        mask_token_id: int,
        max_length: int = 64,
        d_model: int = 128,
        n_layers: int = 3,
        n_heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        positions: str = "right",
    ):
        super().__init__()
        if positions not in ("left", "right"):
            raise MaskGRPOError(f"backbone.positions: must be 'left' or 'right', got {positions!r}")
        for field, value, least in (("vocab_size", vocab_size, 2), ("max_length", max_length, 1), ("d_model", d_model, 1), ("n_layers", n_layers, 1), ("n_heads", n_heads, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise MaskGRPOError(f"backbone.{field}: must be an integer >= {least}, got {value!r}")
        if d_model % n_heads:
            raise MaskGRPOError(f"backbone.n_heads: {n_heads} must divide d_model {d_model}")
        if not 0 <= mask_token_id < vocab_size:
            raise MaskGRPOError(f"backbone.mask_token_id: {mask_token_id} is outside the vocabulary of {vocab_size}")
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(torch.zeros(1, max_length, d_model))
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, mlp_ratio, qkv_bias=True, proj_drop=dropout, attn_drop=dropout)
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)
        self.gradient_checkpointing = False  # not saved: a training setting, not the model's
        # std 0.02 embeddings: with N(0, 1) the small model ignored positions (DESIGN.md section 7).
        self.apply(self._init_weights)
        trunc_normal_(self.pos, std=0.02)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            trunc_normal_(m.weight, std=0.02)

    @property
    def mask_token_id(self) -> int:
        return int(self.config.mask_token_id)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    def hidden(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        length = tokens.shape[1]
        if length > self.config.max_length:
            raise ValueError(f"sequence of {length} tokens exceeds max_length {self.config.max_length}")
        # "right": the last column gets the last position embedding, so with left-padded prompts a
        # completion token's position does not depend on the longest prompt in its batch (with
        # "left" a 4-prompt GRPO batch put image codes at other positions than SFT had)
        start = self.config.max_length - length if self.config.positions == "right" else 0
        x = self.embed(tokens) + self.pos[:, start : start + length]
        attn_mask = None
        if attention_mask is not None:  # True = may be attended to; [B, 1, 1, L] broadcasts over heads and queries
            attn_mask = attention_mask.bool()[:, None, None, :]
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, attn_mask=attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask)
        return self.norm(x)

    def hidden_kv(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None, start: int = 0, cache: list[KV] | None = None
    ) -> tuple[torch.Tensor, list[KV]]:
        """The KV-cache forward (backbones.base.KVCacheBackbone): hidden states of the columns
        start:start+n of a sequence of L columns, attending to `cache` (each layer's keys/values
        over all L columns) with these n columns recomputed; without `cache`, the full sequence
        (the same numbers as `hidden`) and the keys/values that become the cache. Position
        embeddings are those of the same columns in the full L-column pass ("right": aligned to
        max_length - L), and `attention_mask` [B, L] masks keys as there."""
        n = tokens.shape[1]
        length = n if cache is None else cache[0][0].shape[2]
        if cache is None and start != 0:
            raise MaskGRPOError("backbone: hidden_kv without a cache needs the whole sequence (start 0)")
        if start < 0 or start + n > length:
            raise MaskGRPOError(f"backbone: hidden_kv columns {start}:{start + n} outside the cached {length}")
        if cache is not None and len(cache) != len(self.blocks):
            raise MaskGRPOError(f"backbone: the cache has {len(cache)} layers, the model {len(self.blocks)}")
        if length > self.config.max_length:
            raise ValueError(f"sequence of {length} tokens exceeds max_length {self.config.max_length}")
        offset = self.config.max_length - length if self.config.positions == "right" else 0
        x = self.embed(tokens) + self.pos[:, offset + start : offset + start + n]
        attn_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        present: list[KV] = []
        for i, block in enumerate(self.blocks):
            x, kv = _block_with_cache(block, x, attn_mask, None if cache is None else cache[i], start)
            present.append(kv)
        return self.norm(x), present

    def gradient_checkpointing_enable(self) -> None:
        """Recompute each block's activations in the backward pass (same gradients, less memory)."""
        self.gradient_checkpointing = True

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.hidden(tokens, attention_mask))

    def save_pretrained(self, save_directory: str | os.PathLike[str], **kwargs) -> None:  # type: ignore[override]
        """Atomic: written to a temporary folder, then renamed over `save_directory`; files
        other than the model's (e.g. a tokenizer saved beside it) are carried over."""
        target = Path(save_directory)
        with atomic_directory(target) as tmp:
            if target.is_dir():
                for f in target.iterdir():
                    if f.is_file() and f.name not in ("config.json", "diffusion_pytorch_model.safetensors"):
                        (tmp / f.name).write_bytes(f.read_bytes())
            super().save_pretrained(tmp, safe_serialization=True, **kwargs)


def _block_with_cache(block: Block, x: torch.Tensor, attn_mask: torch.Tensor | None, cache: KV | None, start: int) -> tuple[torch.Tensor, KV]:
    """timm's `Block.forward` (and its `Attention.forward`, fused SDPA path) op for op, with
    the keys/values of the columns start:start+n spliced into `cache` before attention; returns
    the block's output for these columns and the (spliced) keys/values over all columns."""
    attn = block.attn
    h = block.norm1(x)
    b, n, _ = h.shape
    gate = attn.gate(h).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = attn.qkv(h).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if cache is not None:
        k = torch.cat([cache[0][:, :, :start], k, cache[0][:, :, start + n :]], dim=2)
        v = torch.cat([cache[1][:, :, :start], v, cache[1][:, :, start + n :]], dim=2)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    a = attn.norm(a.transpose(1, 2).reshape(b, n, -1))
    if gate is not None:
        a = a * gate
    a = attn.proj_drop(attn.proj(a))
    x = x + block.drop_path1(block.ls1(a))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, (k, v)


WEIGHTS = "diffusion_pytorch_model.safetensors"


def load_transformer(folder: Path) -> MaskedTransformer:
    """A saved transformer, loaded strictly: a bad config.json, a missing, truncated or foreign
    weights file, a missing or unexpected tensor is one line naming the folder (diffusers'
    loader would warn and leave missing weights random)."""
    where = f"backbone.path: {folder}"
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise MaskGRPOError(f"{where}: no saved model here (config.json missing)")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MaskGRPOError(f"{where}: config.json is not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("_class_name") != "MaskedTransformer":
        raise MaskGRPOError(f"{where}: config.json is not a MaskedTransformer config")
    allowed = set(inspect.signature(MaskedTransformer.__init__).parameters) - {"self"}
    options = {k: v for k, v in config.items() if k in allowed}
    missing = {"vocab_size", "mask_token_id"} - set(options)
    if missing:
        raise MaskGRPOError(f"{where}: config.json lacks {sorted(missing)[0]}")
    try:
        model = MaskedTransformer(**options)
    except MaskGRPOError as err:
        raise MaskGRPOError(f"{where}: config.json: {err}") from None
    files = tensor_files(folder, where, single=(WEIGHTS,))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_tensors(shapes(files, where), expected, where, folder)
    load_tensors(model, files, torch.float32)
    return model


@backbones.register("transformer")
def build_transformer(
    path: str | None = None,
    vocab_size: int | None = None,
    mask_token_id: int | None = None,
    max_length: int = 64,
    d_model: int = 128,
    n_layers: int = 3,
    n_heads: int = 4,
    mlp_ratio: float = 4.0,
    dropout: float = 0.0,
    positions: str = "right",
) -> MaskedTransformer:
    """In-house bidirectional transformer (timm blocks); `path` loads a saved one.

    `positions: right` aligns position embeddings to the end of the sequence (batch-invariant
    with left padding); `left` is the older layout, kept for checkpoints trained with it."""
    if path is not None:
        return load_transformer(Path(path))
    if vocab_size is None or mask_token_id is None:
        raise MaskGRPOError("backbone: a new transformer needs vocab_size and mask_token_id (or a path)")
    return MaskedTransformer(vocab_size, mask_token_id, max_length, d_model, n_layers, n_heads, mlp_ratio, dropout, positions)
