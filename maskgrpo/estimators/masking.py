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
from typing import Literal

import torch

from ..errors import MaskGRPOError
from ..registry import estimators
from ..samplers.base import Rollout
from ..utils import Generator, RowGenerators, draw_uniform, make_generator


@dataclass
class MaskedView:
    """The model input for one inner iteration and which completion positions the loss scores.

    Usually one row per rollout row. An estimator that scores several masked inputs per
    iteration (`trace` replays every step group) stacks them: `rows[i]` is the rollout row that
    view row i was made from, so targets and advantages are `rollout_tensor[rows]`.
    """

    tokens: torch.Tensor  # [R, P + L] with mask tokens substituted
    loss_mask: torch.Tensor  # [R, P + L] bool; True only at scored completion positions
    attention_mask: torch.Tensor | None = None
    weight: torch.Tensor | None = None  # [R] per-sequence weight (ELBO's 1/t); None = 1
    rows: torch.Tensor | None = None  # [R] rollout row of each view row; None = identity

    def of_rollout(self, x: torch.Tensor) -> torch.Tensor:
        """A per-rollout-row tensor ([B, ...]) aligned with this view's rows."""
        return x if self.rows is None else x[self.rows]


def up_to_first_eos(completion: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """[B, L] bool: positions up to and including each row's first EOS (all if it has none);
    d1's completion mask."""
    is_eos = completion == eos_token_id
    first = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), completion.shape[1])
    return torch.arange(completion.shape[1], device=completion.device)[None, :] <= first[:, None]


