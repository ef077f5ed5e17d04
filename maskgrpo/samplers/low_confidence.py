"""LLaDA's semi-autoregressive text sampler with low-confidence (or random) remasking.

The completion starts all-mask and is decoded in blocks, left to right. Each block gets an equal
share of the steps; within a block the still-masked tokens are shared evenly over its remaining
steps, and each step commits the most confident predictions inside the block.

Fast rollouts (DESIGN.md section 10), following Fast-dLLM (NVlabs/Fast-dLLM, llada/generate.py:
`generate_with_prefix_cache`, `generate_with_dual_cache`, `get_transfer_index`):

- `cache: prefix`: at the first step of each block the whole sequence goes through the model
  (its logits serve that step, exactly as without a cache) and every layer's keys/values are
  kept; the block's later steps run only the columns from the block's start to the end (the
  current block and the masked suffix) against the cached keys/values of the prompt and the
  finished blocks. `cache: dual`: the suffix's keys/values are reused too and only the current
  block's columns are recomputed (Fast-dLLM's `replace_position`). The cache is refreshed at every
  block boundary. With bidirectional attention the cached keys/values are those of the block's
  first step, so later steps are an approximation that is exact at each block's first step.
  Unlike Fast-dLLM (one prompt, no padding), batches are left-padded: the cached forward gets the
  same attention mask over all columns and the same positions as the full pass, so a row's
  rollout does not depend on the other rows of its batch. Backbones need `hidden_kv`
  (backbones.base.KVCacheBackbone: the in-house transformer, native LLaDA).
- `threshold: tau`: confidence-threshold parallel decoding. Each step commits every masked token
  of the current block whose confidence exceeds tau, and always the most confident one (so at
  least one per step); a block ends when it has no mask left, so `steps` no longer applies (a
  block takes 1 to block_length forwards). The whole batch moves to the next block together; a
  row whose block is done waits without drawing random numbers, and its decode steps count only
  the steps in which it committed, so its rollout is the one it would have alone. Fast-dLLM keeps
  confidences >= tau; here > tau (the issue's wording; they differ only on ties).
- `decode_step` is recorded as without these options: the step that committed each position
  (with a threshold, the row's own step count), never re-masked, which is what `trace` replays.
- `Rollout.stats`: `forwards`, `forwards_per_block`, `tokens_per_step` (logged by the GRPO
  trainer as rollout/*): over-confidence (too many tokens per step) is the known failure of
  threshold decoding in online RL.

Approximate rollouts and the GRPO loss. The importance ratio rho = exp(logp_theta - logp_old) is
not computed from the sampler's probabilities: the estimator builds masked views of the finished
rollout, and the trainer computes the current, old and reference log-probs on exactly those
views with full (uncached) forwards. A rollout decoded with a KV cache or a threshold is therefore
just a sample from a slightly different behaviour policy; the loss on it is computed the same way
as on any other rollout, the ratio is exactly 1 before the first update (mu = 1), and no cached
quantity enters a gradient. What changes is the distribution of the samples (cached logits are
approximate; a threshold commits several tokens per step), which is why the cost and the
tokens committed per step are logged, and why accuracy against `cache: none` must be measured.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..backbones.base import KV, Backbone
from ..errors import MaskGRPOError
from ..registry import samplers
from ..utils import Generator, RowGenerators
from .base import Rollout, all_mask_start, guidance_batch, guide, guided_logits, sample_tokens, top_k_per_row, uniform

CacheMode = Literal["none", "prefix", "dual"]


def commit_schedule(masked: torch.Tensor, steps: int) -> torch.Tensor:
    """[B] masked counts -> [B, steps] tokens to commit per step: the count split evenly, the
    remainder going to the first steps (sums to `masked` exactly)."""
    base = masked // steps
    extra = masked % steps
    return base[:, None] + (torch.arange(steps, device=masked.device)[None, :] < extra[:, None]).long()


def threshold_commit(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """[B, n] confidences (-inf where nothing may be committed) -> the positions whose confidence
    exceeds `threshold`, plus each row's most confident one (at least one per row that has any)."""
    ones = torch.ones(confidence.shape[0], dtype=torch.long, device=confidence.device)
    return ((confidence > threshold) | top_k_per_row(confidence, ones)) & (confidence > float("-inf"))


