"""The aMUSEd adapter on a tiny randomly initialised aMUSEd (UVit2DModel, CLIP text encoder and
tokenizer, VQModel) saved in the Hub layout and loaded back through the registered `amused`
backbone, `hf` tokenizer and `vq` image tokenizer -- the code users run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from maskgrpo.backbones.amused import LOGIT_FLOOR
from maskgrpo.backbones.base import token_logprobs
from maskgrpo.components import build_sampler
from maskgrpo.data import encode_prompts
from maskgrpo.modality import ImageModality
from maskgrpo.registry import backbones, estimators, load_presets, tokenizers
from maskgrpo.utils import make_generator

from .conftest import REPO

CODEBOOK, UVIT_VOCAB, UVIT_MASK = 32, 40, 39  # aMUSEd: 8192 codes, 8256 UVit ids, UVit mask 8255
GRID, TEXT_LENGTH = 4, 12  # 4x4 codes (aMUSEd-256: 16x16); CLIP context 12 (77)


@pytest.fixture(scope="module")
def amused_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny aMUSEd in the layout of the Hub repo amused/amused-256."""
    from diffusers import AmusedScheduler, UVit2DModel, VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    path = tmp_path_factory.mktemp("tiny-amused")
    # CLIP BPE vocabulary and merges written by hand: letters and digits, alone and word-final,
    # a few merges, then CLIP's two special tokens last (as in the real 49408-id vocabulary).
    words = [c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab = [t for c in words for t in (c, f"{c}</w>")] + ["re", "red</w>", "cu", "cub", "cube</w>"]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    files = path / "bpe"
    files.mkdir()
    (files / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (files / "merges.txt").write_text("#version: 0.2\nr e\nre d</w>\nc u\ncu b\ncub e</w>\n")
    tok = CLIPTokenizer(vocab=str(files / "vocab.json"), merges=str(files / "merges.txt"), model_max_length=TEXT_LENGTH)
    tok.save_pretrained(path / "tokenizer")

    torch.manual_seed(0)
    text_config = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=TEXT_LENGTH, projection_dim=16, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    CLIPTextModelWithProjection(text_config).save_pretrained(path / "text_encoder")
    UVit2DModel(
        hidden_size=32, cond_embed_dim=16, micro_cond_encode_dim=4, micro_cond_embed_dim=20, encoder_hidden_size=16,
        vocab_size=UVIT_VOCAB, codebook_size=CODEBOOK, in_channels=16, block_out_channels=16, num_res_blocks=1,
        downsample=True, upsample=True, block_num_heads=2, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, sample_size=GRID,
    ).save_pretrained(path / "transformer")  # fmt: skip
    AmusedScheduler(mask_token_id=UVIT_MASK).save_pretrained(path / "scheduler")
    VQModel(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
        layers_per_block=1, latent_channels=4, num_vq_embeddings=CODEBOOK, norm_num_groups=4, sample_size=8,
        lookup_from_codebook=True, mid_block_add_attention=False, force_upcast=True,
    ).save_pretrained(path / "vqvae")  # fmt: skip
    return path


@pytest.fixture(scope="module")
def parts(amused_dir: Path):
    """(backbone, text tokenizer, image tokenizer), each built from a spec as a recipe does."""
    text = len(json.loads((amused_dir / "bpe" / "vocab.json").read_text()))
    backbone = backbones.build({"type": "amused", "path": str(amused_dir)}).eval()
    tokenizer = tokenizers.build({"type": "hf", "path": str(amused_dir / "tokenizer"), "mask_token_id": text + CODEBOOK})
    image_tokenizer = tokenizers.build({"type": "vq", "path": str(amused_dir / "vqvae"), "normalize": False})
    return backbone, tokenizer, image_tokenizer


def reference_logits(amused_dir: Path, clip_ids: torch.Tensor, uvit_grid: torch.Tensor, size: int = GRID * 2) -> torch.Tensor:
    """The logits AmusedPipeline gets for these CLIP ids and UVit input ids: [B, K, H, W]."""
    from diffusers import UVit2DModel
    from transformers import CLIPTextModelWithProjection

    encoder = CLIPTextModelWithProjection.from_pretrained(amused_dir / "text_encoder").eval()
    uvit = UVit2DModel.from_pretrained(amused_dir / "transformer").eval()
    with torch.no_grad():
        out = encoder(clip_ids, return_dict=True, output_hidden_states=True)
        micro = torch.tensor([size, size, 0, 0, 6], dtype=torch.float32).expand(len(clip_ids), -1)
        return uvit(uvit_grid, micro_conds=micro, pooled_text_emb=out.text_embeds, encoder_hidden_states=out.hidden_states[-2])


def test_layout_and_presets(parts, amused_dir: Path) -> None:
    backbone, tokenizer, image_tokenizer = parts
    text = tokenizer.vocab_size
    assert backbone.codebook_offset == text == len(backbone.tokenizer)
    assert backbone.mask_token_id == text + CODEBOOK == tokenizer.mask_token_id
    assert backbone.vocab_size == text + CODEBOOK + 1
    assert backbone.uvit_mask_id == UVIT_MASK and backbone.image_tokens == GRID * GRID
    assert image_tokenizer.codebook_size == CODEBOOK and not image_tokenizer.local_encoder
    # the shipped presets describe aMUSEd-256 with this same arithmetic: 49408 CLIP ids + 8192 codes
    load_presets()
    assert backbones.expand("amused-256")["type"] == "amused"
    assert tokenizers.expand("amused-256")["mask_token_id"] == 49408 + 8192
    assert tokenizers.expand("amused-256-vq") == {"type": "vq", "path": str(REPO / "weights/amused-256/vqvae"), "normalize": False}


def test_logits_match_the_pipeline_and_stay_in_the_codebook(parts, amused_dir: Path) -> None:
    backbone, tokenizer, _ = parts
    text = tokenizer.vocab_size
    prompts = ["a red cube", "two cubes"]
    ids, attn = encode_prompts(tokenizer, prompts)
    torch.manual_seed(1)
    codes = torch.randint(0, CODEBOOK, (2, GRID * GRID))
    masked = torch.rand(2, GRID * GRID) < 0.5
    image = torch.where(masked, torch.full_like(codes, backbone.mask_token_id), codes + text)
    x = torch.cat([ids, image], dim=1)
    full_attn = torch.cat([attn, torch.ones_like(image, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        logits = backbone(x, full_attn)
    assert logits.shape == (2, x.shape[1], backbone.vocab_size)
    outside = torch.ones(backbone.vocab_size, dtype=torch.bool)
    outside[text : text + CODEBOOK] = False
    assert torch.all(logits[..., outside] == LOGIT_FLOOR)
    assert torch.allclose(torch.softmax(logits, -1)[..., text : text + CODEBOOK].sum(-1), torch.ones(2, x.shape[1]))

    # the CLIP ids are what the pipeline's tokenizer call gives, and the logits are the UVit's
    clip_ids = backbone.text_ids(ids, attn)
    expected_ids = backbone.tokenizer(prompts, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(clip_ids, expected_ids)
    uvit_grid = torch.where(masked, torch.full_like(codes, UVIT_MASK), codes).view(2, GRID, GRID)
    ref = reference_logits(amused_dir, expected_ids, uvit_grid).flatten(2).transpose(1, 2)
    assert torch.allclose(logits[:, ids.shape[1] :, text : text + CODEBOOK], ref, atol=1e-5)
    # hidden -> logits only at chosen rows equals the full forward there
    with torch.no_grad():
        rows = backbone.logits_from_hidden(backbone.hidden(x, full_attn)[:, -3:])
    assert torch.allclose(rows, logits[:, -3:], atol=1e-6)


def test_all_mask_prompt_is_the_empty_prompt(parts, amused_dir: Path) -> None:
    """CFG's unconditional input (real prompt positions masked) is aMUSEd's negative prompt ""."""
    backbone, tokenizer, _ = parts
    ids, attn = encode_prompts(tokenizer, ["a red cube", "cube"])
    image = torch.full((2, GRID * GRID), backbone.mask_token_id)
    uncond = ids.masked_fill(attn, backbone.mask_token_id)
    empty_ids, empty_attn = encode_prompts(tokenizer, ["", ""])
    with torch.no_grad():
        a = backbone(torch.cat([uncond, image], 1), torch.cat([attn, torch.ones_like(image, dtype=torch.bool)], 1))
        b = backbone(torch.cat([empty_ids, image], 1), torch.cat([empty_attn, torch.ones_like(image, dtype=torch.bool)], 1))
    negative = backbone.tokenizer([""] * 2, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(backbone.text_ids(uncond, attn), negative)
    P = ids.shape[1]
    assert torch.allclose(a[:, P:], b[:, empty_ids.shape[1] :], atol=1e-6)
    ref = reference_logits(amused_dir, negative, torch.full((2, GRID, GRID), UVIT_MASK)).flatten(2).transpose(1, 2)
    text = tokenizer.vocab_size
    assert torch.allclose(a[:, P:, text : text + CODEBOOK], ref, atol=1e-5)


@pytest.mark.parametrize("kind", ["maskgit", "emerge"])
def test_image_samplers_run_on_amused(parts, kind: str) -> None:
    backbone, tokenizer, image_tokenizer = parts
    sampler = build_sampler({"type": kind, "image_tokens": GRID * GRID, "steps": 4, "cfg_scale": 2.0}, tokenizer, image_tokenizer)
    assert sampler.codebook == (tokenizer.vocab_size, tokenizer.vocab_size + CODEBOOK)
    ids, attn = encode_prompts(tokenizer, ["a red cube", "two cubes", "red"])
    first = sampler.sample(backbone, ids, make_generator(0, 1), attention_mask=attn)
    again = sampler.sample(backbone, ids, make_generator(0, 1), attention_mask=attn)
    other = sampler.sample(backbone, ids, make_generator(0, 2), attention_mask=attn)
    assert torch.equal(first.tokens, again.tokens) and not torch.equal(first.tokens, other.tokens)
    completion = first.completion
    assert completion.min() >= tokenizer.vocab_size and completion.max() < tokenizer.vocab_size + CODEBOOK
    assert first.decode_step.min() >= 0 and first.decode_step.max() < 4
    images = ImageModality(tokenizer, image_tokenizer).decode(completion)
    assert len(images) == 3 and images[0].size == (8, 8)


def test_vq_tokenizer_decodes_like_the_pipeline(parts) -> None:
    """aMUSEd's VQ looks codes up in decode() and works on [0, 1] pixels (no normalisation)."""
    _, _, image_tokenizer = parts
    torch.manual_seed(2)
    images = torch.rand(2, 3, 8, 8)
    codes = image_tokenizer.encode(images)
    assert codes.shape == (2, GRID * GRID) and codes.max() < CODEBOOK
    vq = image_tokenizer.model
    with torch.no_grad():
        latents = vq.encode(images).latents
        pipeline_codes = vq.quantize(latents)[2][2].reshape(2, -1)
        pipeline_images = vq.decode(codes.view(2, GRID, GRID), force_not_quantize=True, shape=(2, GRID, GRID, 4)).sample.clip(0, 1)
        assert torch.equal(codes, pipeline_codes)
        assert torch.allclose(image_tokenizer.decode(codes), pipeline_images)


def test_grpo_backward_trains_the_uvit_not_the_text_encoder(parts, amused_dir: Path) -> None:
    backbone = backbones.build({"type": "amused", "path": str(amused_dir)})  # a fresh copy: this test steps an optimiser
    _, tokenizer, image_tokenizer = parts
    sampler = build_sampler({"type": "emerge", "image_tokens": GRID * GRID, "steps": 3, "cfg_scale": 1.0}, tokenizer, image_tokenizer)
    ids, attn = encode_prompts(tokenizer, ["a red cube"] * 2 + ["cube"] * 2)
    rollout = sampler.sample(backbone.eval(), ids, make_generator(0, 0), attention_mask=attn)
    estimator = estimators.build({"type": "random", "min_mask_rate": 0.8})
    view = estimator.masked_view(rollout, 0, 2, 123, backbone.mask_token_id)
    assert view.loss_mask[:, : rollout.prompt_length].sum() == 0 and view.loss_mask.any()

    backbone.train()
    assert not backbone.text_encoder.training
    logp = token_logprobs(backbone, view.tokens, rollout.tokens, view.loss_mask, view.attention_mask)
    assert logp.shape == (int(view.loss_mask.sum()),) and torch.all(torch.isfinite(logp)) and torch.all(logp <= 0)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])[view.loss_mask.nonzero()[:, 0]]
    (-(logp * advantages).mean()).backward()

    assert all(p.grad is None for p in backbone.text_encoder.parameters())
    assert not any(p.requires_grad for p in backbone.text_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.transformer.parameters())
    assert all(p.grad is not None for p in backbone.head.parameters())
    before_uvit = [p.detach().clone() for p in backbone.transformer.parameters()]
    before_text = [p.detach().clone() for p in backbone.text_encoder.parameters()]
    torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.1).step()
    assert any(not torch.equal(a, b) for a, b in zip(before_uvit, backbone.transformer.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before_text, backbone.text_encoder.parameters()))


def test_lora_from_the_recipe_and_save_round_trip(parts, amused_dir: Path, tmp_path: Path) -> None:
    """The aMUSEd recipe's LoRA targets exist in the UVit; with the adapter off the model is the
    base model; save_pretrained writes the Hub layout back and loads through the registry."""
    from maskgrpo.recipe import LoraConfig
    from maskgrpo.policy import apply_lora

    backbone, tokenizer, _ = parts
    ids, attn = encode_prompts(tokenizer, ["a red cube"])
    image = torch.full((1, GRID * GRID), backbone.mask_token_id)
    x, full_attn = torch.cat([ids, image], 1), torch.cat([attn, torch.ones_like(image, dtype=torch.bool)], 1)
    with torch.no_grad():
        base = backbone(x, full_attn)

    backbone.save_pretrained(tmp_path / "saved")
    assert {p.name for p in (tmp_path / "saved").iterdir()} == {"transformer", "text_encoder", "tokenizer", "scheduler", "vqvae"}
    reloaded = backbones.build({"type": "amused", "path": str(tmp_path / "saved")}).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(x, full_attn), base, atol=1e-6)

    recipe = yaml.safe_load((REPO / "recipes/amused-geneval.yaml").read_text())
    lora = LoraConfig(**recipe["lora"])
    apply_lora(reloaded, lora)
    trainable = [n for n, p in reloaded.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    modules = [n for n, _ in reloaded.transformer.named_modules()]
    assert all(any(n.endswith(m) for n in modules) for m in lora.target_modules)
    with torch.no_grad():
        for name, p in reloaded.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)  # a non-zero adapter
        adapted = reloaded(x, full_attn)
        reloaded.disable_adapters()
        without = reloaded(x, full_attn)
        reloaded.enable_adapters()
    assert not torch.allclose(adapted, base, atol=1e-4) and torch.allclose(without, base, atol=1e-6)


PLUGIN = '''
import numpy as np

from maskgrpo.registry import rewards

if "amused_test_brightness" not in rewards:
    @rewards.register("amused_test_brightness")
    def brightness(prompts, completions, **columns):
        """Mean pixel value: a dense reward for the plumbing test."""
        return [float(np.asarray(im.convert("L")).mean()) / 255.0 for im in completions]
'''


def test_grpo_run_on_geneval_prompts(amused_dir: Path, tmp_path: Path) -> None:
    """`maskgrpo train` end to end on the tiny aMUSEd: GenEval metadata rows reach the geneval
    reward through the jsonl task's `row_column`; the trained model is exported in the Hub layout."""
    from maskgrpo.cli import main

    text = len(json.loads((amused_dir / "bpe" / "vocab.json").read_text()))
    (tmp_path / "plugin.py").write_text(PLUGIN)
    recipe = {
        "kind": "grpo", "name": "tiny-amused", "seed": 0, "output_dir": str(tmp_path / "run"), "plugins": ["plugin.py"],
        "backbone": {"type": "amused", "path": str(amused_dir)},
        "tokenizer": {"type": "hf", "path": str(amused_dir / "tokenizer"), "mask_token_id": text + CODEBOOK},
        "image_tokenizer": {"type": "vq", "path": str(amused_dir / "vqvae"), "normalize": False},
        "task": {"type": "jsonl", "train_path": str(REPO / "maskgrpo/suites/data/geneval_metadata.jsonl"), "prompt_field": "prompt",
                 "answer_field": None, "row_column": "metadata"},
        "sampler": {"type": "emerge", "image_tokens": GRID * GRID, "codebook_offset": text, "codebook_size": CODEBOOK, "steps": 3, "cfg_scale": 1.0},
        "estimator": {"type": "random", "min_mask_rate": 0.8},
        "rewards": [{"type": "geneval", "detector": "shapes", "weight": 0.1}, {"type": "amused_test_brightness", "weight": 1.0}],
        "grpo": {"group_size": 2, "num_iterations": 2},
        "optim": {"lr": 1e-3},
        "train": {"steps": 1, "prompts_per_step": 2, "eval_every": 0},
    }  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(tmp_path / "recipe.yaml"), "--no-progress"]) == 0
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["reward/geneval/mean"] == 0.0 and row["reward/amused_test_brightness/mean"] > 0 and row["loss"] != 0
    model = tmp_path / "run" / "model"
    assert (model / "transformer" / "diffusion_pytorch_model.safetensors").is_file() and (model / "vqvae").is_dir()
    assert backbones.build({"type": "amused", "path": str(model)}).mask_token_id == text + CODEBOOK


def test_errors_are_one_line(parts, tmp_path: Path) -> None:
    from maskgrpo.errors import MaskGRPOError

    backbone, tokenizer, _ = parts
    with pytest.raises(MaskGRPOError, match="cannot load aMUSEd"):
        backbones.build({"type": "amused", "path": str(tmp_path / "nothing")})
    ids, _ = encode_prompts(tokenizer, ["a red cube", "two cubes"])
    too_few = torch.cat([ids, torch.full((2, GRID * GRID - 4), backbone.mask_token_id)], 1)  # sampler.image_tokens too small
    with pytest.raises(MaskGRPOError, match=f"image codes .* is sampler.image_tokens {GRID * GRID}"):
        backbone(too_few)
