"""MMaDA's MAGVIT-v2 image tokenizer: parity with the authors' modeling file, strict loading, the
image-tokenizer contract, and one image GRPO step on a tiny MMaDA-layout model.

How the fixtures in tests/fixtures/magvit/ were made (scratch folder outside the repository; the
reference code and the script that ran it are not committed):

- Reference: MMaDA's models/modeling_magvitv2.py and models/common_modules.py,
  github.com/Gen-Verse/MMaDA at commit 3cdb870, run with transformers 4.57.1, diffusers 0.32.2,
  einops 0.8.2, omegaconf, jaxtyping, typeguard (what its imports need; `pip install --target`
  into the scratch folder, first on PYTHONPATH), this venv's torch 2.15.0 (CPU, float32).
- Model: MMaDA's `MAGVITv2()` takes no arguments (its sizes are fixed), so the tiny model is a
  subclass whose __init__ sets `encoder = VQGANEncoder(ch=32, ch_mult=[1, 1], num_res_blocks=[1, 1],
  attn_resolutions=[], z_channels=6, resolution=16)`, `decoder = VQGANDecoder(ch=32, ch_mult=[2, 1],
  num_res_blocks=[1, 1], attn_resolutions=[], z_channels=6, resolution=16)` (the decoder's channel
  change exercises `nin_shortcut`) and `quantize = LFQuantizer(codebook_dim=6)` (64 codes), then
  uses MAGVITv2's own `get_code` / `encode` / `decode_code`. Parameters were overwritten from
  `torch.Generator().manual_seed(20)`: norm weights 1 + 0.2 N(0, 1), other 1-d tensors (biases)
  0.1 N(0, 1), conv weights N(0, 1) / sqrt(fan_in), each rounded to float16.
- Files: tiny/pytorch_model.safetensors (MMaDA's ModelMixin file name) = the state_dict, float
  parameters as float16, the LFQ buffers `quantize.embedding` / `quantize.power_vals` as they are;
  tiny/config.json = {"_class_name": "MAGVITv2", "encoder": ..., "decoder": ..., "codebook_dim": 6}
  (the size fields are maskgrpo's; MMaDA's real config has none, so absent fields mean MMaDA's sizes).
- tiny_reference.safetensors: `pixels` = 2 x 3 x 16 x 16 uniform in [-1, 1) (generator seed 21),
  `codes` = get_code(pixels) [2, 64] (equal to encode(pixels)[1]; the smallest |z| before the
  sign was 4e-4, far above float32 error, so codes are stable), `decoded` = decode_code(codes)
  (the raw decoder output, before MMaDA's clamp((x + 1) / 2, 0, 1)).
- mmada_magvitv2_shapes.json: {name: shape} of the reference's full-size `MAGVITv2().state_dict()`
  (95.4 M parameters, 382 tensors), built the same way on the CPU.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from maskgrpo.backbones.llada import LLaDABackbone
from maskgrpo.cli import main
from maskgrpo.components import build_backbone, build_sampler, build_tokenizer
from maskgrpo.errors import MaskGRPOError
from maskgrpo.recipe import load_recipe
from maskgrpo.registry import estimators, load_presets, tasks, tokenizers
from maskgrpo.tokenizers.magvit import DECODER, ENCODER, MAGVITv2, MagvitTokenizer
from maskgrpo.trainer import GRPOTrainer

from .conftest import REPO, vary_rewards

FIXTURES = Path(__file__).parent / "fixtures" / "magvit"
TINY = FIXTURES / "tiny"
LLADA_CONFIG = Path(__file__).parent / "fixtures" / "llada" / "tiny" / "config.json"
PAPER_TARGETS = ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"]


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "tiny_reference.safetensors"))


@pytest.fixture(scope="module")
def tok() -> MagvitTokenizer:
    return tokenizers.build({"type": "magvitv2", "path": str(TINY)})


# -- parity -------------------------------------------------------------------------------------
def test_codes_and_decoded_pixels_match_the_reference(tok: MagvitTokenizer, ref: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        codes = tok.model.get_code(ref["pixels"])
        decoded = tok.model.decode_code(ref["codes"])
    assert torch.equal(codes, ref["codes"])
    torch.testing.assert_close(decoded, ref["decoded"], rtol=0, atol=1e-5)
    assert ref["codes"].unique().numel() > 16  # a code grid with variety, not one code everywhere


def test_the_tokenizer_contract_maps_pixels_as_mmada_does(tok: MagvitTokenizer, ref: dict[str, torch.Tensor]) -> None:
    """encode takes [0, 1] images (MMaDA normalises to [-1, 1]); decode returns clamp((x + 1) / 2)."""
    assert (tok.codebook_size, tok.downsample) == (64, 2)
    assert torch.equal(tok.encode((ref["pixels"] + 1) / 2), ref["codes"])
    images = tok.decode(ref["codes"])
    torch.testing.assert_close(images, ((ref["decoded"] + 1) / 2).clamp(0, 1), rtol=0, atol=1e-5)
    pil = tok.to_pil(images)
    assert len(pil) == 2 and pil[0].size == (16, 16)
    assert tok.encode(pil).shape == (2, 64)  # PIL in, codes out
    with pytest.raises(MaskGRPOError, match="codes outside the codebook"):
        tok.decode(torch.full((1, 64), 64))
    with pytest.raises(MaskGRPOError, match="square grid"):
        tok.decode(torch.zeros(1, 60, dtype=torch.long))


def test_code_bits_are_most_significant_first(tok: MagvitTokenizer) -> None:
    q = tok.model.quantize
    assert q.power_vals.tolist() == [32, 16, 8, 4, 2, 1]
    z = torch.tensor([1.0, -1, -1, -1, -1, 1]).reshape(1, 6, 1, 1)
    assert q.codes(z).item() == 33 and torch.equal(q.vectors(torch.tensor([[33]]), 1), z)


def test_save_pretrained_round_trips(tok: MagvitTokenizer, ref: dict[str, torch.Tensor], tmp_path: Path) -> None:
    tok.save_pretrained(tmp_path / "saved")
    again = MagvitTokenizer(str(tmp_path / "saved"))
    assert torch.equal(again.encode((ref["pixels"] + 1) / 2), ref["codes"])


def test_default_sizes_give_the_reference_state_dict_names_and_shapes() -> None:
    """MAGVITv2() in MMaDA: 128 channels, 5 levels (16x down), 13 latent channels -> 8192 codes;
    every tensor name and shape equals the reference model's (mmada_magvitv2_shapes.json)."""
    assert (ENCODER.ch, ENCODER.ch_mult, ENCODER.num_res_blocks, ENCODER.z_channels) == (128, (1, 2, 2, 4, 4), (4, 3, 4, 3, 4), 13)
    with torch.device("meta"):
        model = MAGVITv2()
    reference = json.loads((FIXTURES / "mmada_magvitv2_shapes.json").read_text())
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == reference
    assert 2**model.quantize.codebook_dim == 8192 and DECODER.ch_mult == (1, 1, 2, 2, 4)


