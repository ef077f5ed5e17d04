"""Named components: one `Registry` per kind, built from a name, a preset or `{type: ..., **kwargs}`.

A typo in a recipe must be an error that names the field, never a silent default, so every
factory's keyword arguments are validated by a pydantic model derived from its signature
(`extra="forbid"`). Presets are named, ready-made specs read from `<kind>.yaml` files in the
package's `presets/` folder and in the folders of `$MASKGRPO_PRESETS` (see `paths.py`).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pydantic
import yaml

from .errors import MaskGRPOError, RecipeError, UnknownComponentError, format_validation_error, no_bool_for_numbers
from .paths import preset_dirs, resolve_paths


@dataclass
class Entry:
    """A registered component type: how to make it and which keyword arguments it takes."""

    name: str
    factory: Callable[..., Any]
    description: str
    params: type[pydantic.BaseModel]


@dataclass
class Preset:
    """A named spec (`{type: ..., **kwargs}`) loaded from a presets YAML file."""

    name: str
    spec: dict[str, Any]
    description: str
    source: str


def _first_line(doc: str | None) -> str:
    """The docstring's first sentence (which may wrap over several lines)."""
    paragraph = " ".join(line.strip() for line in (doc or "").strip().split("\n\n")[0].splitlines())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


def _params_model(kind: str, name: str, obj: Callable[..., Any], callable_component: bool) -> type[pydantic.BaseModel]:
    """Derive a strict pydantic model from the keyword arguments that configure `obj`."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: fall back to Any
        hints = {}
    fields: dict[str, Any] = {}
    extra = "forbid"
    for i, (pname, p) in enumerate(inspect.signature(target).parameters.items()):
        if inspect.isclass(obj) and i == 0:
            continue  # self
        if p.kind is p.VAR_KEYWORD:
            extra = "allow"
            continue
        if p.kind is p.VAR_POSITIONAL:
            continue
        if callable_component and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            continue  # data arguments of a callable component (e.g. a reward's prompts, completions)
        annotation = hints.get(pname, Any)
        default = ... if p.default is p.empty else p.default
        fields[pname] = (annotation, default)
    base = type("Params", (_Params,), {"model_config": pydantic.ConfigDict(extra=extra, arbitrary_types_allowed=True, protected_namespaces=())})
    return pydantic.create_model(f"{kind}:{name}", __base__=base, **fields)


class _Params(pydantic.BaseModel):
    """The options of a registered component; a boolean is never taken for a number."""

    @pydantic.field_validator("*", mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, value: Any, info: Any) -> Any:
        return no_bool_for_numbers(value, cls.model_fields[info.field_name].annotation, info.field_name)


class Registry:
    """Components of one kind (backbones, samplers, rewards, ...) registered by name."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._presets: dict[str, Preset] = {}

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str, *, description: str | None = None) -> Callable[[Any], Any]:
        """Decorator. A class (or factory function) is called with the validated kwargs; a
        function whose first parameters have no defaults (a reward's `prompts, completions`) is
        a callable component: `build` returns it with its keyword-only options bound."""

        def decorator(obj: Any) -> Any:
            if name in self._entries or name in self._presets:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            is_callable_component = not inspect.isclass(obj) and any(
                p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                for p in inspect.signature(obj).parameters.values()
            )
            factory = _bind_options(obj) if is_callable_component else obj
            params = _params_model(self.kind, name, obj, is_callable_component)
            self._entries[name] = Entry(name, factory, description or _first_line(obj.__doc__), params)
            return obj

        return decorator

    def add_preset(self, name: str, spec: dict[str, Any], description: str = "", source: str = "") -> None:
        if name in self._entries or name in self._presets:
            raise ValueError(f"{self.kind} preset '{name}' clashes with an existing name ({source})")
        if not isinstance(spec, dict) or "type" not in spec:
            raise MaskGRPOError(f"{source}: preset '{name}' needs a 'type' field")
        self._presets[name] = Preset(name, dict(spec), description, source)

    # -- lookup -------------------------------------------------------------------------------
    # Presets are read on the first lookup that needs them (`load_presets`), so no caller has to
    # remember to load them, and `import maskgrpo` reads no YAML.
    def _preset_table(self) -> dict[str, Preset]:
        load_presets()
        return self._presets

    def names(self) -> list[str]:
        return sorted(self._entries)

    def presets(self) -> list[Preset]:
        table = self._preset_table()
        return [table[k] for k in sorted(table)]

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._preset_table()

    def get(self, name: str, where: str | None = None) -> Entry:
        if name in self._entries:
            return self._entries[name]
        known = list(self._entries) + list(self._preset_table())
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f"; known: {', '.join(sorted(known))}"
        prefix = f"{where}: " if where else ""
        raise UnknownComponentError(f"{prefix}unknown {self.kind[:-1] if self.kind.endswith('s') else self.kind} '{name}'{hint}")

    def expand(self, spec: str | dict[str, Any], where: str | None = None) -> dict[str, Any]:
        """Turn a name, a preset or a mapping into a flat `{type: registered_name, **kwargs}`."""
        where = where or self.kind
        if isinstance(spec, str):
            spec = {"type": spec}
        if not isinstance(spec, dict) or "type" not in spec:
            raise RecipeError(f"{where}: expected a name or a mapping with a 'type' field, got {spec!r}")
        spec = dict(spec)
        seen: list[str] = []
        table = self._preset_table()
        while spec["type"] in table:  # presets may refine other presets
            name = spec["type"]
            if name in seen:
                raise MaskGRPOError(f"{where}: preset cycle {' -> '.join(seen + [name])}")
            seen.append(name)
            spec = {**table[name].spec, **{k: v for k, v in spec.items() if k != "type"}}
        if not isinstance(spec["type"], str):
            raise RecipeError(f"{where}.type: expected a name, got {spec['type']!r}")
        self.get(spec["type"], where)
        return spec

    def validate(self, spec: str | dict[str, Any], where: str | None = None) -> tuple[Entry, dict[str, Any]]:
        """Resolve `spec` and check its kwargs without building anything."""
        where = where or self.kind
        flat = self.expand(spec, where)
        entry = self.get(flat["type"], where)
        kwargs = {k: v for k, v in flat.items() if k != "type"}
        try:
            model = entry.params.model_validate(kwargs)
        except pydantic.ValidationError as err:
            raise RecipeError(format_validation_error(err, where)) from None
        values = {k: getattr(model, k) for k in model.model_fields_set}
        values.update(model.model_extra or {})
        return entry, values

    def build(self, spec: str | dict[str, Any], where: str | None = None, **runtime: Any) -> Any:
        """Build a component. `runtime` kwargs (objects, not config) are passed through unvalidated."""
        entry, kwargs = self.validate(spec, where)
        return entry.factory(**kwargs, **runtime)


