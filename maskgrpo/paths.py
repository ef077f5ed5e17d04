"""Where things are: the package's own data folders, users' extra folders, and the one path rule.

Presets (`maskgrpo/presets/<kind>.yaml`), evaluation suites with their data and licences
(`maskgrpo/suites/`) and the small shipped models (`maskgrpo/checkpoints/`) are package data, found
through `importlib.resources`, so an installed wheel has them. Users add their own folders with
`MASKGRPO_PRESETS` and `MASKGRPO_SUITES` (folders separated by `os.pathsep`).

The path rule: a relative path is relative to the file that names it (a recipe, a suite, a
preset file); a value given on the command line (`--set`) is relative to the working directory.
Where a run writes (a recipe's `output_dir`, `save_to`) is not a path the recipe reads and stays
relative to the working directory. In a component spec a string is a path when

- it starts with `./` or `../`, or with `local-dir:` (open_clip's local folders): always;
- its key ends in `_path` (`train_path`, `eval_path`, `weights_path`): always;
- its key is `path`, `pretrained` or `clip_pretrained` (which also take a Hugging Face hub id or
  an open_clip tag): when it names something that exists relative to the file; otherwise it is
  passed on unchanged (`GSAI-ML/LLaDA-8B-Instruct`, `openai`).

A relative path that exists only relative to the working directory (the rule for recipes before)
still works, with a warning that names the path to write instead.
"""

from __future__ import annotations

import os
import warnings
from importlib.resources import files
from pathlib import Path
from typing import Any, Mapping

from .errors import MaskGRPOError

LOCAL_DIR = "local-dir:"
MAYBE_PATH_KEYS = ("path", "pretrained", "clip_pretrained")  # also a hub id or a pretrained tag


def package_dir(name: str) -> Path:
    """A data folder shipped inside the package (`presets`, `suites`, `checkpoints`)."""
    folder = files("maskgrpo").joinpath(name)
    if not isinstance(folder, Path):  # a zipped install: the loaders need real files
        raise MaskGRPOError(f"maskgrpo's package data ({name}/) is not on the file system; install maskgrpo unzipped")
    return folder


def _env_dirs(*names: str) -> list[Path]:
    return [Path(p).expanduser() for name in names for p in os.environ.get(name, "").split(os.pathsep) if p]


def preset_dirs() -> list[Path]:
    """The bundled presets, then `$MASKGRPO_PRESETS` (`$MASKGRPO_PRESET_PATH`, its former name)."""
    return _unique([package_dir("presets"), *_env_dirs("MASKGRPO_PRESETS", "MASKGRPO_PRESET_PATH")])


def suite_dirs() -> list[Path]:
    """The bundled suites, then `$MASKGRPO_SUITES`."""
    return _unique([package_dir("suites"), *_env_dirs("MASKGRPO_SUITES")])


def _unique(dirs: list[Path]) -> list[Path]:
    """Each folder once (a checkout's top-level `registry/` is a link to `maskgrpo/presets/`)."""
    seen: set[Path] = set()
    out = []
    for d in dirs:
        key = d.resolve()
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


# -- the path rule --------------------------------------------------------------------------------
def resolve_paths(node: Any, base: Path, key: str | None = None, where: str = "") -> Any:
    """`node` (a component spec, or a list or value inside one) with its relative paths made
    absolute against `base`, the folder of the file that names them (see the module docstring)."""
    if isinstance(node, dict):
        return {k: resolve_paths(v, base, str(k), f"{where}.{k}" if where else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_paths(v, base, key, f"{where}.{i}" if where else str(i)) for i, v in enumerate(node)]
    if not isinstance(node, str) or not node:
        return node
    if node.startswith(LOCAL_DIR):
        return LOCAL_DIR + resolve_path(node[len(LOCAL_DIR) :], base, where)
    if node.startswith(("./", "../")) or (key is not None and key.endswith("_path")):
        return resolve_path(node, base, where)
    if key in MAYBE_PATH_KEYS:
        return resolve_path(node, base, where, must_be_path=False)
    return node


def resolve_path(value: str, base: Path, where: str = "", must_be_path: bool = True) -> str:
    """One path value made absolute against `base`. With `must_be_path=False` a value that exists
    neither there nor in the working directory is returned unchanged (a hub id, a tag)."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    here = base / path
    if here.exists():
        return str(here.resolve())
    cwd = Path.cwd() / path
    if cwd.exists() and base.resolve() != Path.cwd().resolve():
        hint = os.path.relpath(cwd.resolve(), base.resolve())
        warnings.warn(
            f"{where or 'path'}: '{value}' is not relative to {base} (a relative path is relative to the file that names it); "
            f"using the working directory's {cwd.resolve()} -- write '{hint}'",
            UserWarning,
            stacklevel=2,
        )
        return str(cwd.resolve())
    if must_be_path or value.startswith(("./", "../")):
        return str(here.resolve())
    return value


def resolve_fields(data: dict[str, Any], fields: Mapping[str, str], base: Path, where: str = "") -> None:
    """In place: the path-bearing fields of a recipe or suite (`fields`: dotted name -> `spec`, a
    component spec; `file`, a path; `suite`, a suite name or file; `plugins`, a list of modules
    or `.py` files)."""
    for name, kind in fields.items():
        *parents, last = name.split(".")
        node: Any = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(last) is not None:
            node[last] = resolve_field(kind, node[last], base, last, f"{where}: {name}" if where else name)


def resolve_field(kind: str, value: Any, base: Path, key: str, where: str) -> Any:
    if kind == "spec":
        return resolve_paths(value, base, key, where)
    if kind == "file":
        return resolve_path(value, base, where) if isinstance(value, str) else value
    if kind == "suite":  # a bundled suite's name, or a suite file
        return resolve_path(value, base, where) if isinstance(value, str) and value.endswith((".yaml", ".yml")) else value
    if kind == "plugins":
        if not isinstance(value, list):
            return value
        return [resolve_path(p, base, where) if isinstance(p, str) and p.endswith(".py") else p for p in value]
    raise ValueError(f"unknown path field kind {kind!r}")


def resolve_override(parts: list[str], value: Any, fields: Mapping[str, str], base: Path) -> Any:
    """The value of one `--set a.b=c` with its relative paths made absolute against `base` (the
    working directory) when `a.b` is, or lies inside, a path-bearing field."""
    dotted = ".".join(parts)
    for name, kind in fields.items():
        if dotted == name:
            return resolve_field(kind, value, base, parts[-1], f"--set {dotted}")
        if dotted.startswith(name + ".") and kind == "spec":
            return resolve_paths(value, base, parts[-1], f"--set {dotted}")
    return value
