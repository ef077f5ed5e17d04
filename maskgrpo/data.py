"""Turning text into the fixed-shape tensors that masked-diffusion models consume."""

from __future__ import annotations

import torch

from .errors import MaskGRPOError
from .tokenizers.base import TextTokenizer


def encode_prompts(
    tokenizer: TextTokenizer, prompts: list[str], device: torch.device | str = "cpu", length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts to a common length (the completion then starts at one column for the
    whole batch). Returns ids [B, P] and attention mask [B, P] (False on padding)."""
    encoded = [tokenizer.encode(tokenizer.format_prompt(p)) for p in prompts]
    width = max(len(e) for e in encoded) if length is None else length
    if any(len(e) > width for e in encoded):
        raise MaskGRPOError(f"a prompt is longer than the prompt length {width}")
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(prompts), width), dtype=torch.bool)
    for i, e in enumerate(encoded):
        if e:
            ids[i, width - len(e) :] = torch.tensor(e, dtype=torch.long)
            attn[i, width - len(e) :] = True
    return ids.to(device), attn.to(device)


def encode_completions(
    tokenizer: TextTokenizer, targets: list[str], gen_length: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Completion targets padded with EOS to `gen_length`, as LLaDA's SFT does: the model learns
    to end an answer by filling the rest with EOS."""
    out = torch.full((len(targets), gen_length), tokenizer.eos_token_id, dtype=torch.long)
    for i, t in enumerate(targets):
        ids = tokenizer.encode(t)
        if len(ids) > gen_length:
            raise MaskGRPOError(f"target {t!r} has {len(ids)} tokens, more than gen_length {gen_length}")
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out.to(device)
