"""Shared fixtures: tiny models and recipes so that every test runs in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import maskgrpo  # noqa: E402,F401  (registers components)
from maskgrpo.backbones.transformer import MaskedTransformer  # noqa: E402
from maskgrpo.tokenizers.char import CharTokenizer  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def tokenizer() -> CharTokenizer:
    return CharTokenizer()


@pytest.fixture
def tiny_model(tokenizer: CharTokenizer) -> MaskedTransformer:
    torch.manual_seed(0)
    return MaskedTransformer(tokenizer.vocab_size, tokenizer.mask_token_id, max_length=32, d_model=32, n_layers=1, n_heads=2).eval()


def vary_rewards(trainer, term: int = 1) -> None:
    """An untrained model may earn equal rewards across a whole group (zero advantages, no
    update); tests that need an update replace one reward term (by default the tiny recipe's
    format term) by one that always varies inside a group of 4: the first image is "right"."""
    trainer.rewards.terms[term].fn = lambda prompts, completions, **kw: [float(i % 4 == 0) for i in range(len(completions))]


def tiny_grpo_recipe(tmp_path: Path, **sections) -> Path:
    """A GRPO recipe on a fresh 1-layer transformer; `sections` replace top-level fields."""
    recipe = {
        "kind": "grpo",
        "name": "tiny",
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "backbone": {"type": "transformer", "max_length": 24, "d_model": 32, "n_layers": 1, "n_heads": 2},
        "tokenizer": {"type": "char"},
        "task": {"type": "arithmetic", "levels": [1], "n_eval": 8},
        "sampler": {"type": "low_confidence", "gen_length": 8, "block_length": 8, "steps": 4, "temperature": 1.0},
        "estimator": {"type": "fading_out", "min_mask_rate": 0.6},
        "rewards": [{"type": "math_accuracy", "weight": 1.0}, {"type": "format", "weight": 0.1}],
        "grpo": {"group_size": 4, "num_iterations": 2},
        "optim": {"lr": 1e-3},
        "train": {"steps": 2, "prompts_per_step": 4, "eval_every": 0},
    }
    recipe.update(sections)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
