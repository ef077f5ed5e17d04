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


# -- bounded work for untrusted outputs (images, files, JSONL) ----------------------------------------
SHAPES_SUITE = Path(__file__).resolve().parent.parent / "maskgrpo" / "suites" / "shapes.yaml"


def shapes_outputs(tmp_path: Path, rows: int = 3, images: int = 2) -> Path:
    import json

    from maskgrpo.worlds.shapes.prompts import write_geneval_folder

    meta = SHAPES_SUITE.parent / "shapes" / "metadata.jsonl"
    metadata = [json.loads(line) for line in meta.read_text().splitlines()[:rows]]
    return write_geneval_folder(tmp_path / "outputs", metadata, images_per_row=images, seed=3)


def test_a_huge_image_is_refused_before_it_is_decoded(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A few KB of PNG can claim 10000 x 10000 pixels (the shapes detector would allocate 7.45
    GiB): the suite's max_image_pixels is checked on the header, before any pixel is decoded."""
    import warnings

    from PIL import Image

    folder = shapes_outputs(tmp_path)
    big = folder / "00001" / "samples" / "0000.png"
    Image.new("1", (2000, 2000)).save(big)  # 4 M pixels: over the shapes suite's 1024 x 1024
    out = tmp_path / "out"
    err = one_line_error(capsys, ["eval", str(SHAPES_SUITE), "--outputs", str(folder), "--out", str(out), "--no-progress"])
    assert f"{big}: 2000x2000 pixels, more than the suite's max_image_pixels" in err and not out.exists()

    Image.new("1", (10000, 10000)).save(big)  # 100 M pixels in ~12 KB: past PIL's own bomb warning
    assert big.stat().st_size < 50_000
    import maskgrpo.worlds.shapes.detector as detector

    sizes = []
    real = detector.ShapesDetector.analyse
    monkeypatch.setattr(detector.ShapesDetector, "analyse", lambda self, im: sizes.append(im.size) or real(self, im))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        started = time.time()
        assert main(["eval", str(SHAPES_SUITE), "--outputs", str(folder), "--out", str(out), "--skip-bad", "--no-progress"]) == 0
    assert time.time() - started < 30
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert sizes and max(w * h for w, h in sizes) <= 64 * 64  # the big one never reached the detector
    import json

    results = json.loads((out / "results.json").read_text())
    assert results["n"] == 6 and results["unreadable"] == 1 and "10000x10000 pixels" in results["unreadable_reasons"][0]
    assert main(["eval", str(SHAPES_SUITE), "--outputs", str(folder), "--out", str(tmp_path / "o2"), "--set", "max_image_pixels=0"]) == 2
    assert "max_image_pixels" in capsys.readouterr().err


def test_only_regular_files_are_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A FIFO named 0000.png (or a --outputs JSONL that is a FIFO) would block forever; a symlink
    to /dev/zero or a folder named like an image are not images either."""
    import os
    import threading

    folder = shapes_outputs(tmp_path)
    fifo = folder / "00000" / "samples" / "0000.png"
    fifo.unlink()
    os.mkfifo(fifo)
    fifo_jsonl = tmp_path / "completions.jsonl"
    os.mkfifo(fifo_jsonl)

    def unblock(path: Path) -> None:  # should the harness open a FIFO, give it EOF every few seconds
        while not done.wait(5):
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # a writer: a reader blocked in open() goes on
            time.sleep(0.2)
            os.close(fd)

    done = threading.Event()
    helpers = [threading.Thread(target=unblock, args=(p,), daemon=True) for p in (fifo, fifo_jsonl)]
    for t in helpers:
        t.start()
    try:
        err = one_line_error(capsys, ["eval", str(SHAPES_SUITE), "--outputs", str(folder), "--out", str(tmp_path / "o"), "--no-progress"])
        assert err.endswith(f"{fifo}: not a regular file"), err
        suite = Path(__file__).resolve().parent.parent / "maskgrpo" / "suites" / "gsm8k.yaml"
        err = one_line_error(capsys, ["eval", str(suite), "--outputs", str(fifo_jsonl), "--out", str(tmp_path / "o")])
        assert err.endswith(f"{fifo_jsonl}: not a regular file"), err
    finally:
        done.set()
        for t in helpers:
            t.join()
    fifo.unlink()
    (folder / "00000" / "samples" / "0000.png").symlink_to("/dev/zero")
    (folder / "00001" / "samples" / "0001.png").unlink()
    (folder / "00001" / "samples" / "0001.png").mkdir()
    err = one_line_error(capsys, ["eval", str(SHAPES_SUITE), "--outputs", str(folder), "--out", str(tmp_path / "o"), "--no-progress"])
    assert err.endswith("0000.png: not a regular file"), err
    assert main(["eval", str(SHAPES_SUITE), "--outputs", str(folder), "--out", str(tmp_path / "o"), "--skip-bad", "--no-progress"]) == 0
    import json

    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["n"] == 6 and results["unreadable"] == 2
    assert sorted(r.rsplit(": ", 1)[1] for r in results["unreadable_reasons"]) == ["is a folder", "not a regular file"]


DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = '{"completion": "#### 1", "answer": ' + "9" * 5000 + "}"


def test_jsonl_lines_that_break_the_parser_are_bad_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """100k nested brackets (RecursionError) or a 5000-digit integer (ValueError): with
    --skip-bad counted as bad rows, without it one line naming file:line."""
    import json

    suite = Path(__file__).resolve().parent.parent / "maskgrpo" / "suites" / "gsm8k.yaml"
    good = json.dumps({"completion": "#### 4", "answer": "#### 4"})
    path = tmp_path / "completions.jsonl"
    path.write_text("\n".join([good, DEEP, good, HUGE_INT, good]) + "\n")
    out = tmp_path / "out"
    err = one_line_error(capsys, ["eval", str(suite), "--outputs", str(path), "--out", str(out)])
    assert f"{path}:2: nested too deeply" in err and len(err) < 300
    path.write_text("\n".join([good, good, HUGE_INT, good]) + "\n")
    err = one_line_error(capsys, ["eval", str(suite), "--outputs", str(path), "--out", str(out)])
    assert f"{path}:3: " in err and "integer" in err and len(err) < 300
    path.write_text("\n".join([good, DEEP, good, HUGE_INT, good]) + "\n")
    assert main(["eval", str(suite), "--outputs", str(path), "--out", str(out), "--skip-bad"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["n"] == 3 and results["skipped"] == 2
    assert [r.split(": ", 1)[0] for r in results["skipped_reasons"]] == [f"{path}:2", f"{path}:4"]


@pytest.mark.parametrize(
    "line,expected",
    [(DEEP, ":2: nested too deeply"), (HUGE_INT, ":2: "), (b"\xff\xfe{}", ":2: not valid UTF-8 text")],
)
def test_training_jsonl_that_breaks_the_parser_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], line, expected: str) -> None:
    data = tmp_path / "train.jsonl"
    good = b'{"question": "1+1=", "answer": "2"}\n'
    data.write_bytes(good + (line if isinstance(line, bytes) else line.encode()) + b"\n" + good)
    path = tiny_grpo_recipe(tmp_path, task={"type": "jsonl", "train_path": str(data), "eval_path": str(data)})
    err = one_line_error(capsys, ["check", str(path)])
    assert f"{data}{expected}" in err and len(err) < 300, err


# -- absurd sizes: refused by check, before any allocation ------------------------------------------
@pytest.mark.parametrize(
    "assignments,expected",
    [
        (["grpo.group_size=100000000000"], "grpo.group_size: Input should be less than or equal to"),
        (["train.prompts_per_step=100000000000"], "train.prompts_per_step: Input should be less than or equal to"),
        (["train.prompts_per_step=4000", "grpo.group_size=4000"], "train.prompts_per_step x grpo.group_size: 16,000,000 rollout rows per step"),
        (["train.steps=100000000000"], "train.steps: Input should be less than or equal to"),
        (["grpo.num_iterations=100000000000"], "grpo.num_iterations: Input should be less than or equal to"),
        (["sampler.gen_length=100000000000", "sampler.block_length=100000000000", "sampler.steps=100000000000"], "sampler.gen_length: 100000000000"),
        (["eval_sampler={type: low_confidence, gen_length: 8, block_length: 8, steps: 100000000000}"], "eval_sampler.steps: 100000000000"),
        (["backbone.max_length=100000000000"], "backbone.max_length: 100000000000"),
    ],
)
def test_check_refuses_absurd_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str], assignments: list[str], expected: str) -> None:
    path = tiny_grpo_recipe(tmp_path)
    started = time.time()
    err = one_line_error(capsys, ["check", str(path), *[x for a in assignments for x in ("--set", a)]])
    assert expected in err and len(err) < 300 and time.time() - started < 10, err


@pytest.mark.parametrize(
    "recipe,assignment",
    [
        ("shapes-vq.yaml", "train.batch_size=100000000000"),
        ("shapes-vq.yaml", "image_size=100000000000"),
        ("shapes-vq.yaml", "train.eval_images=100000000000"),
        ("shapes-clip.yaml", "model.text_width=100000000000"),
        ("shapes-clip.yaml", "model.text_layers=100000000000"),
        ("shapes-clip.yaml", "train.batch_size=100000000000"),
        ("shapes-clip.yaml", "image_size=100000000000"),
    ],
)
def test_check_refuses_absurd_vq_and_clip_sizes(capsys: pytest.CaptureFixture[str], recipe: str, assignment: str) -> None:
    path = SHAPES_SUITE.parent.parent.parent / "recipes" / recipe
    err = one_line_error(capsys, ["check", str(path), "--set", assignment])
    assert assignment.split("=")[0] + ": Input should be less than or equal to" in err, err


@pytest.mark.parametrize("assignment", ["samples_per_prompt=100000000000", "max_image_pixels=100000000000"])
def test_eval_refuses_absurd_suite_sizes(tmp_path: Path, capsys: pytest.CaptureFixture[str], assignment: str) -> None:
    folder = shapes_outputs(tmp_path, rows=1, images=1)
    err = one_line_error(capsys, ["eval", str(SHAPES_SUITE), "--outputs", str(folder), "--out", str(tmp_path / "o"), "--set", assignment])
    assert assignment.split("=")[0] + ": Input should be less than or equal to" in err and not (tmp_path / "o").exists(), err


@pytest.mark.parametrize(
    "options,expected",
    [
        (["--gen-length", "100000000000", "--steps", "100000000000"], "sample: --gen-length 100000000000 is more than 1,000,000"),
        (["--gen-length", "64", "--steps", "64"], "sample: prompt 1 of 4 tokens + --gen-length 64 exceeds"),
    ],
)
def test_sample_refuses_what_does_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], expected: str) -> None:
    """`sample` gives the one-line errors check gives, not a MemoryError or the backbone's ValueError."""
    folder = saved_model(tmp_path)
    err = one_line_error(capsys, ["sample", "--model", str(folder), "--prompt", "1+2=", *options])
    assert expected in err, err