# -- strict loading -----------------------------------------------------------------------------
def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    shutil.copytree(TINY, folder)
    return folder


def _edit_weights(folder: Path, edit) -> None:
    file = folder / "pytorch_model.safetensors"
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file))


def test_missing_unexpected_and_misshapen_tensors_are_errors(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    _edit_weights(folder, lambda t: t.pop("decoder.up.0.block.0.nin_shortcut.weight"))
    with pytest.raises(MaskGRPOError, match=r"tokenizer\.path: tensor 'decoder\.up\.0\.block\.0\.nin_shortcut\.weight' is missing"):
        MagvitTokenizer(str(folder))
    folder = _copy(tmp_path / "b")
    _edit_weights(folder, lambda t: t.update({"encoder.extra": torch.zeros(1)}))
    with pytest.raises(MaskGRPOError, match=r"unexpected tensor 'encoder\.extra' in .*pytorch_model\.safetensors"):
        MagvitTokenizer(str(folder))
    folder = _copy(tmp_path / "c")
    _edit_weights(folder, lambda t: t.update({"encoder.conv_in.bias": torch.zeros(31)}))
    with pytest.raises(MaskGRPOError, match=r"'encoder\.conv_in\.bias' .* has shape \[31\], the config expects \[32\]"):
        MagvitTokenizer(str(folder))
    folder = _copy(tmp_path / "d")
    _edit_weights(folder, lambda t: t.update({"quantize.power_vals": t["quantize.power_vals"].flip(0)}))
    with pytest.raises(MaskGRPOError, match=r"'quantize\.power_vals' differs from the LFQ codebook"):
        MagvitTokenizer(str(folder))


def test_the_lfq_buffers_may_be_absent_and_a_pickle_checkpoint_loads(tok: MagvitTokenizer, ref: dict[str, torch.Tensor], tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    _edit_weights(folder, lambda t: [t.pop(k) for k in ("quantize.embedding", "quantize.power_vals")])
    assert torch.equal(MagvitTokenizer(str(folder)).encode((ref["pixels"] + 1) / 2), ref["codes"])
    tensors = load_file(str(TINY / "pytorch_model.safetensors"))
    (folder / "pytorch_model.safetensors").unlink()
    torch.save(tensors, folder / "pytorch_model.bin")  # what MMaDA's save_pretrained writes without safetensors
    assert torch.equal(MagvitTokenizer(str(folder)).encode((ref["pixels"] + 1) / 2), ref["codes"])


def test_bad_folders_and_configs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(MaskGRPOError, match=r"tokenizer\.path: .* is not a folder"):
        MagvitTokenizer(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MaskGRPOError, match=r"no pytorch_model\.safetensors or .* in"):
        MagvitTokenizer(str(tmp_path / "empty"))
    folder = _copy(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    for edit, message in [
        ({"encoder": {**config["encoder"], "chmult": [1]}}, r"tokenizer\.encoder\.chmult: unknown field"),
        ({"encoder": {**config["encoder"], "attn_resolutions": [8]}}, r"tokenizer\.encoder\.attn_resolutions: attention at resolution 8"),
        ({"decoder": {**config["decoder"], "num_res_blocks": [1]}}, r"tokenizer\.decoder\.num_res_blocks: 1 entries for 2 levels"),
        ({"codebook_dim": 5}, r"z_channels \(6, 6\) must equal codebook_dim 5"),
    ]:
        (folder / "config.json").write_text(json.dumps({**config, **edit}))
        with pytest.raises(MaskGRPOError, match=message):
            MagvitTokenizer(str(folder))


# -- MMaDA layout end to end ---------------------------------------------------------------------
def _mmada_folder(tmp_path: Path, text_vocab: int, codebook: int, mask_id: int) -> Path:
    """A tiny MMaDA-layout checkpoint: LLaDA's architecture, the embedding = text vocabulary then
    the image codebook (MMaDA: llm_vocab_size 126464 + codebook_size 8192 = 134656)."""
    config = json.loads(LLADA_CONFIG.read_text())
    rows = text_vocab + codebook
    config.update(
        model_type="mmada", architectures=["MMadaModelLM"], vocab_size=rows, embedding_size=rows, mask_token_id=mask_id,
        llm_vocab_size=text_vocab, codebook_size=codebook, new_vocab_size=rows, num_vq_tokens=codebook, num_new_special_tokens=0,
    )
    model = LLaDABackbone.from_config(config, seed=3)
    model.save_pretrained(tmp_path / "mmada", max_shard_size=30_000)
    return tmp_path / "mmada"


def test_one_image_grpo_step_with_lora_on_a_tiny_mmada_layout_model(tmp_path: Path) -> None:
    words = build_tokenizer("word")
    folder = _mmada_folder(tmp_path, words.vocab_size, 64, words.mask_token_id)
    assert (folder / "model.safetensors.index.json").is_file()
    recipe = {
        "kind": "grpo",
        "name": "tiny-mmada",
        "output_dir": str(tmp_path / "run"),
        "backbone": {"type": "llada", "path": str(folder)},
        "tokenizer": {"type": "word"},
        "image_tokenizer": {"type": "magvitv2", "path": str(TINY)},
        "task": {"type": "shapes", "tags": ["single_object", "two_object"], "n_eval": 2},
        "sampler": {"type": "emerge", "image_tokens": 64, "steps": 4, "cfg_scale": 1.0},
        "estimator": {"type": "random", "min_mask_rate": 0.8},
        "rewards": [{"type": "geneval", "detector": "shapes"}],
        "grpo": {"group_size": 4, "num_iterations": 2},
        "lora": {"r": 4, "alpha": 8, "target_modules": PAPER_TARGETS},
        "optim": {"lr": 1e-3},
        "train": {"steps": 1, "prompts_per_step": 2, "eval_every": 0},
    }
    import yaml

    (tmp_path / "grpo.yaml").write_text(yaml.safe_dump(recipe))
    trainer = GRPOTrainer(load_recipe(tmp_path / "grpo.yaml"), progress=False)
    assert trainer.sampler.codebook == (words.vocab_size, words.vocab_size + 64)  # codes after the text vocabulary
    vary_rewards(trainer, term=0)
    before = {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}
    row = trainer.train_step(0)
    after = trainer.policy.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert row["loss"] == row["loss"] and changed and all("lora_" in k for k in changed)
    # the rollout's completions are image codes that decode to images through MAGVIT-v2
    from maskgrpo.data import encode_prompts
    from maskgrpo.utils import make_generator

    ids, attn = encode_prompts(trainer.tokenizer, ["a photo of a red circle"] * 2)
    with torch.no_grad():
        rollout = trainer.sampler.sample(trainer.policy.eval(), ids, make_generator(0, 1), attention_mask=attn)
    completion = rollout.completion
    assert completion.min() >= words.vocab_size and completion.max() < words.vocab_size + 64
    images = trainer.modality.decode(completion)
    assert len(images) == 2 and images[0].size == (16, 16)


def test_mmada_geneval_recipe_checks_and_builds_on_the_tiny_fixtures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`maskgrpo check` passes; with the backbone, tokenizer and image tokenizer swapped for tiny
    fixtures of the same layouts every component builds (the rewards need detector and CLIP
    weights, which this machine does not have: check validates their options)."""
    path = REPO / "recipes" / "mmada-geneval.yaml"
    assert main(["check", str(path)]) == 0 and "ok" in capsys.readouterr().out
    load_presets()
    assert tokenizers.expand("mmada-magvitv2")["type"] == "magvitv2"
    text = REPO / "tests" / "fixtures" / "llada" / "tiny"
    text_tok = build_tokenizer({"type": "hf", "path": str(text)})
    folder = _mmada_folder(tmp_path, text_tok.vocab_size, 64, 1)
    swaps = [f"backbone.path={folder}", "backbone.dtype=float32", "backbone.mask_token_id=1"]
    swaps += [f"tokenizer.path={text}", "tokenizer.mask_token_id=1", f"image_tokenizer.path={TINY}", "image_tokenizer.device=cpu", "sampler.image_tokens=64"]
    recipe = load_recipe(path, swaps)
    tokenizer = build_tokenizer(recipe.tokenizer)
    image_tokenizer = build_tokenizer(recipe.image_tokenizer)
    backbone = build_backbone(recipe.backbone, tokenizer, image_tokenizer)
    sampler = build_sampler(recipe.sampler, tokenizer, image_tokenizer)
    estimators.build(recipe.estimator)
    task = tasks.build(recipe.task)
    assert isinstance(backbone, LLaDABackbone) and isinstance(image_tokenizer, MagvitTokenizer)
    assert sampler.codebook == (tokenizer.vocab_size, tokenizer.vocab_size + 64) and backbone.vocab_size == sampler.codebook[1]
    assert task.train_example(0).columns["metadata"]["prompt"]
