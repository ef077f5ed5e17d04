"""What differs between a text run and an image run, owned by one object.

A text run's completions are token ids decoded to strings; an image run's are VQ codes placed
after the text vocabulary (MMaDA-style) and decoded to PIL images. Everything that depends on
that choice (decoding completions for rewards, SFT targets, where the codebook sits, how the
in-training evaluation samples and what it reports) asks the run's modality, so no program
tests `image_tokenizer is None`, and the codebook offset has one owner: `ImageModality`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .tokenizers.base import decode_completion

__all__ = ["ImageModality", "Modality", "TextModality", "modality_for"]


@dataclass
class TextModality:
    tokenizer: Any

    name: ClassVar[str] = "text"
    eval_key: ClassVar[str] = "eval/accuracy"
    eval_name: ClassVar[str] = "held-out greedy accuracy"
    image_tokenizer: ClassVar[None] = None

    @property
    def vocab_size(self) -> int:
        """The backbone's vocabulary: the text tokenizer's."""
        return int(self.tokenizer.vocab_size)

    def sampler_defaults(self, sampler_fields: Any) -> dict[str, Any]:
        return {}

    def eval_sampler_overrides(self) -> dict[str, Any]:
        """The in-training evaluation decodes greedily: held-out accuracy of the argmax policy."""
        return {"temperature": 0.0}

    def decode(self, completion: torch.Tensor) -> list[str]:
        """Completion ids -> text (cut at EOS)."""
        return [decode_completion(self.tokenizer, row.tolist()) for row in completion]

    def targets(self, examples: list[Any], gen_length: int, device: torch.device | str) -> torch.Tensor:
        """SFT targets: the text target padded with EOS to the sampler's length."""
        from .data import encode_completions

        return encode_completions(self.tokenizer, [e.target for e in examples], gen_length, device)


@dataclass
class ImageModality:
    tokenizer: Any
    image_tokenizer: Any

    name: ClassVar[str] = "image"
    eval_key: ClassVar[str] = "eval/geneval"
    eval_name: ClassVar[str] = "GenEval-style score of sampled images"

    @property
    def codebook_offset(self) -> int:
        """Id of code 0: the codebook follows the text vocabulary."""
        return int(self.tokenizer.vocab_size)

    @property
    def codebook_size(self) -> int:
        return int(self.image_tokenizer.codebook_size)

    @property
    def vocab_size(self) -> int:
        """The backbone's vocabulary: text tokens, then the codebook."""
        return self.codebook_offset + self.codebook_size

    def sampler_defaults(self, sampler_fields: Any) -> dict[str, Any]:
        """Where an image sampler finds the codebook, unless the recipe says otherwise."""
        if "codebook_offset" not in sampler_fields:
            return {}
        return {"codebook_offset": self.codebook_offset, "codebook_size": self.codebook_size}

    def eval_sampler_overrides(self) -> dict[str, Any]:
        """Images are always sampled: the evaluation uses the rollout sampler as it is."""
        return {}

    @torch.no_grad()
    def decode(self, completion: torch.Tensor) -> list[Any]:
        """Completion ids (codes after the text vocabulary) -> PIL images."""
        codes = (completion - self.codebook_offset).cpu()
        return self.image_tokenizer.to_pil(self.image_tokenizer.decode(codes))

    def targets(self, examples: list[Any], gen_length: int, device: torch.device | str) -> torch.Tensor:
        """SFT targets: the example image's VQ codes, placed after the text vocabulary."""
        return self.image_tokenizer.encode([e.columns["image"] for e in examples]).to(device) + self.codebook_offset


Modality = TextModality | ImageModality


def modality_for(tokenizer: Any, image_tokenizer: Any | None = None) -> Modality:
    return TextModality(tokenizer) if image_tokenizer is None else ImageModality(tokenizer, image_tokenizer)