class BlockForward:
    """The block logits of one rollout's steps, with or without the block KV cache; counts the
    forward passes. `new_block()` drops the cache, so the next call is a full pass again."""

    def __init__(self, backbone: Backbone, mode: CacheMode, cfg_scale: float, prompt_length: int, attn: torch.Tensor | None):
        if mode != "none" and not callable(getattr(backbone, "hidden_kv", None)):
            raise MaskGRPOError(f"sampler.cache: {mode!r} needs a backbone with a KV-cache forward (hidden_kv: the in-house transformer, llada); {type(backbone).__name__} has none, use cache: none")
        self.backbone, self.mode, self.cfg_scale, self.prompt_length, self.attn = backbone, mode, cfg_scale, prompt_length, attn
        self.cache: list[KV] | None = None
        self.count = 0

    def new_block(self) -> None:
        self.cache = None

    def __call__(self, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        self.count += 1
        bb = self.backbone
        if self.mode == "none":
            return guided_logits(bb, x, self.attn, self.prompt_length, lo, hi, self.cfg_scale)
        tokens, attn = (x, self.attn) if self.cfg_scale == 0 else guidance_batch(x, self.attn, self.prompt_length, bb.mask_token_id)
        if self.cache is None:  # the block's first step: the full pass, which fills the cache
            h, self.cache = bb.hidden_kv(tokens, attn)
            h = h[:, lo:hi]
        elif self.mode == "prefix":  # the current block and the suffix against the cached prefix
            h = bb.hidden_kv(tokens[:, lo:], attn, lo, self.cache)[0][:, : hi - lo]
        else:  # dual: the current block only, against the cached prefix and suffix
            h = bb.hidden_kv(tokens[:, lo:hi], attn, lo, self.cache)[0]
        logits = bb.logits_from_hidden(h)
        return logits if self.cfg_scale == 0 else guide(logits, self.cfg_scale)


def _rows_of(generator: Generator, rows: torch.Tensor, batch: int) -> Generator:
    """The generator for a subset of rows: with RowGenerators those rows' own generators, so a
    waiting row draws nothing; a single generator is shared anyway."""
    if isinstance(generator, RowGenerators) and len(rows) < batch:
        return RowGenerators([generator.generators[i] for i in rows.tolist()])
    return generator


@samplers.register("low_confidence")
class LowConfidenceSampler:
    """LLaDA text sampler: blocks left to right, commit the k most confident tokens per step;
    `cache: prefix | dual` reuses keys/values within a block, `threshold` commits every token
    above it (module docstring)."""

    def __init__(
        self,
        gen_length: int = 256,
        block_length: int = 16,
        steps: int = 128,
        temperature: float = 0.0,
        cfg_scale: float = 0.0,
        remasking: Literal["low_confidence", "random"] = "low_confidence",
        cache: CacheMode = "none",
        threshold: float | None = None,
    ):
        if gen_length <= 0 or block_length <= 0 or gen_length % block_length:
            raise MaskGRPOError(f"sampler.block_length: {block_length} must divide gen_length {gen_length}")
        blocks = gen_length // block_length
        if steps <= 0 or steps % blocks:
            raise MaskGRPOError(f"sampler.steps: {steps} must be a positive multiple of the {blocks} blocks")
        if temperature < 0:
            raise MaskGRPOError("sampler.temperature: must be >= 0")
        if cache not in ("none", "prefix", "dual"):
            raise MaskGRPOError(f"sampler.cache: must be none, prefix or dual, got {cache!r}")
        if threshold is not None:
            if isinstance(threshold, bool) or not 0 < float(threshold) <= 1:
                raise MaskGRPOError(f"sampler.threshold: must be in (0, 1] or null, got {threshold!r}")
            if remasking != "low_confidence":
                raise MaskGRPOError("sampler.threshold: needs remasking 'low_confidence' (a threshold on random scores means nothing)")
            threshold = float(threshold)
        self.gen_length, self.block_length, self.steps = gen_length, block_length, steps
        self.temperature, self.cfg_scale, self.remasking = temperature, cfg_scale, remasking
        self.cache, self.threshold = cache, threshold

    def _proposals(self, logits: torch.Tensor, block: torch.Tensor, mask_id: int, generator: Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x0, confidence, still_masked) for the block: a draw at every block position (so each
        row's draws are its own), kept where masked; confidence -inf where already committed."""
        logits[..., mask_id] = float("-inf")  # committing a mask would leave a hole
        still_masked = block == mask_id
        picked = sample_tokens(logits, self.temperature, generator)
        x0 = torch.where(still_masked, picked, block)
        if self.remasking == "low_confidence":
            # softmax(logits)[x0] without materialising the softmax: exp(l_x0 - logsumexp(l))
            chosen = logits.gather(-1, picked.unsqueeze(-1)).squeeze(-1).float()
            confidence = torch.exp(chosen - torch.logsumexp(logits.float(), dim=-1))
        else:
            confidence = uniform(tuple(block.shape), generator, block.device)
        return x0, confidence.masked_fill(~still_masked, float("-inf")), still_masked

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
        batch = x.shape[0]
        blocks = self.gen_length // self.block_length
        steps_per_block = self.steps // blocks
        forward = BlockForward(backbone, self.cache, self.cfg_scale, prompt_length, attn)
        row_steps = 0  # (row, step) pairs in which the row committed something
        row_step = torch.zeros(batch, dtype=torch.long, device=x.device)  # threshold: each row's own step count
        step = 0
        for b in range(blocks):
            lo = prompt_length + b * self.block_length
            hi = lo + self.block_length
            done = decode_step[:, lo - prompt_length : hi - prompt_length]  # a view
            forward.new_block()
            if self.threshold is None:
                counts = commit_schedule((x[:, lo:hi] == mask_id).sum(dim=1), steps_per_block)
                for s in range(steps_per_block):
                    k = counts[:, s]
                    if int(k.max()) > 0:  # a step that commits nothing needs no forward pass
                        block = x[:, lo:hi]
                        x0, confidence, still_masked = self._proposals(forward(x, lo, hi), block, mask_id, generator)
                        commit = top_k_per_row(confidence, k) & still_masked
                        x[:, lo:hi] = torch.where(commit, x0, block)
                        done[commit] = step
                        row_steps += int(commit.any(dim=1).sum())
                    step += 1
                continue
            while True:
                active = (x[:, lo:hi] == mask_id).any(dim=1).nonzero().squeeze(1)
                if len(active) == 0:
                    break
                logits = forward(x, lo, hi)[active]
                block = x[active, lo:hi]
                x0, confidence, still_masked = self._proposals(logits, block, mask_id, _rows_of(generator, active, batch))
                commit = threshold_commit(confidence, self.threshold) & still_masked
                x[active, lo:hi] = torch.where(commit, x0, block)
                rows_done = done[active]
                rows_done[commit] = row_step[active, None].expand_as(commit)[commit]
                done[active] = rows_done
                row_step[active] += 1
                row_steps += len(active)
        stats = {
            "forwards": float(forward.count),
            "forwards_per_block": forward.count / blocks,
            "tokens_per_step": batch * self.gen_length / max(row_steps, 1),
        }
        return Rollout(x, prompt_length, decode_step, attn, stats=stats)


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
        cache: CacheMode = "none",
    ):
        super().__init__(gen_length, block_length, steps, temperature, cfg_scale, remasking="random", cache=cache)
