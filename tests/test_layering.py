"""Layering: no import cycle among the package's modules, every module imports on its own, and
the small worlds (`maskgrpo.worlds`) sit on top: general modules never import them.

A cycle works until someone imports the modules in another order; a module that only imports
because another one ran first breaks a user who imports just it. A general module (sampler,
estimator, GRPO loss, metric, harness, ...) that imports a world is tied to a toy.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

PACKAGE = REPO / "maskgrpo"


def modules() -> dict[str, Path]:
    found = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(f.relative_to(REPO).with_suffix("").parts)
        if f.name != "__main__.py":  # running it is the CLI, not an import
            found[name.removesuffix(".__init__")] = f
    return found


def module_level_imports(name: str, path: Path, known: dict[str, Path], lazy: bool = False) -> set[str]:
    """The package modules `name` imports at module level (imports inside functions are lazy
    on purpose and do not form load-time cycles); with `lazy`, those too."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    deps: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree) if lazy else tree.body:
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - max(node.level - 1, 0)] if node.level else []
            target = ".".join(base + [node.module]) if node.module else ".".join(base)
            targets = [f"{target}.{a.name}" for a in node.names]
            deps.update(t if t in known else target for t in targets)
        elif isinstance(node, ast.Import):
            deps.update(a.name for a in node.names)
    return {d for d in deps if d in known and d != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep, path + [dep])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_no_import_cycle_among_package_modules() -> None:
    known = modules()
    graph = {name: module_level_imports(name, path, known) for name, path in known.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


# Modules outside maskgrpo.worlds that may import a world: the package (importing it registers the
# worlds' components) and the worlds' own training programs, which read their data from the world.
WORLD_IMPORTERS = {"maskgrpo", "maskgrpo.clip_train", "maskgrpo.vq_train"}
# Lazy imports of a world from a general module, each with its reason.
LAZY_WORLD_IMPORTS = {
    "maskgrpo.tokenizers.word": "`{type: word}` without words or path is the shapes world's vocabulary",
}


def test_general_modules_do_not_import_a_world() -> None:
    known = modules()
    assert "maskgrpo.worlds" in known and "maskgrpo.worlds.shapes.task" in known
    bad = []
    for name, path in known.items():
        if name == "maskgrpo.worlds" or name.startswith("maskgrpo.worlds.") or name in WORLD_IMPORTERS:
            continue
        eager = {d for d in module_level_imports(name, path, known) if d.startswith("maskgrpo.worlds")}
        lazy = {d for d in module_level_imports(name, path, known, lazy=True) if d.startswith("maskgrpo.worlds")}
        if eager or (lazy and name not in LAZY_WORLD_IMPORTS):
            bad.append(f"{name} imports {', '.join(sorted(eager | lazy))}")
    assert not bad, "general modules must not import a world (move the code into the world, or pass it in):\n" + "\n".join(bad)


def test_the_world_check_sees_lazy_imports() -> None:
    known = modules()
    word = "maskgrpo.tokenizers.word"
    assert "maskgrpo.worlds.shapes.vocabulary" not in module_level_imports(word, known[word], known)
    assert "maskgrpo.worlds.shapes.vocabulary" in module_level_imports(word, known[word], known, lazy=True)


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_imports_on_its_own() -> None:
    """One fresh interpreter; before each module, every maskgrpo module is forgotten (torch and
    the other libraries stay loaded, which keeps this fast)."""
    script = (
        "import importlib, sys\n"
        f"names = {sorted(modules())!r}\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m == 'maskgrpo' or m.startswith('maskgrpo.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        print(f'{name}: {type(err).__name__}: {err}')\n"
        "        sys.exit(1)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
