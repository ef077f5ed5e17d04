"""Adapter for aMUSEd (diffusers' `UVit2DModel` conditioned on a CLIP text encoder) as a mask
predictor over this library's single token space.

Token layout (what samplers, estimators and the trainer see), with T = len(CLIP tokenizer)
(49408 for amused-256) and K = the UVit codebook size (8192):

    [0, T)          CLIP token ids: the prompt, encoded without BOS/EOS (the `hf` tokenizer
                    adapter over `<folder>/tokenizer`), left-padded with an attention mask
    [T, T + K)      image codes: VQ code c is token T + c (codes follow the text vocabulary,
                    as in MMaDA and the in-house transformer), so samplers take
                    codebook_offset = T, codebook_size = K
    T + K           the mask token (57600 for amused-256); vocab_size = T + K + 1

A sequence is prompt positions followed by exactly `image_tokens` = sample_size^2 image positions
(256 for amused-256), row-major over the 16x16 grid; the backbone splits them by that count.

How the prompt becomes aMUSEd's conditioning (as `AmusedPipeline` does): the attended, unmasked
prompt ids are wrapped in BOS/EOS, truncated and right-padded to the tokenizer's
`model_max_length` (77) with its pad id; `encoder_hidden_states` = the CLIP text encoder's
`hidden_states[-2]`, `pooled_text_emb` = its `text_embeds`; `micro_conds` = (width, height,
crop coordinates, aesthetic score), by default (256, 256, 0, 0, 6) as in the pipeline.
Mask tokens in the prompt are dropped, so a prompt whose real positions are all masked -- what
the samplers' classifier-free guidance feeds as "unconditional" -- is encoded as the empty
prompt "", which is exactly aMUSEd's default negative prompt. (Guidance itself: aMUSEd writes
uncond + g (cond - uncond), the samplers here uncond + (1 + w)(cond - uncond), so w = g - 1.)
Image positions map to UVit ids (code, or UVit's own mask id from `scheduler/` = 8255); the
UVit's logits cover the K codes.

Logits: `hidden` runs the text encoder (frozen, no grad; identical prompts in a batch --
a GRPO group, the CFG pair -- are encoded once) and the UVit up to its output layer, giving
features at image positions (zeros at prompt positions). `logits_from_hidden` applies the UVit's
1x1-conv output layer (`ConvMlmLayer`, position-wise, moved out of the UVit into `head`) only to
the rows asked for, so estimators project only the scored positions, and embeds the K code
logits in the full vocabulary with -1e4 elsewhere (a finite floor: under CFG, -inf - -inf would
be NaN; exp(-1e4) is exactly 0). The V-wide tensor (V/K ~ 7 for amused-256) is what the backbone
contract asks for; the image samplers slice it back to the codebook at once. Prompt positions
carry no prediction (aMUSEd predicts image tokens only): their logits are uniform over codes.

Trainable: the UVit and its output layer; the text encoder is frozen. LoRA goes to the UVit
through diffusers' PEFT integration (`add_adapter`). The VQ model is not part of the backbone:
it is the image tokenizer (`vq` with `path: <folder>/vqvae`, `normalize: false`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..errors import MaskGRPOError
from ..registry import backbones
from ..utils import atomic_directory

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LOGIT_FLOOR = -1e4  # logit outside the codebook: exp(-1e4) == 0, and finite under CFG arithmetic


@backbones.register("amused")
class AmusedBackbone(nn.Module):
    """aMUSEd (diffusers UVit2DModel + CLIP text encoder) as a mask predictor; local folder or hub cache only."""

    def __init__(
        self,
        path: str,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        image_size: int | None = None,
        aesthetic_score: float = 6.0,
        crop_coord: tuple[int, int] = (0, 0),
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        from diffusers import UVit2DModel
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        self.path = str(path)
        torch_dtype = _DTYPES[dtype]
        try:
            self.transformer = UVit2DModel.from_pretrained(path, subfolder="transformer", local_files_only=True, torch_dtype=torch_dtype)
            self.text_encoder = CLIPTextModelWithProjection.from_pretrained(
                path, subfolder="text_encoder", local_files_only=True, dtype=torch_dtype
            )
            self.tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer", local_files_only=True)
        except (OSError, ValueError) as err:
            raise MaskGRPOError(f"backbone.path: cannot load aMUSEd from '{path}': {str(err).splitlines()[0]}") from None
        self.text_encoder.requires_grad_(False).eval()
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()

        config = self.transformer.config
        self.text_vocab = len(self.tokenizer)
        self.codebook_size = int(config.codebook_size)
        self.grid = int(config.sample_size)
        self.image_tokens = self.grid * self.grid
        self.uvit_mask_id = self._uvit_mask_id(path, int(config.vocab_size))
        if not self.codebook_size <= self.uvit_mask_id < int(config.vocab_size):
            raise MaskGRPOError(f"backbone: UVit mask id {self.uvit_mask_id} is not in [{self.codebook_size}, {config.vocab_size})")
        # CLIP ids fed to the text encoder: BOS + prompt + EOS, right-padded to the tokenizer's length
        max_positions = int(self.text_encoder.config.max_position_embeddings)
        self.text_length = min(int(getattr(self.tokenizer, "model_max_length", max_positions) or max_positions), max_positions)
        tok = self.tokenizer
        if tok.bos_token_id is None or tok.eos_token_id is None:
            raise MaskGRPOError(f"backbone: the CLIP tokenizer in '{path}/tokenizer' has no BOS/EOS token")
        self.bos_id, self.eos_id = int(tok.bos_token_id), int(tok.eos_token_id)
        self.pad_id = int(tok.pad_token_id) if tok.pad_token_id is not None else self.eos_id
        size = image_size if image_size is not None else self.grid * self._vae_scale_factor(path)
        # micro-conditioning as AmusedPipeline: (width, height, crop coordinates, aesthetic score)
        micro = torch.tensor([size, size, crop_coord[0], crop_coord[1], aesthetic_score], dtype=torch.float32)
        self.register_buffer("micro_conds", micro, persistent=False)
        # the output layer applies per position: keep it here so logits are computed only where needed
        self.head = self.transformer.mlm_layer
        self.transformer.mlm_layer = nn.Identity()

    @staticmethod
    def _uvit_mask_id(path: str, vocab_size: int) -> int:
        """The mask id the UVit was trained with: scheduler/scheduler_config.json (8255 for amused),
        else vocab_size - 1 (diffusers' aMUSEd training script)."""
        from diffusers import AmusedScheduler

        try:
            return int(AmusedScheduler.load_config(path, subfolder="scheduler", local_files_only=True)["mask_token_id"])
        except (OSError, ValueError, KeyError):
            return vocab_size - 1

    @staticmethod
    def _vae_scale_factor(path: str) -> int:
        """2^(VQ blocks - 1) from vqvae/config.json, 8 without one (as AmusedPipeline)."""
        from diffusers import VQModel

        try:
            return 2 ** (len(VQModel.load_config(path, subfolder="vqvae", local_files_only=True)["block_out_channels"]) - 1)
        except (OSError, ValueError, KeyError):
            return 8

    # -- the backbone contract -------------------------------------------------------------------
    @property
    def codebook_offset(self) -> int:
        return self.text_vocab

    @property
    def mask_token_id(self) -> int:
        return self.text_vocab + self.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.text_vocab + self.codebook_size + 1

    def train(self, mode: bool = True) -> AmusedBackbone:
        super().train(mode)
        self.text_encoder.eval()  # frozen: never in training mode
        return self

    def text_ids(self, prompt: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """CLIP input ids [B, text_length] for prompt rows [B, P] (what AmusedPipeline's
        tokenizer call gives for the same text): attended, unmasked ids between BOS and EOS,
        right-padded. A row with no such ids is the empty prompt (unconditional)."""
        real = torch.ones_like(prompt, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        real = real & (prompt != self.mask_token_id)
        if bool(((prompt < 0) | (prompt >= self.text_vocab))[real].any()):
            raise MaskGRPOError(
                f"backbone: prompt ids must be CLIP ids < {self.text_vocab} or the mask id; is sampler.image_tokens "
                f"{self.image_tokens} (the UVit's {self.grid}x{self.grid} grid)?"
            )
        out = torch.full((prompt.shape[0], self.text_length), self.pad_id, dtype=torch.long)
        keep = self.text_length - 2
        for i, (row, r) in enumerate(zip(prompt.cpu(), real.cpu())):
            ids = row[r][:keep]
            n = len(ids)
            out[i, 0] = self.bos_id
            out[i, 1 : 1 + n] = ids
            out[i, 1 + n] = self.eos_id
        return out.to(prompt.device)

    @torch.no_grad()
    def encode_text(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder_hidden_states = hidden_states[-2], pooled = text_embeds), each unique row once."""
        unique, inverse = torch.unique(ids, dim=0, return_inverse=True)
        out = self.text_encoder(unique, output_hidden_states=True, return_dict=True)
        return out.hidden_states[-2][inverse], out.text_embeds[inverse]

    def hidden(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Features [B, L, C] for the output layer: the UVit's at the image positions (the last
        `image_tokens`), zeros at the prompt positions."""
        batch, length = tokens.shape
        prompt_length = length - self.image_tokens
        if prompt_length < 0:
            raise MaskGRPOError(f"backbone: {length} tokens, fewer than the {self.image_tokens} image positions")
        image = tokens[:, prompt_length:]
        is_mask = image == self.mask_token_id
        codes = image - self.text_vocab
        if bool(((codes < 0) | (codes >= self.codebook_size))[~is_mask].any()):
            raise MaskGRPOError(
                f"backbone: the last {self.image_tokens} positions must be image codes [{self.text_vocab}, "
                f"{self.text_vocab + self.codebook_size}) or the mask id {self.mask_token_id}; is sampler.image_tokens "
                f"{self.image_tokens} (the UVit's {self.grid}x{self.grid} grid)?"
            )
        grid = torch.where(is_mask, torch.full_like(codes, self.uvit_mask_id), codes).view(batch, self.grid, self.grid)
        attn = None if attention_mask is None else attention_mask[:, :prompt_length]
        states, pooled = self.encode_text(self.text_ids(tokens[:, :prompt_length], attn))
        dtype = self.transformer.dtype
        micro = self.micro_conds.to(dtype).expand(batch, -1)
        feats = self.transformer(grid, encoder_hidden_states=states.to(dtype), pooled_text_emb=pooled.to(dtype), micro_conds=micro)
        feats = feats.flatten(2).transpose(1, 2)  # [B, C, H, W] -> [B, H*W, C], row-major like the VQ codes
        return torch.cat([feats.new_zeros(batch, prompt_length, feats.shape[-1]), feats], dim=1)

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., C] -> [..., vocab_size]: the UVit output layer on these rows only, its K code
        logits placed at [T, T + K), LOGIT_FLOOR elsewhere (text ids and the mask id)."""
        lead, channels = hidden.shape[:-1], hidden.shape[-1]
        codes = self.head(hidden.reshape(-1, channels, 1, 1)).reshape(*lead, self.codebook_size)
        pad = (self.text_vocab, self.vocab_size - self.text_vocab - self.codebook_size)
        return torch.nn.functional.pad(codes, pad, value=LOGIT_FLOOR)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits_from_hidden(self.hidden(tokens, attention_mask))

    # -- LoRA (diffusers' PEFT integration on the UVit) --------------------------------------------
    def gradient_checkpointing_enable(self) -> None:
        self.transformer.enable_gradient_checkpointing()

    def add_adapter(self, config: Any) -> None:
        self.transformer.add_adapter(config)

    def disable_adapters(self) -> None:
        self.transformer.disable_adapters()

    def enable_adapters(self) -> None:
        self.transformer.enable_adapters()

    # -- saving --------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        """The Hub layout again (transformer with its output layer, text_encoder, tokenizer);
        scheduler/, vqvae/ and model_index.json are copied from the source folder when it has them."""
        source = Path(self.path)
        with atomic_directory(save_directory) as tmp:
            self.transformer.mlm_layer = self.head
            try:
                self.transformer.save_pretrained(tmp / "transformer", safe_serialization=True)
            finally:
                self.transformer.mlm_layer = nn.Identity()
            self.text_encoder.save_pretrained(tmp / "text_encoder")
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            for name in ("scheduler", "vqvae"):
                if (source / name).is_dir():
                    shutil.copytree(source / name, tmp / name)
            if (source / "model_index.json").is_file():
                shutil.copy(source / "model_index.json", tmp / "model_index.json")
