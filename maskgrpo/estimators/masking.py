"""Log-likelihood estimators: how the masked input of inner iteration j is made from a rollout.

A masked-diffusion model has no exact per-token likelihood; each estimator picks which
completion tokens to hide in iteration j and which of them the loss scores. The trainer then
evaluates the current, old and reference policies on exactly that masked input.

Masks are drawn from generators seeded by (rollout batch seed, j), never from global RNG state:
reseeding the global RNG (as the paper's code does) would also reset the sampler's noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import MaskGRPOError
from ..registry import estimators
from ..samplers.base import Rollout
from ..utils import make_generator


@dataclass
class MaskedView:
    """The model input for one inner iteration and which completion positions the loss scores."""

    tokens: torch.Tensor  # [B, P + L] with mask tokens substituted
    loss_mask: torch.Tensor  # [B, P + L] bool; True only at scored completion positions
    attention_mask: torch.Tensor | None = None
    weight: torch.Tensor | None = None  # [B] per-sequence weight (ELBO's 1/t); None = 1


class Estimator:
    """Base: subclasses implement `completion_mask` (which completion tokens to hide)."""

    def masked_view(self, rollout: Rollout, j: int, num_iterations: int, batch_seed: int, mask_token_id: int) -> MaskedView:
        if not 0 <= j < num_iterations:
            raise ValueError(f"iteration {j} outside [0, {num_iterations})")
        completion = rollout.completion
        gen = make_generator(batch_seed, j)
        hide, scored = self.completion_mask(rollout, j, num_iterations, gen, batch_seed)
        tokens = rollout.tokens.clone()
        tokens[:, rollout.prompt_length :] = completion.masked_fill(hide, mask_token_id)
        tokens[:, : rollout.prompt_length] = self.prompt_input(rollout, gen, mask_token_id)
        loss_mask = torch.zeros_like(tokens, dtype=torch.bool)
        loss_mask[:, rollout.prompt_length :] = scored
        return MaskedView(tokens, loss_mask, rollout.attention_mask, self.sequence_weight(rollout, j, num_iterations, batch_seed))

    def completion_mask(
        self, rollout: Rollout, j: int, num_iterations: int, gen: torch.Generator, batch_seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden [B, L], scored [B, L]); by default the loss scores what is hidden."""
        raise NotImplementedError

    def prompt_input(self, rollout: Rollout, gen: torch.Generator, mask_token_id: int) -> torch.Tensor:
        return rollout.tokens[:, : rollout.prompt_length]  # the prompt is never masked unless stated

    def sequence_weight(self, rollout: Rollout, j: int, num_iterations: int, batch_seed: int) -> torch.Tensor | None:
        return None


def _uniform(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=gen.device).to(device)


def truncated_rate(j: int, num_iterations: int, min_mask_rate: float) -> float:
    """r_j = min(gamma + (1 - gamma)(j + 1)/mu, 0.999): every rate in (gamma, 1) used once per batch."""
    return min(min_mask_rate + (1 - min_mask_rate) * (j + 1) / num_iterations, 0.999)


def fading_out_keep_probability(length: int, rate: float, device: torch.device | None = None) -> torch.Tensor:
    """keep_n = min(1, d_n (1 - r) L / sum(d)) with d = linspace(1, 0, L): early tokens are kept
    more often, late ones masked more often (AR-like), and the mean mask rate is r."""
    d = torch.linspace(1, 0, length, device=device, dtype=torch.float64)
    if length == 1:
        d = torch.ones(1, device=device, dtype=torch.float64)
    return (d * (1 - rate) * length / d.sum()).clamp(max=1.0).float()


class _TruncatedSchedule(Estimator):
    """Rates r_j from `min_mask_rate` (gamma) towards 1, each used once per rollout batch."""

    def __init__(self, min_mask_rate: float):
        if not 0 <= min_mask_rate < 1:
            raise MaskGRPOError("estimator.min_mask_rate: must be in [0, 1)")
        self.min_mask_rate = min_mask_rate


@estimators.register("fading_out")
class FadingOutEstimator(_TruncatedSchedule):
    """MaskGRPO (text): truncated rate schedule, masking probability rising with position."""

    def __init__(self, min_mask_rate: float = 0.6):
        super().__init__(min_mask_rate)

    def completion_mask(self, rollout, j, num_iterations, gen, batch_seed):
        completion = rollout.completion
        rate = truncated_rate(j, num_iterations, self.min_mask_rate)
        keep = fading_out_keep_probability(completion.shape[1], rate, completion.device)
        hide = _uniform(tuple(completion.shape), gen, completion.device) > keep
        return hide, hide


