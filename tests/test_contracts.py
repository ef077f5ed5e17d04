"""Contracts every registered sampler and estimator keeps, timm-style: the tests run over the
registry, so a new component is tested as soon as it registers (and this file fails until its
tiny spec is added to TINY below).

Samplers: the same seed gives the same rollout; every completion position is committed exactly
once; with per-row generators a row's rollout does not depend on the other rows of its batch or
on their padding. Estimators: the loss mask lies inside the completion and on hidden tokens; the
masks are a function of (batch seed, iteration, row) only.
"""

from __future__ import annotations

import pytest
import torch

from maskgrpo.backbones.transformer import MaskedTransformer
from maskgrpo.registry import estimators, samplers
from maskgrpo.samplers.base import Rollout
from maskgrpo.utils import RowGenerators

TEXT_VOCAB, CODEBOOK, MASK, PAD = 12, 16, 1, 0
TINY_SAMPLERS = {
    "low_confidence": {"gen_length": 8, "block_length": 4, "steps": 4, "temperature": 1.0},
    "random_remasking": {"gen_length": 8, "block_length": 4, "steps": 4, "temperature": 1.0},
    "maskgit": {"image_tokens": 8, "codebook_offset": TEXT_VOCAB, "codebook_size": CODEBOOK, "steps": 4},
    "emerge": {"image_tokens": 8, "codebook_offset": TEXT_VOCAB, "codebook_size": CODEBOOK, "steps": 4},
}
TINY_ESTIMATORS = {
    "fading_out": {},
    "random": {},
    "unigrpo": {},
    "d1": {"stop_at_eos": False},
    "trace": {},
    "elbo": {},
}


@pytest.fixture(scope="module")
def model() -> MaskedTransformer:
    torch.manual_seed(0)
    # right-aligned positions: a row's logits do not depend on the batch's padding
    return MaskedTransformer(TEXT_VOCAB + CODEBOOK, MASK, max_length=24, d_model=32, n_layers=1, n_heads=2, positions="right").eval()


def test_every_registered_sampler_and_estimator_has_a_tiny_spec() -> None:
    assert set(samplers.names()) == set(TINY_SAMPLERS), "add the new sampler's tiny spec to TINY_SAMPLERS"
    assert set(estimators.names()) == set(TINY_ESTIMATORS), "add the new estimator's tiny spec to TINY_ESTIMATORS"


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts, the second one shorter (left-padded)."""
    ids = torch.tensor([[5, 6, 7, 8, 9], [PAD, PAD, 4, 5, 6], [9, 8, 7, 6, 5]])
    return ids, ids != PAD


@pytest.mark.parametrize("name", sorted(TINY_SAMPLERS))
def test_sampler_contract(model, name: str) -> None:
    sampler = samplers.build({"type": name, **TINY_SAMPLERS[name]})
    ids, attn = batch()
    rows = RowGenerators.seeded(7, rows=[0, 1, 2])
    a = sampler.sample(model, ids, rows, attention_mask=attn)
    b = sampler.sample(model, ids, RowGenerators.seeded(7, rows=[0, 1, 2]), attention_mask=attn)
    c = sampler.sample(model, ids, RowGenerators.seeded(8, rows=[0, 1, 2]), attention_mask=attn)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.decode_step, b.decode_step)  # same seed, same rollout
    assert not torch.equal(a.tokens, c.tokens)
    assert (a.completion != MASK).all() and (a.decode_step >= 0).all()  # every position committed once
    assert torch.equal(a.tokens[:, : ids.shape[1]], ids)  # the prompt is untouched
    # row 2 alone (no padded neighbour, no longer prompt beside it) gives the same rollout
    alone = sampler.sample(model, ids[2:], RowGenerators.seeded(7, rows=[2]), attention_mask=attn[2:])
    assert torch.equal(alone.tokens[0], a.tokens[2]) and torch.equal(alone.decode_step[0], a.decode_step[2])
    # the padded row beside a prompt one token longer than its own batch: unchanged too
    wider = torch.cat([torch.full((3, 1), PAD), ids], dim=1)
    wide = sampler.sample(model, wider, RowGenerators.seeded(7, rows=[0, 1, 2]), attention_mask=wider != PAD)
    assert torch.equal(wide.completion, a.completion)


def rollout(row_ids: list[int] | None = None) -> Rollout:
    g = torch.Generator().manual_seed(0)
    batch_size = 6 if row_ids is None else len(row_ids)
    tokens = torch.randint(4, TEXT_VOCAB, (batch_size, 5 + 8), generator=g)
    steps = torch.argsort(torch.rand(batch_size, 8, generator=g), dim=1) // 2  # 4 decode steps, 2 tokens each
    ids = None if row_ids is None else torch.tensor(row_ids)
    return Rollout(tokens, 5, steps, torch.ones_like(tokens, dtype=torch.bool), ids)


@pytest.mark.parametrize("name", sorted(TINY_ESTIMATORS))
def test_estimator_contract(name: str) -> None:
    est = estimators.build({"type": name, **TINY_ESTIMATORS[name]})
    r = rollout(list(range(6)))
    for j in range(3):
        view = est.masked_view(r, j, 3, batch_seed=11, mask_token_id=MASK, eos_token_id=2)
        rows = view.rows if view.rows is not None else torch.arange(6)
        assert not view.loss_mask[:, :5].any()  # nothing scored in the prompt
        assert (view.loss_mask[:, 5:] <= (view.tokens[:, 5:] == MASK)).all()  # only hidden tokens are scored
        shown = view.tokens[:, 5:] != MASK
        assert torch.equal(view.tokens[:, 5:][shown], r.tokens[rows, 5:][shown])  # what is shown is the rollout
        again = est.masked_view(r, j, 3, batch_seed=11, mask_token_id=MASK, eos_token_id=2)
        assert torch.equal(again.tokens, view.tokens) and torch.equal(again.loss_mask, view.loss_mask)
    # a row's masks are its own: rows 2..3 alone, with their global ids, get the same masks
    full = est.masked_view(r, 1, 3, batch_seed=11, mask_token_id=MASK, eos_token_id=2)
    part = est.masked_view(r.index(slice(2, 4)), 1, 3, batch_seed=11, mask_token_id=MASK, eos_token_id=2)
    full_rows = full.rows if full.rows is not None else torch.arange(6)
    part_rows = part.rows if part.rows is not None else torch.arange(2)
    mine = (full_rows == 2) | (full_rows == 3)
    assert torch.equal(full.tokens[mine], part.tokens) and torch.equal(full.loss_mask[mine], part.loss_mask)
    assert torch.equal(full_rows[mine] - 2, part_rows)
