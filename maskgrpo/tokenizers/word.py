"""Word-level tokenizer: one id per word of a fixed list. By default the list is the shapes
world's 29 prompt words (`maskgrpo.worlds.shapes.vocabulary.WORDS`; at most 10 per prompt)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import MaskGRPOError
from ..registry import tokenizers
from ..utils import atomic_write_text
from .char import SPECIALS


@tokenizers.register("word")
class WordTokenizer:
    """One id per whitespace-separated, lower-cased word; ids 0-3 are <pad>, <mask>, <eos>, <unk>.
    Build from a word list (default: the shapes world's words) or load `word_tokenizer.json` from
    `path`."""

    FILE = "word_tokenizer.json"

    def __init__(self, words: list[str] | None = None, path: str | None = None):
        if path is not None:
            file = Path(path) / self.FILE
            if not file.is_file():
                raise MaskGRPOError(f"tokenizer: {file} not found")
            try:
                words = json.loads(file.read_text())["words"]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                raise MaskGRPOError(f"tokenizer: {file} is not a saved tokenizer (JSON with 'words')") from None
        elif words is None:
            # the one place a general module reaches into a world, lazily: `{type: word}` in a recipe
            # means the shapes world's vocabulary (tests/test_layering.py allows exactly this import)
            from ..worlds.shapes.vocabulary import WORDS

            words = list(WORDS)
        if len(set(words)) != len(words):
            raise MaskGRPOError("tokenizer.words: words must be unique")
        self.words = list(words)
        self.pad_token_id, self.mask_token_id, self.eos_token_id, self.unk_token_id = range(4)
        self._ids = {w: i + len(SPECIALS) for i, w in enumerate(self.words)}
        self.vocab_size = len(SPECIALS) + len(self.words)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(w, self.unk_token_id) for w in text.lower().split()]

    def decode(self, ids: list[int]) -> str:
        n = len(SPECIALS)
        return " ".join(self.words[i - n] if i >= n else "<unk>" for i in ids if i >= n or i == self.unk_token_id)

    def format_prompt(self, prompt: str) -> str:
        return prompt

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(path) / self.FILE, json.dumps({"words": self.words}))
