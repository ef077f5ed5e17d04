"""Every shipped model gives a prompt the same completion alone as beside a longer prompt (issue 15,
item 12): `maskgrpo sample --prompt '7+5='` printed an empty completion alone and `#### 2` when
batched with `'23+9='`, because arith-small put position 0 at the first (padding) column.
Left-padded batches are batch-invariant only with `positions: right`."""

from __future__ import annotations

import json

import pytest
import torch

from maskgrpo.components import load_model
from maskgrpo.generation import rollouts
from maskgrpo.paths import package_dir
from maskgrpo.registry import samplers

# preset -> (short prompt, longer prompt, gen_length, block_length): the lengths the world's recipes use
SHIPPED = {
    "arith-small": ("7+5=", "23+9=", 8, 8),
    "chain-small": ("7+5+7+8+4=", "3+4+9+2+8+6=", 64, 32),
    "chain-carry": ("7+5+7+8+4=", "3+4+9+2+8+6=", 64, 32),
    "shapes-small": ("a red circle", "a photo of a green square below a blue triangle", 64, 64),
}


def test_every_shipped_policy_is_listed() -> None:
    configs = [p / "config.json" for p in package_dir("checkpoints").iterdir()]
    shipped = {c.parent.name for c in configs if c.is_file() and json.loads(c.read_text()).get("_class_name") == "MaskedTransformer"}
    assert shipped == set(SHIPPED)


@pytest.mark.parametrize("preset", sorted(SHIPPED))
def test_shipped_model_is_right_aligned(preset: str) -> None:
    backbone, _ = load_model(preset)
    assert backbone.config.positions == "right"


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("preset", sorted(SHIPPED))
def test_a_prompts_sample_does_not_depend_on_its_batch(preset: str, temperature: float) -> None:
    short, longer, gen_length, block_length = SHIPPED[preset]
    backbone, tokenizer = load_model(preset)
    sampler = samplers.build({"type": "low_confidence", "gen_length": gen_length, "block_length": block_length, "steps": gen_length, "temperature": temperature})

    def completions(prompts: list[str], row_ids: list[int] | None = None) -> torch.Tensor:  # token ids: image codes have no text
        return next(rollouts(backbone, tokenizer, sampler, prompts, 8, seed=3, device="cpu", row_ids=row_ids)).completion

    alone = completions([short])[0]
    assert torch.equal(completions([short, longer])[0], alone)
    assert torch.equal(completions([longer, short], row_ids=[1, 0])[1], alone)
