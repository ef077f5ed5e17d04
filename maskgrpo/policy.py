"""Preparing a backbone for RL training: LoRA through peft, merging it back for export, dropout
off, gradient checkpointing. Kept apart from the loop so `trainer.py` reads as the algorithm."""

from __future__ import annotations

import copy
from typing import Any

import torch

from .errors import MaskGRPOError

__all__ = ["apply_lora", "disable_dropout", "enable_gradient_checkpointing", "merged_copy"]


def apply_lora(backbone: Any, lora: Any) -> Any:
    """Attach a LoRA adapter through the `add_adapter` API that diffusers and transformers models
    share (peft underneath); only adapter weights stay trainable."""
    from peft import LoraConfig

    if not hasattr(backbone, "add_adapter"):
        raise MaskGRPOError(f"lora: backbone {type(backbone).__name__} does not support adapters")
    targets = lora.target_modules
    backbone.add_adapter(LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets))
    for name, p in backbone.named_parameters():
        p.requires_grad_("lora_" in name)
    return backbone


def merged_copy(backbone: torch.nn.Module) -> torch.nn.Module:
    """A copy of a LoRA-adapted backbone with every adapter merged into its base layer and the
    peft wrappers removed: the backbone's own class and config, so its `save_pretrained` folder
    loads like any other model folder."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = copy.deepcopy(backbone)
    for name, module in list(merged.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(merged.get_submodule(parent_name) if parent_name else merged, child, module.get_base_layer())
    for module in merged.modules():  # forget the adapter, so savers write the whole model
        if getattr(module, "_hf_peft_config_loaded", False):
            module._hf_peft_config_loaded = False
        if hasattr(module, "peft_config"):
            del module.peft_config
    return merged


def disable_dropout(model: torch.nn.Module) -> int:
    """Zero every dropout (LoRA's included), as TRL's GRPO does by default: old, reference and
    current log-probs then come from one deterministic function, so the ratio is 1 at mu = 1.
    Returns how many dropout modules there were."""
    found = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
            found += 1
    return found


def enable_gradient_checkpointing(backbone: Any) -> None:
    if not hasattr(backbone, "gradient_checkpointing_enable"):
        raise MaskGRPOError(f"train.gradient_checkpointing: backbone {type(backbone).__name__} does not support it")
    backbone.gradient_checkpointing_enable()
