"""Adapter over any `transformers` tokenizer (LLaDA's, or a small one saved to a folder)."""

from __future__ import annotations

import os

from ..errors import MaskGRPOError
from ..registry import tokenizers


@tokenizers.register("hf")
class HFTokenizer:
    """transformers AutoTokenizer; special ids from the preset when the tokenizer lacks them;
    `chat_template: true` wraps prompts in the model's chat template (instruct models)."""

    def __init__(
        self,
        path: str,
        mask_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        chat_template: bool = False,
        trust_remote_code: bool = False,
    ):
        from transformers import AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as err:
            raise MaskGRPOError(f"tokenizer.path: cannot load '{path}': {str(err).splitlines()[0]}") from None

        def pick(given: int | None, attr: str, field: str) -> int:
            value = given if given is not None else getattr(self.tok, attr, None)
            if value is None:
                raise MaskGRPOError(f"tokenizer.{field}: the tokenizer has none; set it in the preset")
            return int(value)

        self.mask_token_id = pick(mask_token_id, "mask_token_id", "mask_token_id")
        self.eos_token_id = pick(eos_token_id, "eos_token_id", "eos_token_id")
        self.pad_token_id = pad_token_id if pad_token_id is not None else (self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos_token_id)
        self.vocab_size = len(self.tok)
        self.chat_template = chat_template
        if chat_template and not getattr(self.tok, "chat_template", None):
            raise MaskGRPOError(f"tokenizer.chat_template: '{path}' has no chat template")

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def format_prompt(self, prompt: str) -> str:
        if not self.chat_template:
            return prompt
        return self.tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        self.tok.save_pretrained(path)
