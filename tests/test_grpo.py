"""GRPO formulas against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from maskgrpo.grpo import aggregate, group_advantages, grpo_token_loss


def test_group_advantages_by_hand() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    a = group_advantages(r, 4, "group")
    std = torch.tensor([1.0, 0, 0, 0]).std().item()  # unbiased, as torch.std
    assert torch.allclose(a[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (std + 1e-4))
    assert torch.equal(a[4:], torch.zeros(4))  # zero-variance group: no signal
    assert torch.allclose(group_advantages(r, 4, "none")[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    assert torch.allclose(group_advantages(r, 4, "batch")[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (r.std() + 1e-4))
    with pytest.raises(ValueError):
        group_advantages(r, 3)


def test_token_loss_by_hand() -> None:
    logp = torch.tensor([-1.0, -1.0, -2.0, -0.5])
    old = torch.tensor([-1.0, -1.5, -1.0, -0.5])
    adv = torch.tensor([1.0, 1.0, -1.0, -2.0])
    ref = torch.tensor([-1.0, -0.5, -2.0, -1.5])
    out = grpo_token_loss(logp, old, adv, 0.2, 0.3, beta=0.1, logp_ref=ref)
    ratio = [1.0, math.exp(0.5), math.exp(-1.0), 1.0]
    # token 1: ratio 1.65 > 1.3, A > 0 -> clipped at 1.3; token 2: ratio 0.37 < 0.8, A < 0 -> clipped at 0.8
    surrogate = [1.0 * 1, 1.3 * 1, -0.8, -2.0]
    kl = [0.0, math.exp(0.5) - 0.5 - 1, 0.0, math.exp(-1.0) + 1.0 - 1]
    expected = [-s + 0.1 * k for s, k in zip(surrogate, kl)]
    assert torch.allclose(out.loss, torch.tensor(expected), atol=1e-6)
    assert out.clipped.tolist() == [False, True, True, False]
    assert ratio[1] > 1.3
    grad_check = logp.clone().requires_grad_(True)
    grpo_token_loss(grad_check, old, adv, 0.2, 0.3).loss.sum().backward()
    assert grad_check.grad[1] == 0 and grad_check.grad[2] == 0  # clipped tokens pass no gradient
    assert grad_check.grad[0] == -1.0


def test_no_reference_means_no_kl() -> None:
    out = grpo_token_loss(torch.zeros(3), torch.zeros(3), torch.ones(3), 0.2, 0.2, beta=0.5, logp_ref=None)
    assert torch.equal(out.kl, torch.zeros(3)) and torch.allclose(out.loss, -torch.ones(3))


def test_aggregation_token_and_sequence_mean() -> None:
    values = torch.tensor([1.0, 2.0, 3.0, 10.0])
    rows = torch.tensor([0, 0, 0, 1])
    per_row = torch.tensor([3, 1])
    assert aggregate(values, rows, "token", 4, 2, per_row).item() == pytest.approx(4.0)
    assert aggregate(values, rows, "seq", 4, 2, per_row).item() == pytest.approx((2.0 + 10.0) / 2)
    # splitting the batch and adding the parts gives the same number (exact gradient accumulation)
    a = aggregate(values[:3], rows[:3], "seq", 4, 2, per_row) + aggregate(values[3:], rows[3:], "seq", 4, 2, per_row)
    assert a.item() == pytest.approx(6.0)
