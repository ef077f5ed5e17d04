"""Character-level tokenizer for the small synthetic worlds: tiny vocabulary, no training."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import MaskGRPOError
from ..registry import tokenizers
from ..utils import atomic_write_text

SPECIALS = ("<pad>", "<mask>", "<eos>", "<unk>")
ARITHMETIC_ALPHABET = "0123456789+-*=?# "


@tokenizers.register("char")
class CharTokenizer:
    """One id per character; ids 0-3 are <pad>, <mask>, <eos>, <unk>. Build from an alphabet or
    load from a folder holding `char_tokenizer.json` (`path`)."""

    FILE = "char_tokenizer.json"

    def __init__(self, alphabet: str = ARITHMETIC_ALPHABET, path: str | None = None):
        if path is not None:
            file = Path(path) / self.FILE
            if not file.is_file():
                raise MaskGRPOError(f"tokenizer: {file} not found")
            try:
                alphabet = json.loads(file.read_text())["alphabet"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise MaskGRPOError(f"tokenizer: {file} is not a saved tokenizer (JSON with 'alphabet')") from None
        if len(set(alphabet)) != len(alphabet):
            raise MaskGRPOError("tokenizer.alphabet: characters must be unique")
        self.alphabet = alphabet
        self.pad_token_id, self.mask_token_id, self.eos_token_id, self.unk_token_id = range(4)
        self._ids = {c: i + len(SPECIALS) for i, c in enumerate(alphabet)}
        self.vocab_size = len(SPECIALS) + len(alphabet)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(c, self.unk_token_id) for c in text]

    def decode(self, ids: list[int]) -> str:
        n = len(SPECIALS)
        return "".join(self.alphabet[i - n] if i >= n else ("" if i != self.unk_token_id else "?") for i in ids)

    def format_prompt(self, prompt: str) -> str:
        return prompt

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(path) / self.FILE, json.dumps({"alphabet": self.alphabet}))
