"""The registry: registration, lookup with suggestions, validated building, presets, plugins."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from maskgrpo.errors import MaskGRPOError, RecipeError, UnknownComponentError
from maskgrpo.registry import REGISTRIES, Registry, load_plugins, load_presets


@pytest.fixture
def reg() -> Registry:
    r = Registry("widgets")

    @r.register("box")
    class Box:
        """A box with a size."""

        def __init__(self, size: int = 3, label: str = "x"):
            self.size, self.label = size, label

    @r.register("score")
    def score(prompts, completions, bonus: float = 0.0):
        """A reward-shaped callable."""
        return [len(c) + bonus for c in completions]

    return r


def test_duplicate_names_raise(reg: Registry) -> None:
    with pytest.raises(ValueError, match="already registered"):
        reg.register("box")(lambda: None)


def test_unknown_name_lists_close_matches(reg: Registry) -> None:
    with pytest.raises(UnknownComponentError, match="did you mean 'box'"):
        reg.build("bx")


def test_build_from_name_mapping_and_defaults(reg: Registry) -> None:
    assert reg.build("box").size == 3
    built = reg.build({"type": "box", "size": "7"})  # pydantic coerces a numeric string
    assert built.size == 7 and built.label == "x"


def test_kwargs_are_validated_and_name_the_field(reg: Registry) -> None:
    with pytest.raises(RecipeError, match=r"^thing\.sise: unknown field"):
        reg.build({"type": "box", "sise": 4}, where="thing")
    with pytest.raises(RecipeError, match=r"thing\.size: .*integer"):
        reg.build({"type": "box", "size": "big"}, where="thing")


def test_callable_components_bind_keyword_options(reg: Registry) -> None:
    fn = reg.build({"type": "score", "bonus": 1.5})
    assert fn(["p"], ["abc"]) == [4.5]
    assert reg.build("score")(["p"], ["ab"]) == [2.0]
    with pytest.raises(RecipeError, match="unknown field"):
        reg.build({"type": "score", "prompts": 1})


def test_presets_refine_and_resolve_relative_paths(tmp_path: Path) -> None:
    backbones = REGISTRIES["backbones"]
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "backbones.yaml").write_text(
        "my-tiny:\n  description: test preset\n  type: transformer\n  path: ./weights\n  d_model: 16\n"
    )
    load_presets([presets])
    spec = backbones.expand({"type": "my-tiny", "n_layers": 2})
    assert spec == {"type": "transformer", "path": str((presets / "weights").resolve()), "d_model": 16, "n_layers": 2}
    assert "my-tiny" in backbones
    (presets / "backbones.yaml").write_text("broken:\n  path: x\n")
    with pytest.raises(MaskGRPOError, match="needs a 'type'"):
        load_presets([presets])
    backbones._presets.pop("my-tiny")


def test_bundled_presets_load() -> None:
    load_presets()
    assert "llada-8b-instruct" in REGISTRIES["backbones"]
    assert REGISTRIES["backbones"].expand("llada-8b-instruct")["mask_token_id"] == 126336


def test_plugin_file_registers_a_reward(tmp_path: Path) -> None:
    plugin = tmp_path / "my_reward.py"
    plugin.write_text(
        "from maskgrpo.registry import rewards\n"
        "@rewards.register('test_plugin_length')\n"
        "def length(prompts, completions, **kw):\n"
        "    '''Completion length.'''\n"
        "    return [float(len(c)) for c in completions]\n"
    )
    load_plugins(["my_reward.py"], base_dir=tmp_path)
    assert REGISTRIES["rewards"].build("test_plugin_length")(["p"], ["abcd"]) == [4.0]
    with pytest.raises(MaskGRPOError, match="file not found"):
        load_plugins(["missing.py"], base_dir=tmp_path)
    with pytest.raises(MaskGRPOError, match="cannot import module"):
        load_plugins(["no_such_module_xyz"])


def test_entry_point_plugins_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    from maskgrpo import registry

    loaded = []

    class FakeEntryPoint:
        def load(self):
            loaded.append(True)

    monkeypatch.setattr(registry._state, "entry_points_loaded", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [FakeEntryPoint()] if group == "maskgrpo.plugins" else [])
    registry.load_entry_point_plugins()
    assert loaded == [True]


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_registered_component_is_described_and_constructible_schema(kind: str) -> None:
    reg = REGISTRIES[kind]
    for name in reg.names():
        entry = reg.get(name)
        assert entry.description, f"{kind}/{name} has no docstring"
        entry.params.model_json_schema()  # every option has a type pydantic understands


def test_two_recipes_plugin_files_of_the_same_name_both_load(tmp_path) -> None:
    """A plugin file is keyed by its resolved path: a second recipe's own `rewards.py` is a
    different plugin, not one already loaded."""
    from maskgrpo.registry import load_plugins, rewards

    for i in (1, 2):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "rewards.py").write_text(
            f"from maskgrpo.registry import rewards\n@rewards.register('same_file_name_{i}')\ndef r(prompts, completions, **kw):\n    '''A test reward.'''\n    return [0.0] * len(completions)\n"
        )
        load_plugins(["rewards.py"], tmp_path / str(i))
    assert "same_file_name_1" in rewards and "same_file_name_2" in rewards