class Estimator:
    """Base: subclasses implement `completion_mask` (which completion tokens to hide).

    `stop_at_eos`: score only the completion up to and including its first EOS, as d1 does; the
    MaskGRPO estimators score every masked position, EOS padding included, as the paper's code
    does. An option on every estimator, so an ablation can hold it equal.
    """

    stop_at_eos: bool = False

    def masked_view(
        self, rollout: Rollout, j: int, num_iterations: int, batch_seed: int, mask_token_id: int, eos_token_id: int | None = None
    ) -> MaskedView:
        if not 0 <= j < num_iterations:
            raise ValueError(f"iteration {j} outside [0, {num_iterations})")
        if self.stop_at_eos and eos_token_id is None:
            raise MaskGRPOError("estimator.stop_at_eos: needs a tokenizer with an EOS token")
        completion = rollout.completion
        gen = rng(rollout, batch_seed, j)
        parts = self.completion_masks(rollout, j, num_iterations, gen, batch_seed)
        views = []
        for hide, scored in parts:
            if self.stop_at_eos:
                scored = scored & up_to_first_eos(completion, eos_token_id)
            tokens = rollout.tokens.clone()
            tokens[:, rollout.prompt_length :] = completion.masked_fill(hide, mask_token_id)
            tokens[:, : rollout.prompt_length] = self.prompt_input(rollout, gen, mask_token_id)
            loss_mask = torch.zeros_like(tokens, dtype=torch.bool)
            loss_mask[:, rollout.prompt_length :] = scored
            views.append((tokens, loss_mask))
        weight = self.sequence_weight(rollout, j, num_iterations, batch_seed)
        if len(views) == 1:
            return MaskedView(views[0][0], views[0][1], rollout.attention_mask, weight)
        n, batch = len(views), completion.shape[0]
        rows = torch.arange(batch, device=completion.device).repeat(n)
        attn = None if rollout.attention_mask is None else rollout.attention_mask.repeat(n, 1)
        return MaskedView(
            torch.cat([t for t, _ in views]), torch.cat([m for _, m in views]), attn, None if weight is None else weight.repeat(n), rows
        )

    def completion_masks(
        self, rollout: Rollout, j: int, num_iterations: int, gen: Generator, batch_seed: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (hidden, scored) pairs of iteration j, one masked input each; by default one."""
        return [self.completion_mask(rollout, j, num_iterations, gen, batch_seed)]

    def completion_mask(
        self, rollout: Rollout, j: int, num_iterations: int, gen: Generator, batch_seed: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden [B, L], scored [B, L]); by default the loss scores what is hidden."""
        raise NotImplementedError

    def prompt_input(self, rollout: Rollout, gen: Generator, mask_token_id: int) -> torch.Tensor:
        return rollout.tokens[:, : rollout.prompt_length]  # the prompt is never masked unless stated

    def sequence_weight(self, rollout: Rollout, j: int, num_iterations: int, batch_seed: int) -> torch.Tensor | None:
        return None


def rng(rollout: Rollout, batch_seed: int, *keys: int) -> Generator:
    """The generator for the draws keyed by (batch seed, *keys): one per row when the rollout
    knows its global row ids (batch- and process-count-invariant masks), else one for the batch."""
    if rollout.row_ids is not None:
        return RowGenerators.seeded(batch_seed, *keys, rows=rollout.row_ids)
    return make_generator(batch_seed, *keys)


def _uniform(shape: tuple[int, ...], gen: Generator, device: torch.device) -> torch.Tensor:
    return draw_uniform(shape, gen, device)


def truncated_rate(j: int, num_iterations: int, min_mask_rate: float) -> float:
    """r_j = min(gamma + (1 - gamma)(j + 1)/mu, 0.999): every rate in (gamma, 1) used once per batch."""
    return min(min_mask_rate + (1 - min_mask_rate) * (j + 1) / num_iterations, 0.999)


def fading_out_keep_probability(length: int, rate: float, device: torch.device | None = None) -> torch.Tensor:
    """keep_n = min(1, d_n (1 - r) L / sum(d)) with d = linspace(1, 0, L): early tokens are kept
    more often, late ones masked more often (AR-like).

    sum(d) = L / 2, so keep_n = min(1, 2 (1 - r) d_n). The mean mask rate is exactly r only for
    r >= 0.5; below that the clamp binds: every position with d_n >= 1 / (2 (1 - r)) is never
    masked, and the mean rate is about 1 / (4 (1 - r)) (r = 0.083: 0.27, with 45% of positions
    never masked). `fading_out_mean_mask_rate` gives the exact value.
    """
    d = torch.linspace(1, 0, length, device=device, dtype=torch.float64)
    if length == 1:
        d = torch.ones(1, device=device, dtype=torch.float64)
    return (d * (1 - rate) * length / d.sum()).clamp(max=1.0).float()


def fading_out_mean_mask_rate(length: int, rate: float) -> float:
    """The mean fraction of a completion that fading-out masks at nominal rate r (r if r >= 0.5)."""
    return 1.0 - fading_out_keep_probability(length, rate).double().mean().item()


class _TruncatedSchedule(Estimator):
    """Rates r_j from `min_mask_rate` (gamma) towards 1, each used once per rollout batch."""

    def __init__(self, min_mask_rate: float, stop_at_eos: bool = False):
        if not 0 <= min_mask_rate < 1:
            raise MaskGRPOError("estimator.min_mask_rate: must be in [0, 1)")
        self.min_mask_rate, self.stop_at_eos = min_mask_rate, stop_at_eos


@estimators.register("fading_out")
class FadingOutEstimator(_TruncatedSchedule):
    """MaskGRPO (text): truncated rate schedule, masking probability rising with position.
    Follows the MaskGRPO trainer: every masked position is scored, EOS padding included."""

    def __init__(self, min_mask_rate: float = 0.6, stop_at_eos: bool = False):
        super().__init__(min_mask_rate, stop_at_eos)

    def completion_mask(self, rollout, j, num_iterations, gen, batch_seed):
        completion = rollout.completion
        rate = truncated_rate(j, num_iterations, self.min_mask_rate)
        keep = fading_out_keep_probability(completion.shape[1], rate, completion.device)
        hide = _uniform(tuple(completion.shape), gen, completion.device) > keep
        return hide, hide


@estimators.register("random")
class RandomEstimator(_TruncatedSchedule):
    """MaskGRPO (images): truncated rate schedule, uniform masking at rate r_j."""

    def __init__(self, min_mask_rate: float = 0.8, stop_at_eos: bool = False):
        super().__init__(min_mask_rate, stop_at_eos)

    def completion_mask(self, rollout, j, num_iterations, gen, batch_seed):
        completion = rollout.completion
        rate = truncated_rate(j, num_iterations, self.min_mask_rate)
        hide = _uniform(tuple(completion.shape), gen, completion.device) < rate
        return hide, hide


@estimators.register("unigrpo")
class UniGRPOEstimator(Estimator):
    """MMaDA's UniGRPO: t_1 ~ U(0,1) per response, rising linearly to 1 over the iterations."""

    def __init__(self, stop_at_eos: bool = False):
        self.stop_at_eos = stop_at_eos

    def rates(self, rollout: Rollout, j: int, num_iterations: int, batch_seed: int) -> torch.Tensor:
        completion = rollout.completion
        t1 = _uniform((completion.shape[0], 1), rng(rollout, batch_seed, -1), completion.device)  # same t_1 for every j
        return t1 + (1 - t1) * (j / max(num_iterations - 1, 1))

    def completion_mask(self, rollout, j, num_iterations, gen, batch_seed):
        completion = rollout.completion
        rate = self.rates(rollout, j, num_iterations, batch_seed)
        hide = _uniform(tuple(completion.shape), gen, completion.device) < rate
        return hide, hide


@estimators.register("d1")
class D1Estimator(Estimator):
    """diffu-GRPO (d1's diffu_grpo_trainer): completion fully masked, prompt tokens masked with
    p_mask_prompt, a new mask per iteration; like d1, the loss stops at each completion's first
    EOS (that token included) unless `stop_at_eos: false`."""

    def __init__(self, p_mask_prompt: float = 0.15, stop_at_eos: bool = True):
        if not 0 <= p_mask_prompt <= 1:
            raise MaskGRPOError("estimator.p_mask_prompt: must be in [0, 1]")
        self.p_mask_prompt, self.stop_at_eos = p_mask_prompt, stop_at_eos

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
    """TraceRL-style (dLLM-RL): replay the decode order. Steps are merged into groups of `shrink`
    (default: the trajectory split into mu groups); the masked input for group g hides every
    token committed in a group >= g and scores those committed in g.

    `schedule: all` (TraceRL): every inner iteration scores every group, one masked input per
    group stacked along the batch, so each pass covers the whole trajectory (n_groups times the
    rows of the other estimators). `schedule: cycle`: iteration j scores the groups g with
    g = j (mod mu), a partition of the groups over the mu iterations, so every token is still
    scored once per rollout batch at the cost of the other estimators when n_groups <= mu.
    """

    def __init__(self, shrink: int | None = None, schedule: Literal["all", "cycle"] = "all", stop_at_eos: bool = False):
        if shrink is not None and shrink < 1:
            raise MaskGRPOError("estimator.shrink: must be >= 1")
        self.shrink, self.schedule, self.stop_at_eos = shrink, schedule, stop_at_eos

    def step_groups(self, rollout: Rollout, num_iterations: int) -> torch.Tensor:
        """[B, L] the step group of every completion token."""
        step = rollout.decode_step
        if (step < 0).any():
            raise MaskGRPOError("estimator 'trace': the rollout has undecoded positions (decode_step < 0)")
        shrink = self.shrink or math.ceil((int(step.max()) + 1) / num_iterations)
        return step // shrink

    def completion_masks(self, rollout, j, num_iterations, gen, batch_seed):
        group = self.step_groups(rollout, num_iterations)
        n_groups = int(group.max()) + 1
        if self.schedule == "all":
            chosen = range(n_groups)
        else:  # groups j, j + mu, j + 2 mu, ...; with fewer groups than iterations, j mod n_groups
            chosen = range(j, n_groups, num_iterations) if n_groups > num_iterations else [j % n_groups]
        return [(group >= g, group == g) for g in chosen]


@estimators.register("elbo")
class ELBOEstimator(Estimator):
    """LLaDA's Monte-Carlo ELBO (for measuring the other estimators, not for training): t
    stratified over the iterations, uniform masking at t, sequence weight 1/t."""

    def _t(self, rollout: Rollout, j: int, num_iterations: int, batch_seed: int) -> torch.Tensor:
        u = _uniform((rollout.tokens.shape[0],), rng(rollout, batch_seed, -2, j), rollout.tokens.device)
        return ((j + u) / num_iterations).clamp(min=1e-3)

    def completion_mask(self, rollout, j, num_iterations, gen, batch_seed):
        t = self._t(rollout, j, num_iterations, batch_seed)[:, None]
        hide = _uniform(tuple(rollout.completion.shape), gen, rollout.tokens.device) < t
        return hide, hide

    def sequence_weight(self, rollout, j, num_iterations, batch_seed):
        return 1.0 / self._t(rollout, j, num_iterations, batch_seed)
