"""The backbone (mask predictor) contract."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Backbone(Protocol):
    """Predicts the original token at every position in one pass.

    `hidden` and `logits_from_hidden` are split so that estimators project to the vocabulary only
    at the positions a loss needs: at a 32k-126k vocabulary that is most of the memory.
    """

    mask_token_id: int
    vocab_size: int

    def __call__(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def hidden(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor: ...


class TokenScorer(torch.nn.Module):
    """`token_logprobs` as a module: DDP, FSDP and DeepSpeed wrap what the loss differentiates
    (calling `backbone.hidden` directly would bypass their hooks)."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(
        self, inputs: torch.Tensor, targets: torch.Tensor, select: torch.Tensor, attention_mask: torch.Tensor | None = None, entropy: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return token_logprobs(self.backbone, inputs, targets, select, attention_mask, entropy)


def token_logprobs(
    backbone: Backbone,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    select: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log p(targets) at the `select`ed positions only, as a flat vector in row-major order;
    with `entropy`, also the entropy of the predicted distribution at each of them (the
    training-health signal: a policy collapsing onto few tokens shows it first).

    The vocabulary projection and log-softmax run on the selected rows, so peak memory is
    |select| x V instead of B x L x V.
    """
    h = backbone.hidden(inputs, attention_mask)
    rows = h[select]
    logits = backbone.logits_from_hidden(rows).float()
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, targets[select].unsqueeze(-1)).squeeze(-1)
    if not entropy:
        return logp
    return logp, -(logp_all.exp() * logp_all).sum(-1)


KV = tuple[torch.Tensor, torch.Tensor]  # one layer's (keys, values), [B, heads, L, head_dim]


@runtime_checkable
class KVCacheBackbone(Protocol):
    """A backbone with a forward over a slice of columns against cached keys/values (the block
    KV cache of the text sampler, `sampler.cache`).

    `hidden_kv(tokens, attention_mask, start, cache)`: without `cache`, `tokens` is the whole
    sequence [B, L] and the result is (hidden [B, L, d], each layer's (keys, values) over all L
    columns): the same hidden states as `hidden`. With `cache` (per-layer (keys, values) over
    all L columns, from an earlier call), `tokens` [B, n] are the columns start:start+n; each
    layer attends (bidirectionally) to the cached keys/values with those n columns replaced by
    freshly computed ones, and the result is (hidden of the n columns, each layer's spliced
    (keys, values) over all L columns). Positions are those of the same columns in the full
    sequence, and `attention_mask` [B, L] always covers all L columns (keys), so padding is
    treated exactly as in the uncached forward."""

    def hidden_kv(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None, start: int = 0, cache: list[KV] | None = None
    ) -> tuple[torch.Tensor, list[KV]]: ...
