"""What every rollout sampler returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..utils import Generator, draw_uniform


@dataclass
class Rollout:
    """Prompt + completion tokens and, for every completion position, the step that committed it.

    `decode_step` is what TraceRL-style estimators replay and what analysis plots; samplers
    never re-mask, so each position has exactly one step.
    """

    tokens: torch.Tensor  # [B, P + L]
    prompt_length: int  # P
    decode_step: torch.Tensor  # [B, L], in [0, steps)
    attention_mask: torch.Tensor | None = None  # [B, P + L]; False on left padding
    # [B] global index of each row (set by the trainer): estimators draw each row's masks from
    # its own generator, so masks do not depend on the batch or the process count
    row_ids: torch.Tensor | None = None
    # what the rollout cost (text sampler): `forwards` (backbone forward passes, a guided pair
    # counted once), `forwards_per_block` (their mean per block), `tokens_per_step` (mean tokens
    # a row committed in a step in which it committed any); the trainer logs them as rollout/*
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def completion(self) -> torch.Tensor:
        return self.tokens[:, self.prompt_length :]

    def index(self, rows: torch.Tensor | slice) -> "Rollout":
        mask = None if self.attention_mask is None else self.attention_mask[rows]
        ids = None if self.row_ids is None else self.row_ids[rows]
        return Rollout(self.tokens[rows], self.prompt_length, self.decode_step[rows], mask, ids, dict(self.stats))


def all_mask_start(
    prompt_tokens: torch.Tensor, attention_mask: torch.Tensor | None, gen_length: int, mask_id: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Every sampler's starting point: prompt + `gen_length` masks, the attention mask extended
    over the completion, and decode steps all -1 (nothing committed yet)."""
    batch, device = prompt_tokens.shape[0], prompt_tokens.device
    completion = torch.full((batch, gen_length), mask_id, dtype=torch.long, device=device)
    x = torch.cat([prompt_tokens, completion], dim=1)
    attn = None
    if attention_mask is not None:
        attn = torch.cat([attention_mask.bool(), torch.ones_like(completion, dtype=torch.bool)], dim=1)
    return x, attn, torch.full((batch, gen_length), -1, dtype=torch.long, device=device)


def guided_logits(
    backbone: Any, x: torch.Tensor, attn: torch.Tensor | None, prompt_length: int, lo: int, hi: int | None, cfg_scale: float
) -> torch.Tensor:
    """Logits at positions lo:hi, with classifier-free guidance when cfg_scale > 0:
    l_uncond + (1 + w)(l_cond - l_uncond), the unconditional input having its prompt masked
    (padding kept). Both halves go through the backbone in one batch."""
    if cfg_scale == 0:
        return backbone.logits_from_hidden(backbone.hidden(x, attn)[:, lo:hi])
    both, both_attn = guidance_batch(x, attn, prompt_length, backbone.mask_token_id)
    return guide(backbone.logits_from_hidden(backbone.hidden(both, both_attn)[:, lo:hi]), cfg_scale)


def guidance_batch(x: torch.Tensor, attn: torch.Tensor | None, prompt_length: int, mask_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[x; x with its prompt masked (padding kept)] and the attention mask doubled to match:
    the conditional and unconditional halves of classifier-free guidance in one batch."""
    uncond = x.clone()
    prompt = uncond[:, :prompt_length]
    real = attn[:, :prompt_length].bool() if attn is not None else torch.ones_like(prompt, dtype=torch.bool)
    prompt[real] = mask_id
    return torch.cat([x, uncond]), None if attn is None else torch.cat([attn, attn])


def guide(logits: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Logits of a guidance batch [2B, ...] -> l_uncond + (1 + w)(l_cond - l_uncond) [B, ...]."""
    cond, unc = logits.chunk(2)
    return unc + (1 + cfg_scale) * (cond - unc)


def sample_tokens(logits: torch.Tensor, temperature: float, generator: Generator) -> torch.Tensor:
    """A token per position of `logits` [B, ..., V] from softmax(logits / tau); tau = 0 is argmax.
    With RowGenerators, row b's draws come from its own generator (batch-invariant).

    Inverse-CDF sampling with the cumulative sum and the uniform draw in float64 (LLaDA uses
    float64 because a low-precision Gumbel-max is biased; here float32 probabilities err by
    about 1e-7 relative and the float64 running sum keeps that): one random number per
    position instead of V, about 10x cheaper than float64 Gumbel-max at a 32k vocabulary.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    cdf = torch.softmax(logits.float() / temperature, dim=-1).double().cumsum(dim=-1)
    u = draw_uniform((*cdf.shape[:-1], 1), generator, cdf.device, torch.float64)
    # right=True: the first token whose cumulative probability exceeds u (never a zero-probability token)
    return torch.searchsorted(cdf, u * cdf[..., -1:], right=True).squeeze(-1).clamp_max(logits.shape[-1] - 1)


def uniform(shape: tuple[int, ...], generator: Generator, device: torch.device) -> torch.Tensor:
    return draw_uniform(shape, generator, device)


def top_k_per_row(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the k[b] highest scores in each row b (stable on ties)."""
    order = torch.argsort(scores, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks < k[:, None]
