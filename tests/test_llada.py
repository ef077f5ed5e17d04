"""The native LLaDA backbone: parity with the authors' modeling file, strict loading, the KV-cache
seam, and one GRPO step with LoRA on a hub-layout folder through the code users run.

How the fixtures in tests/fixtures/llada/ were made (scratch folder outside the repository; the
reference code and the script that ran it are not committed):

- Reference: MMaDA's copy of LLaDA's modeling file, github.com/Gen-Verse/MMaDA at commit 3cdb870
  (models/configuration_llada.py, models/modeling_llada.py; the file MMaDA-8B loads with
  trust_remote_code), run with transformers 4.57.1 (+ huggingface_hub 0.36.2, tokenizers 0.22.2,
  installed with `pip install --target` into the scratch folder and put first on PYTHONPATH),
  this venv's torch 2.15.0 (CPU, float32, one thread), Python 3.11.
- `tiny/`: config.json = LLaDA-8B-Instruct's config.json fields with the sizes shrunk: d_model 32,
  n_layers 2, n_heads 4, n_kv_heads 4, mlp_hidden_size 64, vocab_size = embedding_size 96,
  mask_token_id 1, eos/pad 2, max_sequence_length 64 (block_type llama, activation silu, rms norm,
  rope_theta 500000, weight_tying false, no biases: as the real one). `tiny-variant/`: the same
  but n_layers 1, n_kv_heads 2 (GQA), weight_tying true, input_emb_norm true, scale_logits true,
  rope_theta 10000, rms_norm_eps 1e-6.
- Model: `LLaDAModelLM(LLaDAConfig(**config), init_params=False).eval()`, then every parameter
  overwritten from `torch.Generator().manual_seed(seed)` (seed 0 for tiny, 10 for the variant):
  norm weights 1 + 0.2 N(0, 1), wte N(0, 1), linear weights N(0, 1) / sqrt(fan_in), each rounded
  to bfloat16 (so the bf16 files on disk hold exactly the weights the reference ran with, in
  float32). Saved as bf16 safetensors under the model's state_dict names: tiny as two shards
  (wte + block 0, then the rest) with model.safetensors.index.json, the variant as one
  model.safetensors.
- Inputs (`*_reference.safetensors`): ids [3, 10] from randint(3, 96) with generator seed+1,
  about 60% of the last 4 columns set to the mask id, rows 1 and 2 left-padded by 3 and 6 pad
  tokens (attention_mask False there). `logits` = model(input_ids, use_cache=False).logits;
  `logits_padded` = the same with attention_bias = attention_mask[:, None, None, :] expanded to
  [B, 1, L, L] (bool, True = may attend), i.e. padding keys masked out. (The reference's
  `attention_mask=` argument adds a causal bias, and LLaDA's hub file ignores masks, so
  attention_bias is the reference's way to express a padding mask; MMaDA's t2i_generate passes
  one too.)
- tokenizer.json / tokenizer_config.json in tiny/: a character-level `tokenizers` BPE without
  merges (ids 0-2 = <unk>, <|mdm_mask|>, <|eot_id|>, then digits, arithmetic signs, a-z and
  punctuation; 53 ids), saved with transformers' PreTrainedTokenizerFast.save_pretrained, so
  the folder loads like a hub checkpoint with the `hf` tokenizer.
- llada_8b_shapes.json: {name: shape} of the reference's state_dict at LLaDA-8B-Instruct's sizes
  (d_model 4096, 32 layers, 32 heads, mlp_hidden_size 12288, vocab 126464; 8.016 B parameters,
  291 tensors), from the reference's LLaDAModel built with init_device "meta", names prefixed
  with "model." as LLaDAModelLM saves them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from maskgrpo.backbones.base import token_logprobs
from maskgrpo.backbones.llada import LLaDABackbone, LLaDAConfig
from maskgrpo.cli import main
from maskgrpo.components import build_backbone, build_sampler, build_tokenizer, load_model
from maskgrpo.errors import MaskGRPOError
from maskgrpo.recipe import load_recipe
from maskgrpo.registry import backbones, estimators, load_presets, tasks, tokenizers
from maskgrpo.rewards.combine import RewardSet
from maskgrpo.trainer import GRPOTrainer

from .conftest import REPO, tiny_grpo_recipe, vary_rewards

FIXTURES = Path(__file__).parent / "fixtures" / "llada"
TINY = FIXTURES / "tiny"
PAPER_TARGETS = ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"]


def reference(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / f"{name}_reference.safetensors"))


# -- parity with the reference ------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny", "tiny-variant"])
def test_logits_match_the_reference_with_and_without_padding(name: str) -> None:
    ref = reference(name)
    model = backbones.build({"type": "llada", "path": str(FIXTURES / name)})
    with torch.no_grad():
        full = model(ref["input_ids"])
        padded = model(ref["input_ids"], ref["attention_mask"])
    torch.testing.assert_close(full, ref["logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(padded, ref["logits_padded"], rtol=0, atol=1e-5)
    # the padding mask matters on this input (else the padded check would prove nothing)
    assert (ref["logits"] - ref["logits_padded"]).abs().max() > 0.1


def test_padding_is_invisible_to_real_tokens_and_mask_padding_off_is_the_hub_behaviour() -> None:
    ref = reference("tiny")
    ids, attn = ref["input_ids"], ref["attention_mask"]
    other = ids.clone()
    other[~attn] = 7  # different pad tokens
    model = LLaDABackbone.from_pretrained(TINY)
    with torch.no_grad():
        a, b = model(ids, attn), model(other, attn)
    assert torch.allclose(a[attn], b[attn], atol=1e-6)
    unmasked = LLaDABackbone.from_pretrained(TINY, mask_padding=False)
    with torch.no_grad():
        torch.testing.assert_close(unmasked(ids, attn), ref["logits"], rtol=0, atol=1e-5)


def test_bfloat16_load_tracks_the_float32_reference() -> None:
    ref = reference("tiny")
    model = backbones.build({"type": "llada", "path": str(TINY), "dtype": "bfloat16"})
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    with torch.no_grad():
        logits = model(ref["input_ids"], ref["attention_mask"])
    assert logits.dtype == torch.bfloat16
    assert (logits.float() - ref["logits_padded"]).abs().max() < 0.15


def test_hidden_then_projection_gives_the_same_logprobs() -> None:
    ref = reference("tiny")
    model = LLaDABackbone.from_pretrained(TINY)
    ids, attn = ref["input_ids"], ref["attention_mask"]
    select = ids == model.mask_token_id
    targets = torch.randint(0, model.vocab_size, ids.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = torch.log_softmax(model(ids, attn), -1).gather(-1, targets[..., None])[..., 0][select]
        got = token_logprobs(model, ids, targets, select, attn)
    assert select.sum() > 0 and torch.allclose(got, expected, atol=1e-5)


def test_kv_cache_seam_reproduces_a_full_pass_on_the_suffix() -> None:
    """With a prefix's keys/values from a full pass, the suffix alone gives the full pass's outputs."""
    ref = reference("tiny")
    model = LLaDABackbone.from_pretrained(TINY)
    ids, attn = ref["input_ids"], ref["attention_mask"]
    prefix = 6
    with torch.no_grad():
        full, kv = model.hidden_states(ids, attn)
        past = [(k[:, :, :prefix], v[:, :, :prefix]) for k, v in kv]
        suffix, kv_suffix = model.hidden_states(ids[:, prefix:], attn, past_key_values=past)
    torch.testing.assert_close(suffix, full[:, prefix:], rtol=0, atol=1e-5)
    assert kv_suffix[0][0].shape[2] == ids.shape[1]  # past + new keys come back for the next step


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    ref = reference("tiny")
    grads = []
    for flag in (False, True):
        model = backbones.build({"type": "llada", "path": str(TINY), "gradient_checkpointing": flag}).train()
        model(ref["input_ids"], ref["attention_mask"]).logsumexp(-1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-6)


def test_save_pretrained_round_trips_in_the_hub_layout(tmp_path: Path) -> None:
    model = LLaDABackbone.from_pretrained(TINY)
    model.save_pretrained(tmp_path / "saved", max_shard_size=40_000)
    files = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) >= 2
    again = LLaDABackbone.from_pretrained(tmp_path / "saved")
    ids = reference("tiny")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids), again(ids))
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["block_type"] == "llama" and saved["mask_token_id"] == 1


@pytest.mark.parametrize("rows", [126464, 134656])
def test_real_sizes_give_the_reference_state_dict_names_and_shapes(rows: int) -> None:
    """LLaDA-8B's names and shapes as the reference builds them; MMaDA-8B's 134,656-row embedding
    (text + 8,192 image codes) changes only wte and ff_out."""
    data = json.loads((FIXTURES / "llada_8b_shapes.json").read_text())
    config = {**data["config"], "vocab_size": rows, "embedding_size": rows}
    expected = {k: ([rows, 4096] if k in ("model.transformer.wte.weight", "model.transformer.ff_out.weight") else v) for k, v in data["shapes"].items()}
    with torch.device("meta"):
        model = LLaDABackbone(LLaDAConfig.from_dict(config), 126336)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected
    assert sum(p.numel() for p in model.parameters()) == 8_015_581_184 + 2 * 4096 * (rows - 126464)


# -- strict loading: every mistake is one line naming the file and the tensor ---------------------
def _copy(tmp_path: Path, name: str = "tiny") -> Path:
    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    return folder


def _rewrite_shard(folder: Path, edit) -> None:
    shard = folder / "model-00002-of-00002.safetensors"
    tensors = load_file(str(shard))
    edit(tensors)
    save_file(tensors, str(shard))


def test_a_missing_tensor_is_an_error_naming_it_and_the_folder(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    _rewrite_shard(folder, lambda t: t.pop("model.transformer.ln_f.weight"))
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.transformer.ln_f.weight"]
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(MaskGRPOError, match=r"tensor 'model\.transformer\.ln_f\.weight' is missing .*" + folder.name):
        LLaDABackbone.from_pretrained(folder)


def test_an_unexpected_or_misshapen_tensor_is_an_error(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    _rewrite_shard(folder, lambda t: t.update({"model.transformer.blocks.1.extra.weight": torch.zeros(2)}))
    with pytest.raises(MaskGRPOError, match=r"unexpected tensor 'model\.transformer\.blocks\.1\.extra\.weight' in .*model-00002-of-00002"):
        LLaDABackbone.from_pretrained(folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.transformer.blocks.1.extra.weight"] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(MaskGRPOError, match=r"unexpected tensor 'model\.transformer\.blocks\.1\.extra\.weight'"):
        LLaDABackbone.from_pretrained(folder)
    folder = _copy(tmp_path / "b")
    _rewrite_shard(folder, lambda t: t.update({"model.transformer.ln_f.weight": torch.ones(31, dtype=torch.bfloat16)}))
    with pytest.raises(MaskGRPOError, match=r"'model\.transformer\.ln_f\.weight' .* has shape \[31\], the config expects \[32\]"):
        LLaDABackbone.from_pretrained(folder)


def test_a_missing_shard_or_config_is_an_error(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(MaskGRPOError, match=r"shard model-00001-of-00002\.safetensors named in .*index\.json is missing"):
        LLaDABackbone.from_pretrained(folder)
    (folder / "config.json").unlink()
    with pytest.raises(MaskGRPOError, match=r"backbone\.path: no config\.json in"):
        backbones.build({"type": "llada", "path": str(folder)})
    with pytest.raises(MaskGRPOError, match=r"backbone\.path: .* is not a folder"):
        backbones.build({"type": "llada", "path": str(tmp_path / "nowhere")})


@pytest.mark.parametrize(
    ("field", "value"),
    [("block_type", "sequential"), ("activation_type", "swiglu"), ("layer_norm_type", "default"), ("rope", False), ("include_bias", True), ("block_group_size", 2)],
)
def test_unsupported_config_values_name_the_field(field: str, value, tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config[field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(MaskGRPOError, match=rf"config\.json: {field} = {value!r} is not supported"):
        LLaDABackbone.from_pretrained(folder)


def test_config_defaults_follow_the_reference() -> None:
    config = json.loads((TINY / "config.json").read_text())
    cfg = LLaDAConfig.from_dict(config)
    assert (cfg.n_kv_heads, cfg.head_dim, cfg.mlp_hidden_size, cfg.embedding_size) == (4, 8, 64, 96)
    del config["mlp_hidden_size"], config["n_kv_heads"]
    cfg = LLaDAConfig.from_dict({**config, "multi_query_attention": True})
    assert cfg.mlp_hidden_size == 4 * 32 and cfg.n_kv_heads == 1
    with pytest.raises(MaskGRPOError, match="mask_token_id"):
        LLaDABackbone.from_config({**config, "mask_token_id": None})


# -- presets, recipes, end to end ----------------------------------------------------------------
def test_llada_and_mmada_presets_use_the_native_backbone_without_remote_code() -> None:
    load_presets()
    for name in ("llada-8b-instruct", "mmada-8b"):
        spec = backbones.expand(name)
        assert spec["type"] == "llada" and spec["mask_token_id"] == 126336 and spec["dtype"] == "bfloat16"
        assert not tokenizers.expand(name).get("trust_remote_code", False)


def test_a_saved_llada_folder_loads_with_load_model(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    model, tokenizer = load_model(str(folder))
    assert isinstance(model, LLaDABackbone) and tokenizer.mask_token_id == model.mask_token_id == 1


def test_one_grpo_step_with_lora_on_the_paper_targets_trains_only_the_adapter(tmp_path: Path) -> None:
    """Hub-layout folder (shards + index + config + tokenizer) -> registry -> low_confidence
    rollouts -> one GRPO step with LoRA on q/k/v/attn_out/ff_proj/up_proj/ff_out."""
    folder = _copy(tmp_path)
    path = tiny_grpo_recipe(
        tmp_path,
        backbone={"type": "llada", "path": str(folder)},
        tokenizer={"type": "hf", "path": str(folder)},
        lora={"r": 4, "alpha": 8, "target_modules": PAPER_TARGETS},
        grpo={"group_size": 4, "num_iterations": 2, "beta": 0.05},
    )
    trainer = GRPOTrainer(load_recipe(path), progress=False)
    assert isinstance(trainer.policy, LLaDABackbone) and trainer.reference is None
    wrapped = {n.split(".lora_A")[0] for n, _ in trainer.policy.named_parameters() if "lora_A" in n}
    assert {w.rsplit(".", 1)[-1] for w in wrapped} == set(PAPER_TARGETS)
    assert sum(".blocks." in w for w in wrapped) == 2 * 7  # every target in both layers (+ the LM head's ff_out)
    vary_rewards(trainer)
    before = {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}
    row = trainer.train_step(0)
    after = trainer.policy.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert row["loss"] == row["loss"] and row["frac_zero_std"] < 1.0
    assert changed and all("lora_" in k for k in changed)
    assert all(after[k].dtype == torch.float32 for k in changed)
    # rollouts went through the text sampler: completions decode with the folder's tokenizer
    ids = trainer.tokenizer.encode("7+5=")
    assert ids and trainer.tokenizer.decode(ids) == "7+5="
    # the exported model/ is the adapter merged into the base: it loads back like any folder
    # (the hub layout, no adapter files) and gives the trained policy's logits
    from maskgrpo.components import load_model

    with torch.no_grad():
        for name, p in trainer.policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.05)  # one step at lr 1e-4 hardly moves it: make the adapter visible
    folder = trainer.export()
    assert not (folder / "adapter_config.json").exists()
    loaded, _ = load_model(str(folder))
    tokens = torch.tensor([ids + [trainer.mask_id] * 4])
    trainer.policy.eval()
    with torch.no_grad():
        expected = trainer.policy(tokens)
        trainer.policy.disable_adapters()
        base = trainer.policy(tokens)
        trainer.policy.enable_adapters()
        got = loaded.eval()(tokens)
    assert (expected - base).abs().max() > 1e-3
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_lora_adapter_switches_off_to_the_base_model_exactly() -> None:
    """The trainer's LoRA reference policy is the same model with its adapter disabled."""
    from peft import LoraConfig

    ref = reference("tiny")
    model = LLaDABackbone.from_pretrained(TINY)
    model.add_adapter(LoraConfig(r=2, lora_alpha=4, target_modules=PAPER_TARGETS))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
        adapted = model(ref["input_ids"], ref["attention_mask"])
        model.disable_adapters()
        base = model(ref["input_ids"], ref["attention_mask"])
        model.enable_adapters()
        again = model(ref["input_ids"], ref["attention_mask"])
    torch.testing.assert_close(base, ref["logits_padded"], rtol=0, atol=1e-5)
    assert (adapted - base).abs().max() > 0.1 and torch.equal(adapted, again)
    index = json.loads((TINY / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(model.base_state_dict()) == set(index)  # saving strips peft's wrapping


def test_saving_with_an_adapter_writes_the_base_model_and_peft_files(tmp_path: Path) -> None:
    from peft import LoraConfig

    ref = reference("tiny")
    model = LLaDABackbone.from_pretrained(TINY)
    model.add_adapter(LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(tmp_path / "saved")
    names = {p.name for p in (tmp_path / "saved").iterdir()}
    assert {"config.json", "model.safetensors", "adapter_config.json", "adapter_model.safetensors"} <= names
    assert json.loads((tmp_path / "saved" / "adapter_config.json").read_text())["r"] == 2
    adapter = load_file(str(tmp_path / "saved" / "adapter_model.safetensors"))
    assert len(adapter) == 2 * 2 * 2 and all("lora_" in k for k in adapter)  # A and B, q and v, 2 layers
    with torch.no_grad():  # the folder itself is the base model
        torch.testing.assert_close(LLaDABackbone.from_pretrained(tmp_path / "saved")(ref["input_ids"]), ref["logits"], rtol=0, atol=1e-5)


def _build_every_component(recipe) -> dict[str, object]:
    tokenizer = build_tokenizer(recipe.tokenizer)
    image_tokenizer = build_tokenizer(recipe.image_tokenizer) if recipe.image_tokenizer is not None else None
    return {
        "tokenizer": tokenizer,
        "image_tokenizer": image_tokenizer,
        "backbone": build_backbone(recipe.backbone, tokenizer, image_tokenizer),
        "sampler": build_sampler(recipe.sampler, tokenizer, image_tokenizer),
        "eval_sampler": build_sampler(recipe.eval_sampler, tokenizer, image_tokenizer) if recipe.eval_sampler else None,
        "estimator": estimators.build(recipe.estimator),
        "task": tasks.build(recipe.task),
    }


def test_llada_gsm8k_recipe_checks_and_builds_on_the_tiny_fixture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe_path = REPO / "recipes" / "llada-gsm8k.yaml"
    assert main(["check", str(recipe_path)]) == 0 and "ok" in capsys.readouterr().out
    folder = _copy(tmp_path)
    # the tiny fixture's own special ids and no chat template; everything else is the recipe's
    swaps = [f"backbone.path={folder}", "backbone.dtype=float32", "backbone.mask_token_id=1"]
    swaps += [f"tokenizer.path={folder}", "tokenizer.mask_token_id=1", "tokenizer.eos_token_id=2", "tokenizer.chat_template=false"]
    built = _build_every_component(load_recipe(recipe_path, swaps))
    recipe = load_recipe(recipe_path, swaps)
    assert isinstance(built["backbone"], LLaDABackbone) and built["backbone"].cfg.n_layers == 2
    assert built["sampler"].gen_length == 256 and built["task"].train_example(0).prompt
    assert RewardSet(recipe.rewards).terms  # math_accuracy + format build without weights
    # the preset's mask id (LLaDA's 126336) is outside the tiny embedding: a clear error, not a crash
    with pytest.raises(MaskGRPOError, match="mask_token_id: 126336 is outside the embedding"):
        build_backbone({**backbones.expand("llada-8b-instruct"), "path": str(folder), "dtype": "float32"})
