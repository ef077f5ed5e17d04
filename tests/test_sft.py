"""Masked-diffusion SFT: the loss falls, the model saves and loads through user code."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from maskgrpo.cli import main
from maskgrpo.components import load_model
from maskgrpo.sft import masked_diffusion_loss
from maskgrpo.utils import make_generator


def test_loss_ignores_the_prompt_and_weights_by_inverse_rate(tiny_model) -> None:
    prompt = torch.randint(4, 20, (64, 4))
    attn = torch.ones_like(prompt, dtype=torch.bool)
    target = torch.randint(4, 20, (64, 6))
    a = masked_diffusion_loss(tiny_model, prompt, attn, target, make_generator(0, 1), 1e-3)
    b = masked_diffusion_loss(tiny_model, prompt, attn, target, make_generator(0, 1), 1e-3)
    assert torch.equal(a, b) and a.item() > 0
    # an untrained model is near-uniform: E[CE * 1{masked} / t] = log V per token
    losses = [masked_diffusion_loss(tiny_model, prompt, attn, target, make_generator(0, k), 1e-3).item() for k in range(30)]
    assert abs(sum(losses) / len(losses) - torch.log(torch.tensor(21.0)).item()) < 0.5


def test_masked_mean_weighting_averages_over_masked_tokens_only(tiny_model, monkeypatch) -> None:
    """Without the 1/t weights an untrained model's loss is log V at every mask rate, and the
    value equals a hand-computed mean cross-entropy over the masked positions."""
    prompt = torch.randint(4, 20, (64, 4))
    attn = torch.ones_like(prompt, dtype=torch.bool)
    target = torch.randint(4, 20, (64, 6))
    for t_min in (1e-3, 0.9):
        loss = masked_diffusion_loss(tiny_model, prompt, attn, target, make_generator(0, 1), t_min, weighting="masked_mean")
        assert abs(loss.item() - torch.log(torch.tensor(21.0)).item()) < 0.3
    seen = []
    hidden = tiny_model.hidden
    monkeypatch.setattr(tiny_model, "hidden", lambda tokens, attn=None: seen.append(tokens.clone()) or hidden(tokens, attn))
    loss = masked_diffusion_loss(tiny_model, prompt, attn, target, make_generator(0, 2), 1e-3, weighting="masked_mean")
    noisy = seen[-1][:, 4:]
    masked = noisy == tiny_model.mask_token_id
    with torch.no_grad():
        logits = tiny_model.logits_from_hidden(hidden(seen[-1], torch.ones_like(seen[-1], dtype=torch.bool))[:, 4:][masked])
    expected = torch.nn.functional.cross_entropy(logits.float(), target[masked])
    assert torch.allclose(loss, expected, atol=1e-5)
    try:
        masked_diffusion_loss(tiny_model, prompt, attn, target, make_generator(0, 2), 1e-3, weighting="bogus")
    except ValueError as err:
        assert "weighting" in str(err)
    else:
        raise AssertionError("an unknown weighting must be an error")


def test_prompt_dropout_masks_whole_prompts_and_keeps_padding(tiny_model, monkeypatch) -> None:
    """The dropped rows are exactly the unconditional input that classifier-free guidance uses."""
    seen = []
    hidden = tiny_model.hidden
    monkeypatch.setattr(tiny_model, "hidden", lambda tokens, attn=None: seen.append(tokens.clone()) or hidden(tokens, attn))
    prompt = torch.randint(4, 20, (400, 5))
    attn = torch.ones_like(prompt, dtype=torch.bool)
    attn[:, :2] = False  # left padding stays padding
    masked_diffusion_loss(tiny_model, prompt, attn, torch.randint(4, 20, (400, 6)), make_generator(0, 3), 1e-3, 0.25)
    got = seen[-1][:, :5]
    dropped = (got[:, 2:] == tiny_model.mask_token_id).all(dim=1)
    assert torch.equal(got[~dropped], prompt[~dropped])
    assert torch.equal(got[dropped, :2], prompt[dropped, :2])
    assert (got[~dropped, 2:] != tiny_model.mask_token_id).all()
    assert 0.18 < dropped.float().mean().item() < 0.32
    masked_diffusion_loss(tiny_model, prompt, attn, torch.randint(4, 20, (400, 6)), make_generator(0, 3), 1e-3)
    assert torch.equal(seen[-1][:, :5], prompt)


def test_short_sft_run_lowers_the_loss_and_saves_a_loadable_model(tmp_path: Path) -> None:
    recipe = {
        "kind": "sft",
        "name": "tiny-sft",
        "output_dir": str(tmp_path / "run"),
        "backbone": {"type": "transformer", "max_length": 16, "d_model": 32, "n_layers": 1, "n_heads": 2},
        "tokenizer": {"type": "char"},
        "task": {"type": "arithmetic", "levels": [1], "n_eval": 16},
        "sampler": {"type": "low_confidence", "gen_length": 8, "block_length": 8, "steps": 8},
        "sft": {"steps": 60, "batch_size": 32, "lr": 3e-3, "warmup_steps": 5, "eval_every": 0, "save_to": str(tmp_path / "saved")},
    }
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["sft", str(path)]) == 0
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = sum(r["loss"] for r in rows[:10]) / 10
    last = sum(r["loss"] for r in rows[-10:]) / 10
    assert last < 0.6 * first, (first, last)
    assert "eval/accuracy" in rows[-1]
    backbone, tokenizer = load_model(str(tmp_path / "saved"))
    assert backbone.vocab_size == tokenizer.vocab_size
    assert main(["sample", "--model", str(tmp_path / "saved"), "--prompt", "3+4="]) == 0
