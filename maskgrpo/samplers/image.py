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
from typing import Literal

import torch

from ..backbones.base import Backbone
from ..errors import MaskGRPOError
from ..registry import samplers
from ..utils import Generator
from .base import Rollout, all_mask_start, guided_logits, sample_tokens, top_k_per_row, uniform


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
        generator: Generator = None,
        attention_mask: torch.Tensor | None = None,
    ) -> Rollout:
        prompt_length, mask_id = prompt_tokens.shape[1], backbone.mask_token_id
        x, attn, decode_step = all_mask_start(prompt_tokens, attention_mask, self.gen_length, mask_id)
        for s in range(self.steps):
            masked = x[:, prompt_length:] == mask_id
            if not masked.any():
                break
            log_probs = self._log_probs(backbone, x, attn, prompt_length)
            codes = sample_tokens(log_probs, 1.0, generator)  # codebook indices; used where masked
            commit = self._choose(s, masked, log_probs, codes, generator) & masked
            image = x[:, prompt_length:]
            x[:, prompt_length:] = torch.where(commit, codes + self.codebook[0], image)
            decode_step[commit] = s
        return Rollout(x, prompt_length, decode_step, attn)

    def _choose(self, s: int, masked: torch.Tensor, log_probs: torch.Tensor, codes: torch.Tensor, generator: Generator) -> torch.Tensor:
        raise NotImplementedError


@samplers.register("maskgit")
class MaskGITSampler(_ImageSampler):
    """MaskGIT: sample every masked code, keep the most confident so that N k((s+1)/T) stay masked.

    Confidence is log p(sample) + tau_s * Gumbel on masked positions; committed positions are
    never re-masked. Two noise schedules, named apart:
    - `mmada` (default; the paper's baseline, MMaDA's `t2i_generate`): the temperature is
      multiplied by (1 - (s+1)/T) at every step before use, a running product
      tau_s = tau_0 prod_{i<=s} (1 - (i+1)/T), tau_0 = `choice_temperature` (1.0); the number
      kept masked is clamped to [1, masked - 1] before the last step, as MMaDA's mask_len is.
    - `google` (Google's MaskGIT `parallel_decode`): tau_s = tau_0 (1 - (s+1)/T), tau_0 = 4.5.
    The last step commits everything (MMaDA returns the last step's samples at every position).
    """

    DEFAULT_CHOICE_TEMPERATURE = {"mmada": 1.0, "google": 4.5}

    def __init__(
        self,
        image_tokens: int = 64,
        codebook_offset: int = 0,
        codebook_size: int = 512,
        steps: int = 12,
        cfg_scale: float = 0.0,
        temperature: float = 1.0,
        schedule: Literal["mmada", "google"] = "mmada",
        choice_temperature: float | None = None,
    ):
        super().__init__(image_tokens, codebook_offset, codebook_size, steps, cfg_scale, temperature)
        if choice_temperature is not None and choice_temperature < 0:
            raise MaskGRPOError("sampler.choice_temperature: must be >= 0")
        self.schedule = schedule
        self.choice_temperature = self.DEFAULT_CHOICE_TEMPERATURE[schedule] if choice_temperature is None else choice_temperature

    def noise_level(self, s: int) -> float:
        """tau_s, the Gumbel scale on the confidences at step s."""
        T = self.steps
        if self.schedule == "google":
            return self.choice_temperature * (1 - (s + 1) / T)
        return self.choice_temperature * math.prod(1 - (i + 1) / T for i in range(s + 1))

    def keep_masked(self, s: int, masked: torch.Tensor) -> torch.Tensor:
        """[B] how many positions stay masked after step s."""
        if s == self.steps - 1:
            return torch.zeros_like(masked)
        scheduled = math.floor(self.gen_length * cosine_masked_fraction((s + 1) / self.steps))
        if self.schedule == "mmada":
            return torch.clamp(torch.minimum(masked - 1, torch.full_like(masked, scheduled)), min=1)
        return torch.clamp(torch.full_like(masked, scheduled), max=masked - 1).clamp(min=0)

    def _choose(self, s, masked, log_probs, codes, generator):
        confidence = log_probs.gather(-1, codes.unsqueeze(-1)).squeeze(-1)
        tau = self.noise_level(s)
        if tau > 0:
            u = uniform(tuple(confidence.shape), generator, confidence.device).clamp_min(1e-20)
            confidence = confidence + tau * -torch.log(-torch.log(u))
        confidence = confidence.masked_fill(~masked, float("-inf"))
        return top_k_per_row(confidence, masked.sum(dim=1) - self.keep_masked(s, masked.sum(dim=1)))


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
