"""MMaDA's image tokenizer: MAGVIT-v2 with lookup-free quantization (showlab/magvitv2).

Follows MMaDA's modeling_magvitv2.py (`MAGVITv2`: `VQGANEncoder`, `LFQuantizer`, `VQGANDecoder`,
built from taming-transformers' ResnetBlock / AttnBlock / Downsample / Upsample): a conv encoder
down to `z_channels` = 13 channels at 1/16 of the image side, quantized per position to the
sign of each channel (lookup-free: code = the 13 sign bits, first channel most significant, so
8,192 codes), and a conv decoder from the ±1 vectors back to pixels. 256 px -> 16x16 codes,
512 px -> 32x32. Pixels go in as [0, 1] and are normalised to [-1, 1] as MMaDA's
`image_transform` does; decoded images come back as clamp((x + 1) / 2, 0, 1), as its
`inference_t2i.py` does.

Parameters carry the checkpoint's names (`encoder.down.0.block.0.conv1.weight`, ...), loaded
strictly. `MAGVITv2()` takes no arguments in MMaDA, so its config.json holds no sizes: absent
fields take MMaDA's. Optional `encoder`, `decoder` (the VQGANEncoder/VQGANDecoder arguments)
and `codebook_dim` fields describe other sizes (the tiny test fixture uses them).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MaskGRPOError
from ..registry import tokenizers
from .base import images_to_tensor, tensor_to_images
from ..utils import atomic_directory
from ..weights import check_tensors, load_tensors, local_folder, shapes, tensor_files

WEIGHT_FILES = ("pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.safetensors")
PICKLE_FILE = "pytorch_model.bin"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class CoderConfig:
    """VQGANEncoder / VQGANDecoder arguments (MMaDA's names and defaults)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    num_res_blocks: tuple[int, ...] = (4, 3, 4, 3, 4)
    attn_resolutions: tuple[int, ...] = (5,)
    dropout: float = 0.0
    in_ch: int = 3
    out_ch: int = 3
    resolution: int = 256
    z_channels: int = 13
    double_z: bool = False

    @classmethod
    def from_dict(cls, raw: dict[str, Any], defaults: CoderConfig, where: str) -> CoderConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise MaskGRPOError(f"{where}.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")
        merged = {**asdict(defaults), **raw}
        for key in ("ch_mult", "num_res_blocks", "attn_resolutions"):
            merged[key] = tuple(merged[key])
        cfg = cls(**merged)
        if len(cfg.num_res_blocks) != len(cfg.ch_mult):
            raise MaskGRPOError(f"{where}.num_res_blocks: {len(cfg.num_res_blocks)} entries for {len(cfg.ch_mult)} levels (ch_mult)")
        if cfg.double_z:
            raise MaskGRPOError(f"{where}.double_z: true is not supported (MAGVIT-v2 quantizes z directly)")
        if any((cfg.ch * m) % 32 for m in cfg.ch_mult):
            raise MaskGRPOError(f"{where}.ch: channels ch x ch_mult must be multiples of 32 (GroupNorm with 32 groups)")
        return cfg


ENCODER = CoderConfig()
DECODER = CoderConfig(ch_mult=(1, 1, 2, 2, 4), num_res_blocks=(4, 4, 3, 4, 3))


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """norm-swish-conv twice, plus a 1x1 `nin_shortcut` when the channel count changes."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over positions with 1x1-conv q, k, v and output projection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).reshape(b, 1, c, hgt * wid).transpose(2, 3) for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale c^-1/2, as the reference
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, hgt, wid))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one row/column at the bottom/right (taming's asymmetric pad)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(channels, channels), AttnBlock(channels), ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


def _no_level_attention(cfg: CoderConfig, resolutions: list[int], where: str) -> None:
    """MMaDA's attn_resolutions [5] never matches a power-of-two resolution, so its levels have
    no attention; other settings are refused rather than silently ignored."""
    hit = sorted(set(resolutions) & set(cfg.attn_resolutions))
    if hit:
        raise MaskGRPOError(f"{where}.attn_resolutions: attention at resolution {hit[0]} is not supported (MAGVIT-v2 has none)")


class Encoder(nn.Module):
    """VQGANEncoder: conv_in, `down` levels of ResnetBlocks (+ Downsample), mid, norm, conv_out, quant_conv."""

    def __init__(self, cfg: CoderConfig):
        super().__init__()
        _no_level_attention(cfg, [cfg.resolution // 2**i for i in range(len(cfg.ch_mult))], "tokenizer.encoder")
        self.conv_in = nn.Conv2d(cfg.in_ch, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for level, (mult, n_blocks) in enumerate(zip(cfg.ch_mult, cfg.num_res_blocks)):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(n_blocks):
                stage.block.append(ResnetBlock(cin, cfg.ch * mult))
                cin = cfg.ch * mult
            if level != len(cfg.ch_mult) - 1:
                stage.downsample = Downsample(cin)
            self.down.append(stage)
        self.mid = _Mid(cin)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        return self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))


class Decoder(nn.Module):
    """VQGANDecoder: post_quant_conv, conv_in, mid, `up` levels (run from the last), norm, conv_out."""

    def __init__(self, cfg: CoderConfig):
        super().__init__()
        levels = len(cfg.ch_mult)
        _no_level_attention(cfg, [cfg.resolution // 2 ** (levels - 1 - i) for i in range(levels)], "tokenizer.decoder")
        cin = cfg.ch * cfg.ch_mult[-1]
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _Mid(cin)
        stages: list[nn.Module] = []
        for level in reversed(range(levels)):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(cfg.num_res_blocks[level]):
                stage.block.append(ResnetBlock(cin, cfg.ch * cfg.ch_mult[level]))
                cin = cfg.ch * cfg.ch_mult[level]
            if level != 0:
                stage.upsample = Upsample(cin)
            stages.insert(0, stage)  # up[i] is level i, as in the checkpoint
        self.up = nn.ModuleList(stages)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        for stage in reversed(self.up):
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class LookupFreeQuantizer(nn.Module):
    """LFQ: each latent channel quantized to its sign. The buffers `embedding` (code -> ±1 vector)
    and `power_vals` (bit weights, most significant first) are the checkpoint's own."""

    def __init__(self, codebook_dim: int):
        super().__init__()
        self.codebook_dim = codebook_dim
        power = 2 ** torch.arange(codebook_dim - 1, -1, -1)
        bits = (torch.arange(2**codebook_dim)[:, None] // power) % 2
        self.register_buffer("embedding", bits.float() * 2 - 1)
        self.register_buffer("power_vals", power)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, d, h, w] -> codes [B, h*w] (row-major): the sign bits of each position."""
        weights = self.power_vals.reshape(1, -1, 1, 1).to(z.device)
        return ((z > 0).long() * weights).sum(dim=1).reshape(z.shape[0], -1)

    def vectors(self, codes: torch.Tensor, side: int) -> torch.Tensor:
        """codes [B, side*side] -> ±1 latents [B, d, side, side]."""
        return self.embedding[codes].reshape(codes.shape[0], side, side, -1).permute(0, 3, 1, 2)


class MAGVITv2(nn.Module):
    """encoder + quantize + decoder, as MMaDA's MAGVITv2 (`get_code`, `decode_code`)."""

    def __init__(self, encoder: CoderConfig = ENCODER, decoder: CoderConfig = DECODER, codebook_dim: int = 13):
        super().__init__()
        if encoder.z_channels != codebook_dim or decoder.z_channels != codebook_dim:
            raise MaskGRPOError(f"tokenizer: z_channels ({encoder.z_channels}, {decoder.z_channels}) must equal codebook_dim {codebook_dim}")
        self.encoder_cfg, self.decoder_cfg = encoder, decoder
        self.encoder = Encoder(encoder)
        self.decoder = Decoder(decoder)
        self.quantize = LookupFreeQuantizer(codebook_dim)

    def get_code(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels in [-1, 1] -> codes [B, h*w]."""
        return self.quantize.codes(self.encoder(pixels))

    def decode_code(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, h*w] (a square grid) -> pixels, roughly in [-1, 1]."""
        side = math.isqrt(codes.shape[1])
        return self.decoder(self.quantize.vectors(codes, side).to(self.decoder.conv_in.weight.dtype))


def _read_config(folder: Path) -> tuple[CoderConfig, CoderConfig, int]:
    file = folder / "config.json"
    raw = json.loads(file.read_text()) if file.is_file() else {}
    encoder = CoderConfig.from_dict(raw.get("encoder", {}), ENCODER, "tokenizer.encoder")
    decoder = CoderConfig.from_dict(raw.get("decoder", {}), DECODER, "tokenizer.decoder")
    return encoder, decoder, int(raw.get("codebook_dim", 13))


def _check_buffers(model: MAGVITv2, state: dict[str, torch.Tensor], where: str) -> None:
    """The LFQ buffers are a function of codebook_dim; a checkpoint that stores others is wrong."""
    for name, value in model.quantize.named_buffers():
        key = f"quantize.{name}"
        if key in state and not torch.equal(state[key].to(value.dtype).cpu(), value.cpu()):
            raise MaskGRPOError(f"{where}: tensor '{key}' differs from the LFQ codebook of codebook_dim {model.quantize.codebook_dim}")


def load_magvit(path: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> MAGVITv2:
    """Strictly load a MAGVIT-v2 folder (safetensors, or MMaDA's pytorch_model.bin read with
    weights_only) or a hub id found in the local cache."""
    where = "tokenizer.path"
    folder = local_folder(path, where, ["*.json", "*.safetensors", "*.bin"])
    encoder, decoder, dim = _read_config(folder)
    model = MAGVITv2(encoder, decoder, dim)  # small enough (~0.1-0.3 GB) to build on the CPU first
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    buffers = [f"quantize.{n}" for n, _ in model.quantize.named_buffers()]
    if (folder / PICKLE_FILE).is_file() and not any((folder / f).is_file() for f in WEIGHT_FILES):
        state = torch.load(folder / PICKLE_FILE, map_location="cpu", weights_only=True)
        check_tensors({k: (tuple(v.shape), str(folder / PICKLE_FILE)) for k, v in state.items()}, expected, where, folder, optional=buffers)
        _check_buffers(model, state, where)
        model.load_state_dict({k: v for k, v in state.items() if k not in buffers}, strict=False)
    else:
        files = tensor_files(folder, where, single=WEIGHT_FILES)
        check_tensors(shapes(files, where), expected, where, folder, optional=buffers)
        from safetensors import safe_open

        stored = {}
        for key in (k for k in buffers if k in files):
            with safe_open(str(files[key]), framework="pt") as f:
                stored[key] = f.get_tensor(key)
        _check_buffers(model, stored, where)
        load_tensors(model, {k: f for k, f in files.items() if k not in buffers}, torch.float32)
    return model.to(device=device, dtype=dtype).eval()


@tokenizers.register("magvitv2")
class MagvitTokenizer:
    """MMaDA's MAGVIT-v2 image tokenizer (lookup-free, 8,192 codes, 16x downsampling): images
    <-> code grids, loaded strictly from a local folder or a cached hub id (showlab/magvitv2)."""

    def __init__(self, path: str, device: str = "cpu", dtype: Literal["float32", "bfloat16", "float16"] = "float32"):
        self.model = load_magvit(path, _DTYPES[dtype], device)
        self.device = torch.device(device)

    @property
    def codebook_size(self) -> int:
        return 2**self.model.quantize.codebook_dim

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.model.encoder_cfg.ch_mult) - 1)

    to_tensor = staticmethod(images_to_tensor)
    to_pil = staticmethod(tensor_to_images)

    @torch.no_grad()
    def encode(self, images: list | torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> codes [B, (H/16)*(W/16)] (CPU, row-major)."""
        x = self.to_tensor(images).to(self.device, self.model.encoder.conv_in.weight.dtype)
        side = x.shape[-1]
        if x.shape[-2] != side or side % self.downsample:
            raise MaskGRPOError(f"tokenizer: images must be square with a side divisible by {self.downsample}, got {list(x.shape[-2:])}")
        return self.model.get_code(x * 2 - 1).cpu()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Code grids [B, h*w] -> images [B, 3, H, W] in [0, 1] (CPU, float32)."""
        n = codes.shape[1]
        if math.isqrt(n) ** 2 != n:
            raise MaskGRPOError(f"tokenizer: {n} codes do not form a square grid")
        if int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size:
            raise MaskGRPOError(f"tokenizer: codes outside the codebook [0, {self.codebook_size})")
        out = self.model.decode_code(codes.to(self.device).long())
        return ((out.float() + 1) / 2).clamp(0, 1).cpu()

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """config.json with the sizes + pytorch_model.safetensors (MMaDA's file name)."""
        from safetensors.torch import save_file

        m = self.model
        config = {"_class_name": "MAGVITv2", "encoder": asdict(m.encoder_cfg), "decoder": asdict(m.decoder_cfg), "codebook_dim": m.quantize.codebook_dim}
        with atomic_directory(path) as tmp:
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            save_file({k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}, str(tmp / WEIGHT_FILES[0]))
