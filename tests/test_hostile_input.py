"""Hostile or careless input: one line naming the file or field, exit status 2, nothing run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from maskgrpo.cli import main

from .conftest import tiny_grpo_recipe

BOMB = """kind: grpo
name: bomb
output_dir: runs/bomb
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
seed: *h
"""


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_a_yaml_bomb_is_refused_quickly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    started = time.time()
    err = one_line_error(capsys, ["check", str(path)])
    assert time.time() - started < 5 and "expands to more than" in err and len(err) < 300


def test_an_error_message_quotes_a_bounded_part_of_a_large_value(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_grpo_recipe(tmp_path)
    err = one_line_error(capsys, ["check", str(path), "--set", "seed=" + "[" + ",".join(["1"] * 5000) + "]"])
    assert err.startswith("maskgrpo: error:") and "seed" in err and len(err) < 400


def test_a_duplicated_key_or_section_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_grpo_recipe(tmp_path)
    path.write_text(path.read_text() + "train:\n  steps: 100\n")
    err = one_line_error(capsys, ["check", str(path)])
    assert "duplicate key 'train'" in err and str(path) in err


@pytest.mark.parametrize("assignment", ["train.steps=yes", "train.prompts_per_step=true", "grpo.beta=no", "estimator.min_mask_rate=yes"])
def test_booleans_are_not_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str], assignment: str) -> None:
    err = one_line_error(capsys, ["check", str(tiny_grpo_recipe(tmp_path)), "--set", assignment])
    assert assignment.split("=")[0].split(".")[-1] in err and "expected a number, got the boolean" in err


def test_a_non_utf8_recipe_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    err = one_line_error(capsys, ["check", str(path)])
    assert str(path) in err and "not UTF-8" in err


@pytest.mark.parametrize(
    "source,expected",
    [("def broken(:\n    pass\n", "line 1: syntax error"), ("raise RuntimeError('no network here')\n", "raised RuntimeError on import: no network here")],
)
def test_a_plugin_that_fails_to_import_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], source: str, expected: str) -> None:
    (tmp_path / "bad_plugin.py").write_text(source)
    path = tiny_grpo_recipe(tmp_path, plugins=["bad_plugin.py"])
    err = one_line_error(capsys, ["check", str(path)])
    assert "bad_plugin.py" in err and expected in err


@pytest.mark.parametrize(
    "assignments,expected",
    [
        (["sampler.block_length=3"], "sampler.block_length: 3 must divide gen_length 8"),
        (["sampler.gen_length=16", "sampler.steps=3"], "sampler.steps: 3 must be a positive multiple of the 2 blocks"),
        (["sampler.gen_length=24", "sampler.steps=3"], "24 completion tokens fill the backbone's max_length 24"),
        (["estimator.min_mask_rate=1.5"], "estimator.min_mask_rate: must be in [0, 1)"),
    ],
)
def test_check_refuses_what_train_would(tmp_path: Path, capsys: pytest.CaptureFixture[str], assignments: list[str], expected: str) -> None:
    path = tiny_grpo_recipe(tmp_path)
    err = one_line_error(capsys, ["check", str(path), *[x for a in assignments for x in ("--set", a)]])
    assert expected in err, err


def saved_model(tmp_path: Path) -> Path:
    from maskgrpo.backbones.transformer import MaskedTransformer
    from maskgrpo.tokenizers.char import CharTokenizer

    tokenizer = CharTokenizer()
    folder = tmp_path / "model"
    MaskedTransformer(tokenizer.vocab_size, tokenizer.mask_token_id, max_length=24, d_model=16, n_layers=1, n_heads=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def break_weights_truncate(folder: Path) -> None:
    f = folder / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[:200])


def break_weights_zero(folder: Path) -> None:
    f = folder / "diffusion_pytorch_model.safetensors"
    f.write_bytes(bytes(f.stat().st_size))


def break_weights_missing(folder: Path) -> None:
    (folder / "diffusion_pytorch_model.safetensors").unlink()


def break_tensor_missing(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    f = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(f))
    del state["head.weight"]
    save_file(state, str(f))


def break_config_json(folder: Path) -> None:
    (folder / "config.json").write_text("{not json")


def break_config_layers(folder: Path) -> None:
    import json

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_layers": -1}))


def break_tokenizer(folder: Path) -> None:
    (folder / "char_tokenizer.json").write_text("[1, 2")


@pytest.mark.parametrize(
    "damage,expected",
    [
        (break_weights_truncate, "cannot read"),
        (break_weights_zero, "cannot read"),
        (break_weights_missing, "no diffusion_pytorch_model.safetensors"),
        (break_tensor_missing, "tensor 'head.weight' is missing"),
        (break_config_json, "config.json is not valid JSON"),
        (break_config_layers, "backbone.n_layers: must be an integer >= 1, got -1"),
        (break_tokenizer, "is not a saved tokenizer"),
    ],
)
def test_a_broken_model_folder_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str], damage, expected: str) -> None:
    """sample must not exit 0 on random weights: loading is strict and validated."""
    folder = saved_model(tmp_path)
    assert main(["sample", "--model", str(folder), "--prompt", "1+2="]) == 0
    capsys.readouterr()
    damage(folder)
    err = one_line_error(capsys, ["sample", "--model", str(folder), "--prompt", "1+2="])
    assert expected in err and str(folder) in err, err


def test_eval_checks_its_output_folder_before_the_work(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """An existing file, or a folder it cannot write under, is refused before any generation."""
    import maskgrpo.eval.harness as harness

    calls = []
    monkeypatch.setattr(harness, "generate_text", lambda *a, **k: calls.append(1) or [])
    taken = tmp_path / "results.txt"
    taken.write_text("mine")
    err = one_line_error(capsys, ["eval", "arith", "--model", "arith-small", "--out", str(taken)])
    assert "exists and is not a folder" in err and taken.read_text() == "mine"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        import os

        if os.geteuid() != 0:  # root writes anywhere: the permission case needs a normal user
            err = one_line_error(capsys, ["eval", "arith", "--model", "arith-small", "--out", str(locked / "out")])
            assert "cannot write under" in err
    finally:
        locked.chmod(0o700)
    assert calls == []
