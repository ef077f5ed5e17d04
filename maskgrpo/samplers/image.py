"""Image rollout samplers over VQ codes: MaskGIT (baseline) and emerge (MaskGRPO).

Both start from an all-mask grid of `image_tokens` codes after the prompt, restrict the logits to
the image codebook (`codebook_offset` .. `codebook_offset + codebook_size`, MMaDA-style: codes
live after the text vocabulary), and follow the cosine schedule k(tau) = cos(pi tau / 2), the
fraction of the grid still masked at time tau. They differ in who decides what to reveal:
MaskGIT keeps a fixed number of the most confident samples per step; emerge reveals each masked
token independently with the MDLM reverse-step probability, so per-step counts are binomial and
rollouts are more diverse. Neither ever re-masks a committed token.
"""

from __future__ import annotations

import math

import torch

from ..backbones.base import Backbone
from ..errors import MaskGRPOError
from ..registry import samplers
from .base import Rollout, all_mask_start, guided_logits, sample_tokens, uniform


def cosine_masked_fraction(t: float) -> float:
    """k(t) = cos(pi t / 2): 1 at t = 0 (all masked), 0 at t = 1."""
    return math.cos(math.pi * t / 2)


class _ImageSampler:
    def __init__(
        self,
        image_tokens: int = 64,
        codebook_offset: int = 0,
        codebook_size: int = 512,
        steps: int = 12,
        cfg_scale: float = 0.0,
        temperature: float = 1.0,
    ):
        if image_tokens <= 0 or codebook_size <= 0 or codebook_offset < 0:
            raise MaskGRPOError("sampler: image_tokens and codebook_size must be positive, codebook_offset >= 0")
        if steps <= 0:
            raise MaskGRPOError("sampler.steps: must be positive")
        if temperature <= 0:
            raise MaskGRPOError("sampler.temperature: must be > 0 (image samplers always sample)")
        self.gen_length = image_tokens
        self.codebook = (codebook_offset, codebook_offset + codebook_size)
        self.steps, self.cfg_scale, self.temperature = steps, cfg_scale, temperature

    def _log_probs(self, backbone: Backbone, x: torch.Tensor, attn: torch.Tensor | None, prompt_length: int) -> torch.Tensor:
        """log pi over the codebook at every image position, with classifier-free guidance."""
        lo, hi = self.codebook
        logits = guided_logits(backbone, x, attn, prompt_length, prompt_length, None, self.cfg_scale)[..., lo:hi]
        return torch.log_softmax(logits.float() / self.temperature, dim=-1)

    @torch.no_grad()
    def sample(
        self,
        backbone: Backbone,
        prompt_tokens: torch.Tensor,
        generator: torch.Generator | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> Rollout:
        prompt_length, mask_id = prompt_tokens.shape[1], backbone.mask_token_id
        x, attn, decode_step = all_mask_start(prompt_tokens, attention_mask, self.gen_length, mask_id)
        for s in range(self.steps):
            masked = x[:, prompt_length:] == mask_id
            if not masked.any():
                break
            log_probs = self._log_probs(backbone, x, attn, prompt_length)
            codes = torch.zeros_like(masked, dtype=torch.long)  # codebook indices, drawn where masked
            codes[masked] = sample_tokens(log_probs[masked], 1.0, generator)
            commit = self._choose(s, masked, log_probs, codes, generator) & masked
            image = x[:, prompt_length:]
            x[:, prompt_length:] = torch.where(commit, codes + self.codebook[0], image)
            decode_step[commit] = s
        return Rollout(x, prompt_length, decode_step, attn)

    def _choose(self, s: int, masked: torch.Tensor, log_probs: torch.Tensor, codes: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError


@samplers.register("maskgit")
class MaskGITSampler(_ImageSampler):
    """MaskGIT: sample every masked code, keep the most confident so that N k((s+1)/T) stay masked."""

    def __init__(
        self,
        image_tokens: int = 64,
        codebook_offset: int = 0,
        codebook_size: int = 512,
        steps: int = 12,
        cfg_scale: float = 0.0,
        temperature: float = 1.0,
        confidence_noise: float = 4.5,
    ):
        super().__init__(image_tokens, codebook_offset, codebook_size, steps, cfg_scale, temperature)
        self.confidence_noise = confidence_noise

    def _choose(self, s, masked, log_probs, codes, generator):
        n = self.gen_length
        keep_masked = 0 if s == self.steps - 1 else math.floor(n * cosine_masked_fraction((s + 1) / self.steps))
        to_commit = (masked.sum(dim=1) - keep_masked).clamp(min=1)
        confidence = log_probs.gather(-1, codes.unsqueeze(-1)).squeeze(-1)
        anneal = self.confidence_noise * (1 - s / self.steps)
        if anneal > 0:
            u = uniform(tuple(confidence.shape), generator, confidence.device).clamp_min(1e-20)
            confidence = confidence + anneal * -torch.log(-torch.log(u))
        confidence = confidence.masked_fill(~masked, float("-inf"))
        order = torch.argsort(confidence, dim=1, descending=True, stable=True)
        ranks = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand_as(order))
        return ranks < to_commit[:, None]


@samplers.register("emerge")
class EmergeSampler(_ImageSampler):
    """MaskGRPO's emerge sampler: each masked code unmasks with probability (k_t - k_s)/k_t."""

    def unmask_probability(self, s: int) -> float:
        if s == self.steps - 1:
            return 1.0
        now, after = cosine_masked_fraction(s / self.steps), cosine_masked_fraction((s + 1) / self.steps)
        return (now - after) / now

    def _choose(self, s, masked, log_probs, codes, generator):
        return uniform(tuple(masked.shape), generator, masked.device) < self.unmask_probability(s)
