"""Adapter for real masked-diffusion LMs on the Hugging Face hub layout (LLaDA-style).

`trust_remote_code` stays off unless the preset turns it on; the mask id comes from the preset
(LLaDA's 126336 is not in its config). Weights load from a local folder or the hub cache only
when the environment allows (tests and CI run with HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Literal

import torch
from torch import nn

from ..errors import MaskGRPOError
from ..registry import backbones
from ..utils import atomic_directory

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _attr_path(obj: Any, path: str) -> Any:
    try:
        return functools.reduce(getattr, path.split("."), obj)
    except AttributeError:
        raise MaskGRPOError(f"backbone: model {type(obj).__name__} has no attribute path '{path}'") from None


@backbones.register("hf")
class HFMaskedLM(nn.Module):
    """transformers model (AutoModel / AutoModelForMaskedLM) used as a mask predictor.

    With `body` and `head` (attribute paths, e.g. `bert` and `cls` for BERT) the vocabulary
    projection runs only where a loss needs it; without them the full logits are computed.
    """

    def __init__(
        self,
        path: str,
        mask_token_id: int | None = None,
        auto_class: Literal["AutoModel", "AutoModelForMaskedLM"] = "AutoModelForMaskedLM",
        trust_remote_code: bool = False,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        body: str | None = None,
        head: str | None = None,
    ):
        super().__init__()
        import transformers

        loader = getattr(transformers, auto_class)
        try:
            self.model = loader.from_pretrained(path, trust_remote_code=trust_remote_code, dtype=_DTYPES[dtype])
        except OSError as err:
            raise MaskGRPOError(f"backbone.path: cannot load '{path}': {str(err).splitlines()[0]}") from None
        config = self.model.config
        mask = mask_token_id if mask_token_id is not None else getattr(config, "mask_token_id", None)
        if mask is None:
            raise MaskGRPOError("backbone.mask_token_id: not in the model config; set it in the preset")
        self._mask_token_id = int(mask)
        self._vocab_size = int(config.vocab_size)
        if (body is None) != (head is None):
            raise MaskGRPOError("backbone: set both 'body' and 'head', or neither")
        self.body_path, self.head_path = body, head

    @property
    def mask_token_id(self) -> int:
        return self._mask_token_id

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=tokens, attention_mask=None if attention_mask is None else attention_mask.long()).logits

    def hidden(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.body_path is None:
            return self.forward(tokens, attention_mask)  # "hidden" = logits; logits_from_hidden is then the identity
        body = _attr_path(self.model, self.body_path)
        return body(input_ids=tokens, attention_mask=None if attention_mask is None else attention_mask.long()).last_hidden_state

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.head_path is None:
            return hidden
        return _attr_path(self.model, self.head_path)(hidden)

    def gradient_checkpointing_enable(self) -> None:
        self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    # LoRA through transformers' peft integration; the trainer's reference disables the adapter.
    def add_adapter(self, config: Any) -> None:
        self.model.add_adapter(config)

    def disable_adapters(self) -> None:
        self.model.disable_adapters()

    def enable_adapters(self) -> None:
        self.model.enable_adapters()

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        with atomic_directory(save_directory) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