@estimators.register("random")
class RandomEstimator(_TruncatedSchedule):
    """MaskGRPO (images): truncated rate schedule, uniform masking at rate r_j."""

    def __init__(self, min_mask_rate: float = 0.8):
        super().__init__(min_mask_rate)

    def completion_mask(self, rollout, j, num_iterations, gen, batch_seed):
        completion = rollout.completion
        rate = truncated_rate(j, num_iterations, self.min_mask_rate)
        hide = _uniform(tuple(completion.shape), gen, completion.device) < rate
        return hide, hide


@estimators.register("unigrpo")
class UniGRPOEstimator(Estimator):
    """MMaDA's UniGRPO: t_1 ~ U(0,1) per response, rising linearly to 1 over the iterations."""

    def rates(self, rollout: Rollout, j: int, num_iterations: int, batch_seed: int) -> torch.Tensor:
        completion = rollout.completion
        t1 = _uniform((completion.shape[0], 1), make_generator(batch_seed, -1), completion.device)  # same t_1 for every j
        return t1 + (1 - t1) * (j / max(num_iterations - 1, 1))

    def completion_mask(self, rollout, j, num_iterations, gen, batch_seed):
        completion = rollout.completion
        rate = self.rates(rollout, j, num_iterations, batch_seed)
        hide = _uniform(tuple(completion.shape), gen, completion.device) < rate
        return hide, hide


@estimators.register("d1")
class D1Estimator(Estimator):
    """diffu-GRPO (d1): completion fully masked, prompt tokens masked with p_mask_prompt."""

    def __init__(self, p_mask_prompt: float = 0.15):
        if not 0 <= p_mask_prompt <= 1:
            raise MaskGRPOError("estimator.p_mask_prompt: must be in [0, 1]")
        self.p_mask_prompt = p_mask_prompt

    def completion_mask(self, rollout, j, num_iterations, gen, batch_seed):
        hide = torch.ones_like(rollout.completion, dtype=torch.bool)
        return hide, hide

    def prompt_input(self, rollout, gen, mask_token_id):
        prompt = rollout.tokens[:, : rollout.prompt_length]
        real = torch.ones_like(prompt, dtype=torch.bool)
        if rollout.attention_mask is not None:
            real = rollout.attention_mask[:, : rollout.prompt_length].bool()
        drop = (_uniform(tuple(prompt.shape), gen, prompt.device) < self.p_mask_prompt) & real
        return prompt.masked_fill(drop, mask_token_id)


@estimators.register("trace")
class TraceEstimator(Estimator):
    """TraceRL-style: replay the decode order. Iteration j takes step group s = j mod groups
    (steps merged by `shrink`; default: the trajectory split into mu groups), masks every token
    committed at a step >= s and scores those committed in group s."""

    def __init__(self, shrink: int | None = None):
        if shrink is not None and shrink < 1:
            raise MaskGRPOError("estimator.shrink: must be >= 1")
        self.shrink = shrink

    def completion_mask(self, rollout, j, num_iterations, gen, batch_seed):
        step = rollout.decode_step
        if (step < 0).any():
            raise MaskGRPOError("estimator 'trace': the rollout has undecoded positions (decode_step < 0)")
        total = int(step.max()) + 1
        shrink = self.shrink or math.ceil(total / num_iterations)
        group = step // shrink
        n_groups = int(group.max()) + 1
        s = j % n_groups
        return group >= s, group == s


@estimators.register("elbo")
class ELBOEstimator(Estimator):
    """LLaDA's Monte-Carlo ELBO (for measuring the other estimators, not for training): t
    stratified over the iterations, uniform masking at t, sequence weight 1/t."""

    def _t(self, rollout: Rollout, j: int, num_iterations: int, batch_seed: int) -> torch.Tensor:
        u = _uniform((rollout.tokens.shape[0],), make_generator(batch_seed, -2, j), rollout.tokens.device)
        return ((j + u) / num_iterations).clamp(min=1e-3)

    def completion_mask(self, rollout, j, num_iterations, gen, batch_seed):
        t = self._t(rollout, j, num_iterations, batch_seed)[:, None]
        hide = _uniform(tuple(rollout.completion.shape), gen, rollout.tokens.device) < t
        return hide, hide

    def sequence_weight(self, rollout, j, num_iterations, batch_seed):
        return 1.0 / self._t(rollout, j, num_iterations, batch_seed)
