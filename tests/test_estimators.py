"""Estimators: rate schedules, position profiles, prompt handling, determinism."""

from __future__ import annotations

import pytest
import torch

from maskgrpo.errors import MaskGRPOError
from maskgrpo.estimators.masking import fading_out_keep_probability, fading_out_mean_mask_rate, truncated_rate
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


EOS = 2


def with_eos(r: Rollout, first_eos: list[int]) -> Rollout:
    """Row i's completion ends at position first_eos[i] (EOS there and after, LLaDA-style)."""
    tokens = r.tokens.clone()
    for i, at in enumerate(first_eos):
        tokens[i, P + at :] = EOS
    return Rollout(tokens, P, r.decode_step, r.attention_mask)


def test_d1_masks_all_of_the_completion_and_some_prompt() -> None:
    est = estimators.build({"type": "d1", "p_mask_prompt": 0.15, "stop_at_eos": False})
    r = rollout()
    a = est.masked_view(r, 0, 2, batch_seed=1, mask_token_id=MASK, eos_token_id=EOS)
    b = est.masked_view(r, 1, 2, batch_seed=1, mask_token_id=MASK, eos_token_id=EOS)
    assert (a.tokens[:, P:] == MASK).all() and a.loss_mask[:, P:].all()
    real_prompt = a.tokens[:, 1:P]
    assert abs((real_prompt == MASK).float().mean().item() - 0.15) < 0.01
    assert (a.tokens[:, 0] == 0).all()  # padding is never masked
    assert not torch.equal(a.tokens[:, :P], b.tokens[:, :P])  # a new prompt mask per iteration


def test_d1_loss_stops_at_the_first_eos_like_d1() -> None:
    """d1's completion_mask: positions <= the first EOS; rows without EOS are scored whole."""
    r = with_eos(rollout(3, padded=False), [5, 0, L])
    view = estimators.build("d1").masked_view(r, 0, 2, batch_seed=1, mask_token_id=MASK, eos_token_id=EOS)
    scored = view.loss_mask[:, P:]
    assert scored[0].tolist() == [True] * 6 + [False] * (L - 6)
    assert scored[1].tolist() == [True] + [False] * (L - 1)
    assert scored[2].all()
    assert (view.tokens[:, P:] == MASK).all()  # the input still hides the whole completion
    with pytest.raises(MaskGRPOError, match="stop_at_eos"):
        estimators.build("d1").masked_view(r, 0, 2, batch_seed=1, mask_token_id=MASK)


@pytest.mark.parametrize("name", ["fading_out", "random", "unigrpo", "trace"])
def test_maskgrpo_estimators_score_eos_padding_unless_asked(name: str) -> None:
    """The paper's own estimators score every masked position, EOS padding included (the
    default); `stop_at_eos: true` holds them to d1's rule for an ablation."""
    r = with_eos(rollout(64, padded=False), [3] * 64)
    default = estimators.build(name).masked_view(r, 1, 2, batch_seed=4, mask_token_id=MASK, eos_token_id=EOS)
    assert default.loss_mask[:, P + 4 :].any()
    held = estimators.build({"type": name, "stop_at_eos": True}).masked_view(r, 1, 2, batch_seed=4, mask_token_id=MASK, eos_token_id=EOS)
    assert not held.loss_mask[:, P + 4 :].any() and held.loss_mask[:, P : P + 4].any()


@pytest.mark.parametrize("min_mask_rate", [0.0, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95])
def test_fading_out_real_mean_rate_over_the_range_of_gamma(min_mask_rate: float) -> None:
    """The mean rate is r for r >= 0.5 and about 1/(4(1-r)) below (the clamp keeps the early
    positions whole); the sampled masks follow the documented mean at every j."""
    length, mu = 200, 4
    est = estimators.build({"type": "fading_out", "min_mask_rate": min_mask_rate})
    big = Rollout(torch.full((400, P + length), 5), P, torch.zeros(400, length, dtype=torch.long))
    for j in range(mu):
        r = truncated_rate(j, mu, min_mask_rate)
        documented = fading_out_mean_mask_rate(length, r)
        expected = r if r >= 0.5 else 1 / (4 * (1 - r))
        assert abs(documented - expected) < 2 / length, (r, documented, expected)
        if r < 0.5:  # positions with d_n >= 1 / (2 (1 - r)) are never masked
            never = (fading_out_keep_probability(length, r) >= 1).float().mean().item()
            assert abs(never - (1 - 1 / (2 * (1 - r)))) < 2 / length
        view = est.masked_view(big, j, mu, batch_seed=3, mask_token_id=MASK)
        assert abs(view.loss_mask[:, P:].float().mean().item() - documented) < 0.01


def test_trace_replays_the_decode_order_scoring_every_group_each_iteration() -> None:
    """TraceRL's schedule: each iteration holds one masked input per step group (stacked)."""
    steps = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]])
    r = rollout(1, decode_step=steps, padded=False)
    est = estimators.build("trace")
    for j in range(4):  # default shrink: 8 steps in 4 groups of 2
        view = est.masked_view(r, j, 4, batch_seed=0, mask_token_id=MASK)
        assert view.rows.tolist() == [0, 0, 0, 0]
        for g in range(4):
            assert torch.equal(view.tokens[g, P:] == MASK, steps[0] >= 2 * g)
            assert torch.equal(view.loss_mask[g, P:], (steps[0] // 2) == g)
        assert (view.loss_mask[:, P:].sum(dim=0) == 1).all()  # every token scored once per pass


def trace_rollout(batch: int, steps: int) -> Rollout:
    """Each row commits its L tokens over `steps` steps in its own random order."""
    g = torch.Generator().manual_seed(1)
    order = torch.argsort(torch.rand(batch, L, generator=g), dim=1)
    decode = (order * steps) // L
    return rollout(batch, decode_step=decode, padded=False)


@pytest.mark.parametrize("schedule", ["all", "cycle"])
@pytest.mark.parametrize("shrink,mu", [(1, 4), (2, 4), (3, 2), (5, 4), (16, 4), (None, 3), (1, 16)])
def test_trace_scores_every_completion_token_for_any_shrink(schedule: str, shrink: int | None, mu: int) -> None:
    """The union of the loss masks over the mu iterations covers the whole trajectory (16 decode
    steps), whatever `shrink` is: with 16 steps, shrink 2 and mu 4 the old code never scored the
    tokens committed at steps 8-15."""
    r = trace_rollout(8, steps=16)
    est = estimators.build({"type": "trace", "shrink": shrink, "schedule": schedule})
    covered = torch.zeros(8, L, dtype=torch.long)
    for j in range(mu):
        view = est.masked_view(r, j, mu, batch_seed=0, mask_token_id=MASK)
        rows = view.rows if view.rows is not None else torch.arange(8)
        covered.index_add_(0, rows, view.loss_mask[:, P:].long())
        groups, scored = est.step_groups(r, mu)[rows], view.loss_mask[:, P:]
        g = torch.where(scored, groups, -1).amax(dim=1, keepdim=True)  # the group each input scores
        assert torch.equal(scored, groups == g)
        assert torch.equal(view.tokens[:, P:] == MASK, groups >= g)  # hides that group and all later
    assert (covered >= 1).all()
    n_groups = -(-16 // (shrink or -(-16 // mu)))
    if schedule == "cycle" and n_groups >= mu:
        assert (covered == 1).all()  # a partition when the groups fit the iterations


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
