"""LLaDA's semi-autoregressive text sampler with low-confidence (or random) remasking.

The completion starts all-mask and is decoded in blocks, left to right. Each block gets an equal
share of the steps; within a block the still-masked tokens are shared evenly over its remaining
steps, and each step commits the most confident predictions inside the block.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..backbones.base import Backbone
from ..errors import MaskGRPOError
from ..registry import samplers
from ..utils import Generator
from .base import Rollout, all_mask_start, guided_logits, sample_tokens, top_k_per_row, uniform


def commit_schedule(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """[B] masked counts -> [B, steps] tokens to commit per step: the count split evenly, the
    remainder going to the first steps (sums to `masked` exactly)."""
    base = masked // steps
    extra = masked % steps
    return base[:, None] + (torch.arange(steps, device=masked.device)[None, :] < extra[:, None]).long()


@samplers.register("low_confidence")
class LowConfidenceSampler:
    """LLaDA text sampler: blocks left to right, commit the k most confident tokens per step."""

    def __init__(
        self,
        gen_length: int = 256,
        block_length: int = 16,
        steps: int = 128,
        temperature: float = 0.0,
        cfg_scale: float = 0.0,
        remasking: Literal["low_confidence", "random"] = "low_confidence",
    ):
        if gen_length <= 0 or block_length <= 0 or gen_length % block_length:
            raise MaskGRPOError(f"sampler.block_length: {block_length} must divide gen_length {gen_length}")
        blocks = gen_length // block_length
        if steps <= 0 or steps % blocks:
            raise MaskGRPOError(f"sampler.steps: {steps} must be a positive multiple of the {blocks} blocks")
        if temperature < 0:
            raise MaskGRPOError("sampler.temperature: must be >= 0")
        self.gen_length, self.block_length, self.steps = gen_length, block_length, steps
        self.temperature, self.cfg_scale, self.remasking = temperature, cfg_scale, remasking

    @torch.no_grad()
    def sample(
        self,
        backbone: Backbone,
        prompt_tokens: torch.Tensor,
        generator: Generator = None,
        attention_mask: torch.Tensor | None = None,
    ) -> Rollout:
        prompt_length, mask_id, device = prompt_tokens.shape[1], backbone.mask_token_id, prompt_tokens.device
        x, attn, decode_step = all_mask_start(prompt_tokens, attention_mask, self.gen_length, mask_id)
        blocks = self.gen_length // self.block_length
        steps_per_block = self.steps // blocks
        step = 0
        for b in range(blocks):
            lo = prompt_length + b * self.block_length
            hi = lo + self.block_length
            counts = commit_schedule((x[:, lo:hi] == mask_id).sum(dim=1), steps_per_block)
            for s in range(steps_per_block):
                k = counts[:, s]
                if int(k.max()) > 0:  # a step that commits nothing needs no forward pass
                    logits = guided_logits(backbone, x, attn, prompt_length, lo, hi, self.cfg_scale)
                    logits[..., mask_id] = float("-inf")  # committing a mask would leave a hole
                    block = x[:, lo:hi]
                    still_masked = block == mask_id
                    # a draw at every block position (so each row's draws are its own), kept where masked
                    picked = sample_tokens(logits, self.temperature, generator)
                    x0 = torch.where(still_masked, picked, block)
                    if self.remasking == "low_confidence":
                        # softmax(logits)[x0] without materialising the softmax: exp(l_x0 - logsumexp(l))
                        chosen = logits.gather(-1, picked.unsqueeze(-1)).squeeze(-1).float()
                        confidence = torch.exp(chosen - torch.logsumexp(logits.float(), dim=-1))
                    else:
                        confidence = uniform(tuple(block.shape), generator, device)
                    confidence = confidence.masked_fill(~still_masked, float("-inf"))
                    commit = top_k_per_row(confidence, k) & still_masked
                    x[:, lo:hi] = torch.where(commit, x0, block)
                    decode_step[:, lo - prompt_length : hi - prompt_length][commit] = step
                step += 1
        return Rollout(x, prompt_length, decode_step, attn)


@samplers.register("random_remasking")
class RandomRemaskingSampler(LowConfidenceSampler):
    """LLaDA text sampler whose commit order inside a block is uniformly random."""

    def __init__(
        self,
        gen_length: int = 256,
        block_length: int = 16,
        steps: int = 128,
        temperature: float = 0.0,
        cfg_scale: float = 0.0,
    ):
        super().__init__(gen_length, block_length, steps, temperature, cfg_scale, remasking="random")
