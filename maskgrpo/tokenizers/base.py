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


def images_to_tensor(images: "list | torch.Tensor") -> "torch.Tensor":
    """PIL images (or a float tensor [B, 3, H, W] in [0, 1], returned as is) -> that tensor;
    what every image tokenizer's `to_tensor` does."""
    import numpy as np
    import torch

    if isinstance(images, torch.Tensor):
        return images
    arrays = [np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def tensor_to_images(images: "torch.Tensor") -> list:
    """A tensor [B, 3, H, W] in [0, 1] (any float dtype or device) -> PIL images."""
    import numpy as np
    from PIL import Image

    arrays = (images.clamp(0, 1).permute(0, 2, 3, 1).detach().float().cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arrays]
