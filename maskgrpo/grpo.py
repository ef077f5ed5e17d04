"""GRPO's two formulas: group-relative advantages and the clipped, KL-regularised token loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


def group_advantages(
    rewards: torch.Tensor, group_size: int, std: Literal["group", "batch", "none"] = "group", eps: float = 1e-4
) -> torch.Tensor:
    """A_i = (r_i - mean of its group) / (std + eps). Rows are grouped consecutively: completions
    of one prompt are adjacent. `std="none"` only centres (d1 does this)."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if std == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif std == "batch":
        centred = centred / (rewards.std() + eps)
    return centred.reshape(-1)


@dataclass
class TokenLoss:
    loss: torch.Tensor  # per token, to be aggregated by the caller
    kl: torch.Tensor  # per token (zeros when beta = 0 and no reference)
    clipped: torch.Tensor  # per token bool: the clipped branch was taken


def grpo_token_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float,
    epsilon_high: float,
    beta: float = 0.0,
    logp_ref: torch.Tensor | None = None,
) -> TokenLoss:
    """-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + beta (exp(ref - logp) - (ref - logp) - 1).

    All arguments are flat vectors over the scored tokens; `advantages` is the sequence's
    advantage repeated for each of its tokens.
    """
    ratio = torch.exp(logp - logp_old)
    unclipped = ratio * advantages
    clipped_ratio = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    surrogate = torch.minimum(unclipped, clipped_ratio * advantages)
    loss = -surrogate
    kl = torch.zeros_like(logp)
    if logp_ref is not None:
        delta = logp_ref - logp
        kl = torch.exp(delta) - delta - 1
        if beta > 0:  # at beta 0 the KL is only watched (an overflowing exp must not make 0 * inf)
            loss = loss + beta * kl
    was_clipped = (clipped_ratio * advantages < unclipped).detach()
    return TokenLoss(loss, kl.detach(), was_clipped)


def aggregate(
    values: torch.Tensor, rows: torch.Tensor, mode: Literal["token", "seq"], total_tokens: int, total_seqs: int, tokens_per_row: torch.Tensor
) -> torch.Tensor:
    """Sum of this micro-batch's share of the batch mean.

    token: sum / (scored tokens in the whole batch); seq: each sequence's token mean, summed,
    / (sequences in the whole batch). Dividing by batch totals keeps gradient accumulation exact.
    """
    if mode == "token":
        return values.sum() / max(total_tokens, 1)
    per_token_weight = 1.0 / tokens_per_row[rows].clamp(min=1)
    return (values * per_token_weight).sum() / max(total_seqs, 1)
