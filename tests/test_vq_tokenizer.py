"""The VQ image tokenizer: shapes, codebook range, round trip through save/load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maskgrpo.errors import MaskGRPOError
from maskgrpo.registry import tokenizers
from maskgrpo.worlds.shapes.prompts import make_example
from maskgrpo.worlds.shapes.scene import render


@pytest.fixture(scope="module")
def vq():
    torch.manual_seed(0)
    return tokenizers.build({"type": "vq", "block_out_channels": [8, 16, 16], "latent_channels": 4, "num_vq_embeddings": 64, "norm_num_groups": 4})


def shapes_images(n: int) -> list:
    return [render(make_example("two_object", i, 32)[1], size=32) for i in range(n)]


def test_codes_form_an_8x8_grid_inside_the_codebook(vq) -> None:
    codes = vq.encode(shapes_images(3))
    assert codes.shape == (3, 64) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < vq.codebook_size == 64
    images = vq.decode(codes)
    assert images.shape == (3, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert len(vq.to_pil(images)) == 3


def test_decode_then_encode_is_stable_and_save_load_round_trips(vq, tmp_path: Path) -> None:
    codes = vq.encode(shapes_images(2))
    vq.save_pretrained(tmp_path / "vq")
    loaded = tokenizers.build({"type": "vq", "path": str(tmp_path / "vq")})
    assert torch.equal(loaded.encode(shapes_images(2)), codes)
    with torch.no_grad():
        assert torch.allclose(loaded.decode(codes), vq.decode(codes), atol=1e-6)


def test_bad_codes_are_clear_errors(vq, tmp_path: Path) -> None:
    with pytest.raises(MaskGRPOError, match="square grid"):
        vq.decode(torch.zeros(1, 10, dtype=torch.long))
    with pytest.raises(MaskGRPOError, match="outside the codebook"):
        vq.decode(torch.full((1, 64), 64))
    with pytest.raises(MaskGRPOError, match="no saved VQ model"):
        tokenizers.build({"type": "vq", "path": str(tmp_path)})


SHIPPED = Path(__file__).resolve().parent.parent / "maskgrpo" / "checkpoints" / "shapes-vq"


def test_shipped_tokenizer_keeps_the_detector_verdicts() -> None:
    """Reconstructions of fresh renders get the same GenEval-style verdict as the originals.

    The issue asks for 0.95; the shipped tokenizer measures 0.993 here. Before dead-code restarts
    it used 130 of its 512 codes and measured 0.853: crowded scenes came back rounded or merged."""
    from maskgrpo.vq_train import reconstruction_agreement

    vq = tokenizers.build({"type": "vq", "path": str(SHIPPED)})
    assert vq.codebook_size == 512 and vq.downsample == 4 and vq.local_encoder
    assert reconstruction_agreement(vq, n=150, size=32, seed=777) >= 0.95


def test_positionwise_group_norm_uses_only_its_own_position() -> None:
    from maskgrpo.tokenizers.vq import PositionwiseGroupNorm

    norm = PositionwiseGroupNorm(2, 4)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(1, 4, 5, 5)
    y = norm(x)
    x2 = x.clone()
    x2[..., 3:, 3:] += 10.0  # change one corner only
    assert torch.equal(norm(x2)[..., :3, :3], y[..., :3, :3])
    g = x[0, :2, 1, 1]  # first group at one position: plain standardisation over its channels
    expected = (g - g.mean()) / torch.sqrt(g.var(unbiased=False) + norm.eps) * norm.weight[:2] + norm.bias[:2]
    assert torch.allclose(y[0, :2, 1, 1], expected, atol=1e-5)


def test_local_encoder_is_kept_through_save_and_load(vq, tmp_path: Path) -> None:
    from maskgrpo.tokenizers.vq import PositionwiseGroupNorm

    def kinds(tok):
        return {type(m) for m in tok.model.encoder.modules()}

    assert vq.local_encoder and PositionwiseGroupNorm in kinds(vq) and torch.nn.GroupNorm not in kinds(vq)
    assert vq.model.encoder.mid_block.attentions[0] is None
    vq.save_pretrained(tmp_path / "vq")
    assert PositionwiseGroupNorm in kinds(tokenizers.build({"type": "vq", "path": str(tmp_path / "vq")}))
    plain = tokenizers.build({"type": "vq", "block_out_channels": [8, 16, 16], "latent_channels": 4, "num_vq_embeddings": 64, "norm_num_groups": 4, "local_encoder": False})
    plain.save_pretrained(tmp_path / "plain")
    assert torch.nn.GroupNorm in kinds(tokenizers.build({"type": "vq", "path": str(tmp_path / "plain")}))


def test_shipped_tokenizer_codes_are_local() -> None:
    """An object in one corner leaves the codes of the far corner alone (diffusers' global
    GroupNorm and attention changed most of the grid, which made codes unlearnable)."""
    from maskgrpo.worlds.shapes.scene import ShapeObject

    vq = tokenizers.build({"type": "vq", "path": str(SHIPPED)})
    alone = [ShapeObject("circle", "red", 8, 8, 7)]
    codes = vq.encode([render(alone), render(alone + [ShapeObject("square", "blue", 24, 24, 8)])]).view(2, 8, 8)
    assert torch.equal(codes[0, :3, :3], codes[1, :3, :3])  # the 12 x 12 px corner away from the square


def test_dead_codes_move_onto_encoder_outputs() -> None:
    from maskgrpo.vq_train import restart_dead_codes

    quantizer = torch.nn.Module()
    quantizer.embedding = torch.nn.Embedding(6, 3)
    before = quantizer.embedding.weight.detach().clone()
    latents = torch.randn(2, 3, 4, 4)
    used = torch.tensor([True, False, True, True, False, True])
    assert restart_dead_codes(quantizer, latents, used, torch.Generator().manual_seed(0)) == 2
    after = quantizer.embedding.weight.detach()
    assert torch.equal(after[used], before[used])
    outputs = latents.permute(0, 2, 3, 1).reshape(-1, 3)
    for row in after[~used]:
        assert (outputs == row).all(dim=1).any()  # each dead code now sits on an encoder output
    assert restart_dead_codes(quantizer, latents, torch.ones(6, dtype=torch.bool)) == 0


def test_short_train_vq_run_restarts_codes_and_saves(tmp_path: Path) -> None:
    import json

    import yaml

    from maskgrpo.cli import main

    recipe = {
        "kind": "vq",
        "name": "tiny-vq",
        "output_dir": str(tmp_path / "run"),
        "tokenizer": {"type": "vq", "block_out_channels": [8, 16, 16], "latent_channels": 4, "num_vq_embeddings": 64, "norm_num_groups": 4},
        "train": {"steps": 12, "batch_size": 8, "eval_every": 0, "eval_images": 8, "restart_dead_codes_every": 4},
        "save_to": str(tmp_path / "saved"),
    }
    path = tmp_path / "vq.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train-vq", str(path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and "eval/agreement" in rows[-1]
    checks = [r for r in rows if "codes/used" in r]
    assert [r["step"] for r in checks] == [4, 8, 12]
    assert checks[0]["codes/restarted"] == 64 - checks[0]["codes/used"] > 0
    assert "codes/restarted" not in checks[-1]  # no restarts in the last tenth
    assert tokenizers.build({"type": "vq", "path": str(tmp_path / "saved")}).codebook_size == 64
