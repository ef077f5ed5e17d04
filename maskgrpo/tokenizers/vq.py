"""Image tokenizer: a diffusers `VQModel` turning images into grids of codebook indices and back.

Images are float tensors [B, 3, H, W] in [0, 1] (or PIL images); codes are [B, h * w] row-major,
h = H / 2^(blocks - 1). An image model puts them after its text vocabulary (MMaDA-style), so
samplers take `codebook_offset = text vocabulary size` and `codebook_size = num_vq_embeddings`.

`local_encoder` (the default for models built here) makes each code depend only on its
neighbourhood: no mid-block attention in the encoder, and its GroupNorms normalise each position
over its channel group instead of over the whole image. With diffusers' global GroupNorm and
attention, adding a square in one corner changed 51 of 64 codes, even codes of plain background
at the far side; a small image model cannot learn such a code distribution (its samples stayed
blobs). With the local encoder the far side's codes do not change.
The choice is saved beside the weights in `maskgrpo_vq.json`; folders without it (aMUSEd's
VQ model) load as diffusers built them. aMUSEd's VQ model works on pixels in [0, 1] (its
pipeline does not normalise) and looks codes up inside `decode`: load it with `normalize: false`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from ..errors import MaskGRPOError
from ..registry import tokenizers
from .base import images_to_tensor, tensor_to_images
from ..utils import atomic_directory

SIDECAR = "maskgrpo_vq.json"


class PositionwiseGroupNorm(torch.nn.GroupNorm):
    """GroupNorm whose statistics are taken over a group's channels at each position only, so a
    code never sees the rest of the image through the normaliser. Same parameters as GroupNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        g = x.reshape(b, self.num_groups, c // self.num_groups, *x.shape[2:])
        var, mean = torch.var_mean(g, dim=2, keepdim=True, unbiased=False)
        y = ((g - mean) * torch.rsqrt(var + self.eps)).reshape(x.shape)
        if self.affine:
            shape = (1, c) + (1,) * (x.dim() - 2)
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


def make_encoder_local(model: torch.nn.Module) -> None:
    """Swap the encoder's GroupNorms for `PositionwiseGroupNorm` (weights kept)."""
    for name, module in list(model.encoder.named_modules()):
        if type(module) is torch.nn.GroupNorm:
            parent = model.encoder.get_submodule(name.rpartition(".")[0]) if "." in name else model.encoder
            local = PositionwiseGroupNorm(module.num_groups, module.num_channels, module.eps, module.affine)
            local.load_state_dict(module.state_dict())
            setattr(parent, name.rpartition(".")[2], local)


@tokenizers.register("vq")
class VQImageTokenizer:
    """diffusers VQModel: images <-> code grids; `path` loads a saved one, else a new model is
    built from the size options (for training)."""

    def __init__(
        self,
        path: str | None = None,
        block_out_channels: list[int] = [16, 32, 32],  # noqa: B006
        latent_channels: int = 8,
        num_vq_embeddings: int = 512,
        norm_num_groups: int = 8,
        sample_size: int = 32,
        local_encoder: bool = True,
        normalize: bool = True,
    ):
        from diffusers import VQModel

        self.normalize = normalize  # pixels in [-1, 1] for the VQ model; aMUSEd's VQ takes [0, 1]: false
        if path is not None:
            if not (Path(path) / "config.json").is_file():
                raise MaskGRPOError(f"tokenizer.path: no saved VQ model at {path} (config.json missing)")
            self.model = VQModel.from_pretrained(path)
            sidecar = Path(path) / SIDECAR
            self.local_encoder = sidecar.is_file() and bool(json.loads(sidecar.read_text()).get("local_encoder", False))
        else:
            self.local_encoder = local_encoder
            blocks = len(block_out_channels)
            self.model = VQModel(
                down_block_types=("DownEncoderBlock2D",) * blocks,
                up_block_types=("UpDecoderBlock2D",) * blocks,
                block_out_channels=tuple(block_out_channels),
                layers_per_block=1,
                latent_channels=latent_channels,
                num_vq_embeddings=num_vq_embeddings,
                norm_num_groups=norm_num_groups,
                sample_size=sample_size,
                mid_block_add_attention=not local_encoder,
            )
        if self.local_encoder:
            make_encoder_local(self.model)
        self.model.eval()

    @property
    def codebook_size(self) -> int:
        return int(self.model.config.num_vq_embeddings)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.model.config.block_out_channels) - 1)

    to_tensor = staticmethod(images_to_tensor)
    to_pil = staticmethod(tensor_to_images)

    def quantize(self, images: list | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes [B, h*w], commitment + codebook loss): what training and encoding share."""
        x = self.to_tensor(images).to(self.model.device)
        x = x * 2 - 1 if self.normalize else x
        latents = self.model.encode(x).latents
        _, loss, (_, _, indices) = self.model.quantize(latents)
        return indices.view(x.shape[0], -1), loss

    @torch.no_grad()
    def encode(self, images: list | torch.Tensor) -> torch.Tensor:
        return self.quantize(images)[0]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Code grids [B, h*w] -> images [B, 3, H, W] in [0, 1]."""
        batch, n = codes.shape
        side = math.isqrt(n)
        if side * side != n:
            raise MaskGRPOError(f"tokenizer: {n} codes do not form a square grid")
        if int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size:
            raise MaskGRPOError(f"tokenizer: codes outside the codebook [0, {self.codebook_size})")
        channels = self.model.quantize.embedding.weight.shape[1]
        shape = (batch, side, side, channels)
        if self.model.config.lookup_from_codebook:  # aMUSEd's VQ: decode() looks the codes up itself
            out = self.model.decode(codes.reshape(batch, side, side), force_not_quantize=True, shape=shape).sample
        else:
            quant = self.model.quantize.get_codebook_entry(codes.reshape(-1), shape)
            out = self.model.decode(quant, force_not_quantize=True).sample
        return ((out + 1) / 2 if self.normalize else out).clamp(0, 1)

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        with atomic_directory(path) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            (Path(tmp) / SIDECAR).write_text(json.dumps({"local_encoder": self.local_encoder}) + "\n")
