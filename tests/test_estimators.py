"""Estimators: rate schedules, position profiles, prompt handling, determinism."""

from __future__ import annotations

import pytest
import torch

from maskgrpo.estimators.masking import fading_out_keep_probability, truncated_rate
from maskgrpo.registry import estimators
from maskgrpo.samplers.base import Rollout

MASK = 1
P, L = 4, 16


def rollout(batch: int = 4000, decode_step: torch.Tensor | None = None, padded: bool = True) -> Rollout:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, 20, (batch, P + L), generator=g)
    attn = torch.ones(batch, P + L, dtype=torch.bool)
    if padded:
        tokens[:, 0], attn[:, 0] = 0, False
    step = decode_step if decode_step is not None else torch.arange(L).repeat(batch, 1)
    return Rollout(tokens, P, step, attn)


def hidden_fraction(view, r: Rollout) -> torch.Tensor:
    """Per completion position: how often it is masked."""
    return (view.tokens[:, P:] == MASK).float().mean(dim=0)


def test_truncated_rate_schedule_uses_each_rate_once() -> None:
    assert [round(truncated_rate(j, 4, 0.6), 3) for j in range(4)] == [0.7, 0.8, 0.9, 0.999]
    assert truncated_rate(0, 1, 0.6) == 0.999


@pytest.mark.parametrize("rate", [0.55, 0.7, 0.9])
def test_fading_out_keep_probability_averages_to_the_rate(rate: float) -> None:
    keep = fading_out_keep_probability(L, rate)
    assert abs((1 - keep).mean().item() - rate) < 1e-5
    assert (keep[:-1] >= keep[1:]).all() and keep[-1] == 0


def test_fading_out_masks_later_tokens_more_and_hits_the_rate() -> None:
    est = estimators.build({"type": "fading_out", "min_mask_rate": 0.6})
    r = rollout()
    for j in range(4):
        view = est.masked_view(r, j, 4, batch_seed=7, mask_token_id=MASK)
        frac = hidden_fraction(view, r)
        assert abs(frac.mean().item() - truncated_rate(j, 4, 0.6)) < 0.01
        if j < 3:  # at rate 0.999 everything is masked; below it the profile is AR-like
            assert frac[-4:].mean() > frac[:4].mean() + 0.1
        assert torch.equal(view.tokens[:, :P], r.tokens[:, :P])  # prompt untouched
        assert torch.equal(view.loss_mask[:, P:], view.tokens[:, P:] == MASK)
        assert not view.loss_mask[:, :P].any()


def test_masks_are_a_function_of_batch_seed_and_iteration() -> None:
    est = estimators.build("fading_out")
    r = rollout(64)
    a = est.masked_view(r, 1, 4, batch_seed=3, mask_token_id=MASK)
    b = est.masked_view(r, 1, 4, batch_seed=3, mask_token_id=MASK)
    c = est.masked_view(r, 1, 4, batch_seed=4, mask_token_id=MASK)
    torch.manual_seed(123)  # global RNG state plays no part
    d = est.masked_view(r, 1, 4, batch_seed=3, mask_token_id=MASK)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.tokens, d.tokens)
    assert not torch.equal(a.tokens, c.tokens)


def test_random_estimator_is_uniform_at_the_rate() -> None:
    est = estimators.build({"type": "random", "min_mask_rate": 0.8})
    r = rollout()
    view = est.masked_view(r, 0, 2, batch_seed=1, mask_token_id=MASK)
    frac = hidden_fraction(view, r)
    assert abs(frac.mean().item() - 0.9) < 0.01 and (frac - 0.9).abs().max() < 0.03


def test_unigrpo_rates_rise_linearly_from_a_per_sequence_start() -> None:
    est = estimators.build("unigrpo")
    r = rollout(2000)
    rates = [est.rates(r, j, 3, batch_seed=5) for j in range(3)]
    assert torch.allclose(rates[2], torch.ones_like(rates[2]))
    assert torch.allclose(rates[1], (rates[0] + 1) / 2)
    assert 0.45 < rates[0].mean().item() < 0.55 and rates[0].std() > 0.2  # t_1 ~ U(0, 1)
    per_seq = (est.masked_view(r, 0, 3, 5, MASK).tokens[:, P:] == MASK).float().mean(dim=1)
    assert torch.corrcoef(torch.stack([per_seq, rates[0].squeeze(1)]))[0, 1] > 0.8


def test_d1_masks_all_of_the_completion_and_some_prompt() -> None:
    est = estimators.build({"type": "d1", "p_mask_prompt": 0.15})
    r = rollout()
    a = est.masked_view(r, 0, 2, batch_seed=1, mask_token_id=MASK)
    b = est.masked_view(r, 1, 2, batch_seed=1, mask_token_id=MASK)
    assert (a.tokens[:, P:] == MASK).all() and a.loss_mask[:, P:].all()
    real_prompt = a.tokens[:, 1:P]
    assert abs((real_prompt == MASK).float().mean().item() - 0.15) < 0.01
    assert (a.tokens[:, 0] == 0).all()  # padding is never masked
    assert not torch.equal(a.tokens[:, :P], b.tokens[:, :P])  # a new prompt mask per iteration


def test_trace_replays_the_decode_order() -> None:
    steps = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]])
    r = rollout(1, decode_step=steps, padded=False)
    est = estimators.build("trace")
    scored = torch.zeros(L, dtype=torch.long)
    for j in range(4):  # default shrink: 8 steps in 4 groups of 2
        view = est.masked_view(r, j, 4, batch_seed=0, mask_token_id=MASK)
        hidden = view.tokens[0, P:] == MASK
        assert torch.equal(hidden, steps[0] >= 2 * j)
        assert torch.equal(view.loss_mask[0, P:], (steps[0] // 2) == j)
        scored += view.loss_mask[0, P:].long()
    assert (scored == 1).all()  # every token scored exactly once over the iterations


def test_elbo_is_stratified_and_weighted_by_inverse_rate() -> None:
    est = estimators.build("elbo")
    r = rollout(3000)
    for j in range(4):
        view = est.masked_view(r, j, 4, batch_seed=2, mask_token_id=MASK)
        t = 1 / view.weight
        assert ((t >= j / 4 - 1e-6) & (t <= (j + 1) / 4 + 1e-6)).all()
        per_seq = (view.tokens[:, P:] == MASK).float().mean(dim=1)
        assert (per_seq - t).abs().mean() < 0.15


def test_elbo_is_unbiased_for_a_factorised_model() -> None:
    """For a model whose prediction ignores context, E[sum over masked of log p / t] equals the
    exact log-likelihood: the Monte-Carlo ELBO is unbiased."""
    torch.manual_seed(0)
    logp_table = torch.log_softmax(torch.randn(L, 20), dim=-1)
    r = rollout(20000, padded=False)
    r = Rollout(r.tokens[:1].repeat(20000, 1), P, r.decode_step, None)
    exact = logp_table[torch.arange(L), r.tokens[0, P:]].sum()
    est = estimators.build("elbo")
    estimates = []
    for j in range(4):
        view = est.masked_view(r, j, 4, batch_seed=9, mask_token_id=MASK)
        per_token = logp_table[torch.arange(L), r.tokens[0, P:]].expand(20000, L)
        estimates.append((per_token * view.loss_mask[:, P:]).sum(dim=1) * view.weight)
    mean = torch.stack(estimates).mean()
    assert abs(mean.item() - exact.item()) < 0.03 * abs(exact.item())