def _bind_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    def factory(**options: Any) -> Callable[..., Any]:
        if not options:
            return fn
        import functools

        bound = functools.partial(fn, **options)
        functools.update_wrapper(bound, fn)
        return bound

    return factory


backbones = Registry("backbones")
tokenizers = Registry("tokenizers")
samplers = Registry("samplers")
estimators = Registry("estimators")
rewards = Registry("rewards")
metrics = Registry("metrics")
tasks = Registry("tasks")
detectors = Registry("detectors")

REGISTRIES: dict[str, Registry] = {
    r.kind: r for r in (backbones, tokenizers, samplers, estimators, rewards, metrics, tasks, detectors)
}


@dataclass
class _State:
    presets_loaded: bool = False
    entry_points_loaded: bool = False
    plugins: list[str] = field(default_factory=list)


_state = _State()


def load_presets(dirs: list[Path] | None = None) -> None:
    """Read every `<kind>.yaml` in the preset folders (the package's `presets/` and any folder in
    `$MASKGRPO_PRESETS`). Each top-level key is a preset name; relative paths in a preset are
    relative to its file, so presets can point at the checkpoints shipped beside them."""
    if dirs is None:
        if _state.presets_loaded:
            return
        _state.presets_loaded = True
        dirs = preset_dirs()
    for folder in dirs:
        for file in sorted(Path(folder).glob("*.yaml")):
            kind = file.stem
            if kind not in REGISTRIES:
                raise MaskGRPOError(f"{file}: no registry kind '{kind}' (known: {', '.join(REGISTRIES)})")
            try:
                data = yaml.safe_load(file.read_text()) or {}
            except yaml.YAMLError as err:
                raise MaskGRPOError(f"{file}: invalid YAML: {str(err).splitlines()[0]}") from None
            for name, spec in data.items():
                if not isinstance(spec, dict):
                    raise MaskGRPOError(f"{file}: preset '{name}' must be a mapping")
                spec = dict(spec)
                description = str(spec.pop("description", ""))
                spec = resolve_paths(spec, file.parent, where=f"{file}: {name}")
                REGISTRIES[kind].add_preset(name, spec, description, str(file))


def load_entry_point_plugins() -> None:
    """Import installed packages that declare the `maskgrpo.plugins` entry-point group."""
    if _state.entry_points_loaded:
        return
    _state.entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group="maskgrpo.plugins"):
        ep.load()


def load_plugins(plugins: list[str], base_dir: Path | None = None) -> None:
    """Import user modules (dotted names or `.py` files, relative to `base_dir`) so that their
    `@rewards.register(...)` decorators run before a recipe is built."""
    for plugin in plugins:
        key = plugin
        if plugin.endswith(".py"):
            path = Path(plugin)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            key = str(path.resolve())  # two recipes' own `rewards.py` are two plugins
        if key in _state.plugins:
            continue
        if plugin.endswith(".py"):
            if not path.is_file():
                raise MaskGRPOError(f"plugins: file not found: {path}")
            module_name = f"maskgrpo_plugin_{path.stem}_{abs(hash(str(path.resolve())))}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as err:  # noqa: BLE001 - a user's file: whatever it raises is their error
                del sys.modules[module_name]
                raise MaskGRPOError(f"plugins: {path}: {_import_failure(err)}") from None
        else:
            try:
                importlib.import_module(plugin)
            except ModuleNotFoundError as err:
                raise MaskGRPOError(f"plugins: cannot import module '{plugin}' ({err})") from None
            except Exception as err:  # noqa: BLE001
                raise MaskGRPOError(f"plugins: module '{plugin}': {_import_failure(err)}") from None
        _state.plugins.append(key)


def _import_failure(err: Exception) -> str:
    """One line for a plugin that fails to import: the line of a syntax error, else what it raised."""
    if isinstance(err, SyntaxError):
        return f"line {err.lineno}: syntax error: {err.msg}"
    lines = str(err).strip().splitlines()
    return f"raised {type(err).__name__} on import" + (f": {lines[0][:200]}" if lines else "")


def get_registry(kind: str) -> Registry:
    if kind not in REGISTRIES:
        close = difflib.get_close_matches(kind, list(REGISTRIES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(REGISTRIES)}"
        raise UnknownComponentError(f"unknown registry kind '{kind}'{hint}")
    return REGISTRIES[kind]
