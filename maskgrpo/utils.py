"""Small helpers shared across modules: atomic writes, seeding, devices."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; outputs should read like any other file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save_image(image: Any, path: str | os.PathLike[str]) -> None:
    """Save a PIL image as PNG the same way: a temporary file beside `path`, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        image.save(tmp, format="PNG")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def progress_bar(total: int, desc: str, enabled: bool | None, unit: str = "sample") -> Any:
    """A tqdm bar on stderr; `enabled` None shows it only when stderr is a terminal."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=(None if enabled is None else not enabled), leave=False, file=sys.stderr)


@contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename, so
    an interrupted save leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes folders private
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def make_generator(seed: int, *keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded from (seed, *keys): every random draw in a run is a function of where
    it happens (step, iteration, ...), so resuming reproduces it without saving RNG state."""
    mixed = seed
    for k in keys:
        mixed = (mixed * 1_000_003 + int(k) + 0x9E3779B9) % (2**63 - 1)
    g = torch.Generator(device=device)
    g.manual_seed(mixed)
    return g


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class RowGenerators:
    """One generator per batch row, so a row's random draws do not depend on the rows beside it:
    a rollout (or a mask) is the same alone, in any batch, and on any process of a distributed
    run, which is what makes N processes equal one on the same global batch."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = list(generators)

    @classmethod
    def seeded(cls, seed: int, *keys: int, rows: "list[int] | range | torch.Tensor") -> "RowGenerators":
        """Row r's generator is make_generator(seed, *keys, r): `rows` are global row indices."""
        ids = rows.tolist() if isinstance(rows, torch.Tensor) else list(rows)
        return cls([make_generator(seed, *keys, r) for r in ids])

    def __len__(self) -> int:
        return len(self.generators)

    def rand(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if not shape or shape[0] != len(self.generators):
            raise ValueError(f"RowGenerators: {len(self.generators)} rows cannot draw a tensor of shape {tuple(shape)}")
        return torch.stack([torch.rand(shape[1:], generator=g, dtype=dtype) for g in self.generators])


Generator = torch.Generator | RowGenerators | None


def draw_uniform(shape: tuple[int, ...], generator: Generator, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U(0, 1) of `shape` on `device`: per row from RowGenerators (shape[0] = rows), else from
    one generator (the draw then depends on the whole batch's shape)."""
    if isinstance(generator, RowGenerators):
        return generator.rand(tuple(shape), dtype).to(device)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(tuple(shape), generator=generator, dtype=dtype, device=gen_device).to(device)
