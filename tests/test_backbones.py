"""Backbones and tokenizers: save/load round trips, the hidden/logits split, the HF adapters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maskgrpo.backbones.base import token_logprobs
from maskgrpo.components import build_backbone, build_tokenizer, load_model
from maskgrpo.errors import MaskGRPOError
from maskgrpo.registry import backbones, tokenizers
from maskgrpo.tokenizers.base import decode_completion
from maskgrpo.tokenizers.char import CharTokenizer


def test_transformer_round_trip_through_the_registry(tiny_model, tokenizer, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"config.json", "diffusion_pytorch_model.safetensors", "char_tokenizer.json"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left
    loaded, tok = load_model(str(tmp_path / "m"))
    x = torch.randint(0, tokenizer.vocab_size, (2, 10))
    assert torch.equal(tiny_model(x), loaded.eval()(x))
    assert tok.alphabet == tokenizer.alphabet
    # saving again over it keeps the tokenizer that lives beside the model
    loaded.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "char_tokenizer.json").is_file()


def test_hidden_then_head_equals_forward_and_logprobs_only_where_selected(tiny_model) -> None:
    x = torch.randint(0, tiny_model.vocab_size, (3, 9))
    full = torch.log_softmax(tiny_model(x), dim=-1)
    select = torch.rand(3, 9) < 0.5
    targets = torch.randint(0, tiny_model.vocab_size, (3, 9))
    expected = full.gather(-1, targets.unsqueeze(-1)).squeeze(-1)[select]
    assert torch.allclose(token_logprobs(tiny_model, x, targets, select), expected, atol=1e-5)


def test_attention_mask_hides_padding(tiny_model) -> None:
    x = torch.randint(4, tiny_model.vocab_size, (1, 8))
    attn = torch.ones(1, 8, dtype=torch.bool)
    attn[0, :3] = False
    y = x.clone()
    y[0, :3] = 0
    assert torch.allclose(tiny_model(x, attn)[0, 3:], tiny_model(y, attn)[0, 3:], atol=1e-5)
    assert not torch.allclose(tiny_model(x)[0, 3:], tiny_model(y)[0, 3:], atol=1e-5)


def test_right_aligned_positions_make_a_row_independent_of_its_batch(tmp_path: Path) -> None:
    """Left padding to the batch's longest prompt must not move a completion's positions: with
    `positions: right` a row's logits are the same alone or beside a longer prompt; with the old
    `left` layout they are not. The choice survives save and load."""
    torch.manual_seed(0)
    row = torch.randint(4, 30, (1, 9))  # 3 prompt + 6 completion tokens
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), row], dim=1)  # beside a prompt 4 tokens longer
    attn = torch.ones(1, 13, dtype=torch.bool)
    attn[0, :4] = False
    for positions, same in (("right", True), ("left", False)):
        spec = {"type": "transformer", "vocab_size": 32, "mask_token_id": 1, "max_length": 16, "d_model": 16, "n_layers": 1, "n_heads": 2}
        model = backbones.build({**spec, "positions": positions}, where="b").eval()
        with torch.no_grad():
            alone, beside = model(row)[0, 3:], model(padded, attn)[0, 7:]
        assert torch.allclose(alone, beside, atol=1e-5) is same, positions
        model.save_pretrained(tmp_path / positions)
        assert backbones.build({"type": "transformer", "path": str(tmp_path / positions)}, where="b").config.positions == positions
    with pytest.raises(MaskGRPOError, match="positions"):
        backbones.build({"type": "transformer", "vocab_size": 32, "mask_token_id": 1, "positions": "middle"}, where="b")


def test_new_transformer_takes_vocab_from_tokenizer(tokenizer) -> None:
    model = build_backbone({"type": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2}, tokenizer)
    assert model.vocab_size == tokenizer.vocab_size and model.mask_token_id == tokenizer.mask_token_id
    with pytest.raises(MaskGRPOError, match="no saved model"):
        build_backbone({"type": "transformer", "path": "/nonexistent"})


def test_char_tokenizer_round_trip(tmp_path: Path) -> None:
    tok = CharTokenizer()
    ids = tok.encode("12+3=#### 15")
    assert tok.decode(ids) == "12+3=#### 15"
    assert decode_completion(tok, ids[5:] + [tok.eos_token_id, 7, 8]) == "#### 15"
    tok.save_pretrained(tmp_path)
    assert build_tokenizer({"type": "char", "path": str(tmp_path)}).alphabet == tok.alphabet


@pytest.fixture(scope="module")
def tiny_hf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised BertForMaskedLM and a word-level tokenizer saved to a folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[MASK]", "[EOS]", "one", "two", "three", "plus", "is"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]", eos_token="[EOS]")
    tok.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    BertForMaskedLM(config).save_pretrained(path)
    return path


def test_hf_adapter_loads_a_tiny_model_through_user_code(tiny_hf_model: Path) -> None:
    tok = tokenizers.build({"type": "hf", "path": str(tiny_hf_model)})
    assert tok.mask_token_id == 2 and tok.eos_token_id == 3 and tok.vocab_size == 9
    assert tok.decode(tok.encode("one plus two")) == "one plus two"
    model = backbones.build({"type": "hf", "path": str(tiny_hf_model), "mask_token_id": 2}).eval()
    assert not model.model.config.to_dict().get("trust_remote_code", False)
    x = torch.tensor([tok.encode("one plus two is") + [2, 2]])
    logits = model(x)
    assert logits.shape == (1, 6, 9) and model.mask_token_id == 2
    split = backbones.build({"type": "hf", "path": str(tiny_hf_model), "mask_token_id": 2, "body": "bert", "head": "cls"}).eval()
    assert torch.allclose(split.logits_from_hidden(split.hidden(x)), logits, atol=1e-5)


def test_hf_adapter_errors_are_one_line(tiny_hf_model: Path, tmp_path: Path) -> None:
    with pytest.raises(MaskGRPOError, match="backbone.path: cannot load"):
        backbones.build({"type": "hf", "path": str(tmp_path / "nothing")})
    with pytest.raises(MaskGRPOError, match="mask_token_id"):
        backbones.build({"type": "hf", "path": str(tiny_hf_model)})  # BERT's config has no mask id
    with pytest.raises(MaskGRPOError, match="chat_template"):
        tokenizers.build({"type": "hf", "path": str(tiny_hf_model), "chat_template": True})


def test_hf_model_folder_loads_with_load_model(tiny_hf_model: Path, tmp_path: Path) -> None:
    model = backbones.build({"type": "hf", "path": str(tiny_hf_model), "mask_token_id": 2})
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()


def test_word_tokenizer_covers_the_shapes_prompts(tmp_path: Path) -> None:
    import json

    from .conftest import REPO

    tok = tokenizers.build("word")
    for line in (REPO / "maskgrpo/suites/shapes/metadata.jsonl").read_text().splitlines():
        prompt = json.loads(line)["prompt"]
        ids = tok.encode(prompt)
        assert tok.unk_token_id not in ids and tok.decode(ids) == prompt
    tok.save_pretrained(tmp_path)
    assert tokenizers.build({"type": "word", "path": str(tmp_path)}).words == tok.words
