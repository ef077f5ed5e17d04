"""The text-tokenizer contract every sampler, task and reward relies on."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class TextTokenizer(Protocol):
    """Text <-> ids. `mask_token_id` is what the diffusion model fills in; `eos_token_id` pads a
    finished completion (LLaDA fills the rest of the answer with EOS); `pad_token_id` left-pads
    prompts in a batch."""

    mask_token_id: int
    pad_token_id: int
    eos_token_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def format_prompt(self, prompt: str) -> str: ...

    def save_pretrained(self, path: str) -> None: ...


def decode_completion(tokenizer: TextTokenizer, ids: list[int]) -> str:
    """Decode a completion up to its first EOS (what follows is padding), dropping masks."""
    out: list[int] = []
    for i in ids:
        if i == tokenizer.eos_token_id:
            break
        if i in (tokenizer.mask_token_id, tokenizer.pad_token_id):
            continue
        out.append(i)
    return tokenizer.decode(out)
