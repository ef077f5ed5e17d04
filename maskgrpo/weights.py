"""Strict safetensors loading for checkpoints in the Hugging Face hub layout.

A folder holds either one weights file (`model.safetensors`) or shards listed by an index
(`model.safetensors.index.json`, `{"weight_map": {tensor: shard}}`). Loading is strict: every
tensor the model expects must be there with the expected shape, and nothing else may be; each
mistake is one line naming the folder, the file and the tensor. Only headers are read to check,
then tensors are assigned shard by shard (no second full copy of the model in memory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from .errors import MaskGRPOError

INDEX = "model.safetensors.index.json"


def local_folder(path: str, where: str, allow_patterns: list[str]) -> Path:
    """A local folder, or a hub id (`owner/name`) resolved in the local Hugging Face cache,
    downloading only where the environment allows (tests run with HF_HUB_OFFLINE=1)."""
    folder = Path(path)
    if folder.is_dir():
        return folder
    if folder.is_absolute() or path.startswith(".") or path.count("/") != 1:
        raise MaskGRPOError(f"{where}: {path} is not a folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path, allow_patterns=allow_patterns))
    except Exception as err:  # offline, unknown repo, nothing cached: one line, not a traceback
        raise MaskGRPOError(f"{where}: cannot find '{path}' locally or in the Hugging Face cache: {str(err).splitlines()[0]}") from None


def tensor_files(folder: Path, where: str, single: Iterable[str] = ("model.safetensors",), index: str = INDEX) -> dict[str, Path]:
    """tensor name -> the safetensors file that holds it (checked against the files' headers)."""
    index_path = folder / index
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise MaskGRPOError(f"{where}: {index_path} is not a safetensors index (no 'weight_map')") from None
        files = {name: folder / shard for name, shard in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not shard.is_file():
                raise MaskGRPOError(f"{where}: shard {shard.name} named in {index_path} is missing")
            listed = {n for n, f in files.items() if f == shard}
            present = set(_header(shard, where))
            if listed - present:
                raise MaskGRPOError(f"{where}: tensor '{sorted(listed - present)[0]}' is in {index_path.name} but not in {shard}")
            if present - listed:
                raise MaskGRPOError(f"{where}: unexpected tensor '{sorted(present - listed)[0]}' in {shard} (not in {index_path.name})")
        return files
    for name in single:
        if (folder / name).is_file():
            return {t: folder / name for t in _header(folder / name, where)}
    raise MaskGRPOError(f"{where}: no {' or '.join(single)} or {index} in {folder}")


def _header(file: Path, where: str) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise MaskGRPOError(f"{where}: cannot read {file}: {err}") from None


def shapes(files: dict[str, Path], where: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """tensor name -> (shape, file) from the safetensors headers (no data is read)."""
    headers: dict[Path, dict[str, tuple[int, ...]]] = {}
    return {name: (headers.setdefault(file, _header(file, where))[name], str(file)) for name, file in files.items()}


def check_tensors(
    found: dict[str, tuple[tuple[int, ...], str]], expected: dict[str, tuple[int, ...]], where: str, folder: Path, optional: Iterable[str] = ()
) -> None:
    """`found` (name -> (shape, file)) against the model's names and shapes: a missing,
    unexpected or wrongly shaped tensor is an error; `optional` names may be absent."""
    optional = set(optional)
    for name in sorted(expected):
        if name not in found and name not in optional:
            raise MaskGRPOError(f"{where}: tensor '{name}' is missing from the checkpoint in {folder}")
    for name, (shape, file) in sorted(found.items()):
        if name not in expected:
            raise MaskGRPOError(f"{where}: unexpected tensor '{name}' in {file}")
        if tuple(shape) != tuple(expected[name]):
            raise MaskGRPOError(f"{where}: tensor '{name}' in {file} has shape {list(shape)}, the config expects {list(expected[name])}")


def load_tensors(module: nn.Module, files: dict[str, Path], dtype: torch.dtype, device: str | torch.device = "cpu") -> None:
    """Assign the checkpoint's tensors to `module` (built on the meta device or not), one file
    at a time; floating tensors are cast to `dtype`, integer buffers keep theirs."""
    by_file: dict[Path, list[str]] = {}
    for name, file in files.items():
        by_file.setdefault(file, []).append(name)
    for file, names in sorted(by_file.items()):
        part = {}
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            for name in names:
                t = f.get_tensor(name)
                part[name] = t.to(dtype) if t.is_floating_point() else t
        module.load_state_dict(part, strict=False, assign=True)
        del part
    left = [n for n, p in list(module.named_parameters()) + list(module.named_buffers()) if p.is_meta]
    if left:
        raise MaskGRPOError(f"weights: '{left[0]}' was not loaded")
