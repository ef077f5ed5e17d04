"""The evaluation harness: suites, `maskgrpo eval` on text and image outputs, bad input, reports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from maskgrpo.cli import main
from maskgrpo.errors import MaskGRPOError, RecipeError
from maskgrpo.eval import bundled_suites, evaluate_suite, load_suite, validate_geneval_row
from maskgrpo.metrics.math import gold_answer
from maskgrpo.worlds.shapes.prompts import write_geneval_folder
from maskgrpo.worlds.shapes.vocabulary import TAGS

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parent.parent
EVALS = REPO / "maskgrpo" / "suites"
GSM8K = EVALS / "gsm8k.yaml"
SHAPES = EVALS / "shapes.yaml"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith("maskgrpo: error: "), err
    return err


# -- suites ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, rows, modality",
    [("gsm8k", 1319, "text"), ("math500", 500, "text"), ("geneval", 553, "image"), ("shapes", 60, "image"), ("shapes-colors-trained", 20, "image")],
)
def test_bundled_suites_validate(name, rows, modality):
    suite = load_suite(EVALS / f"{name}.yaml")
    assert suite.name == name and suite.modality == modality
    assert len(read_jsonl(suite.data_path)) == rows
    assert suite.samples_per_prompt >= 1 and suite.metrics
    if suite.licence:
        assert (suite.source_dir / suite.licence).is_file()
    assert load_suite(name).name == name  # bundled suites also load by name
    assert name in bundled_suites()


def test_data_licences_and_geneval_rows():
    data = EVALS / "data"
    for stem in ("gsm8k", "math500", "geneval"):
        assert "MIT License" in (data / f"{stem}_LICENSE.txt").read_text()
    assert "gsm8k_train" in (data / "README.md").read_text()
    for path in (data / "geneval_metadata.jsonl", EVALS / "shapes" / "metadata.jsonl"):
        for row in read_jsonl(path):
            assert validate_geneval_row(row) is None, row


def test_suite_errors_name_file_and_field(tmp_path):
    base = SHAPES.read_text().replace("data: shapes/metadata.jsonl", f"data: {EVALS / 'shapes' / 'metadata.jsonl'}")
    cases = {
        "samples_per_prompt: 4": ("samples_per_prompt: many", "samples_per_prompt"),
        "seed: 0": ("seed: 0\nsampels_per_prompt: 2", "sampels_per_prompt: unknown field"),
        "detector: shapes": ("detector: shaeps", "metrics.0.detector: unknown detector 'shaeps'"),
        "type: geneval": ("type: geneva", "metrics.0: unknown metric 'geneva'"),
        "modality: image": ("modality: video", "modality"),
    }
    for old, (new, expected) in cases.items():
        path = tmp_path / "suite.yaml"
        path.write_text(base.replace(old, new, 1))
        with pytest.raises(MaskGRPOError) as info:
            load_suite(path)
        message = str(info.value)
        assert message.startswith(str(path)) and expected in message, message
    text = GSM8K.read_text().replace("data: data/gsm8k_test.jsonl", f"data: {EVALS / 'data' / 'gsm8k_test.jsonl'}")
    (tmp_path / "t.yaml").write_text(text.replace("block_length: 32", "block_length: 30"))
    with pytest.raises(MaskGRPOError, match=re.escape(str(tmp_path / "t.yaml")) + ".*block_length"):
        load_suite(tmp_path / "t.yaml")
    (tmp_path / "u.yaml").write_text(text.replace("{prompt}", "{question}"))
    with pytest.raises(RecipeError, match="prompt_template"):
        load_suite(tmp_path / "u.yaml")
    with pytest.raises(MaskGRPOError, match="suite file not found"):
        load_suite(tmp_path / "nope.yaml")


# -- text outputs ------------------------------------------------------------------------------------
def gsm8k_outputs(n: int = 20) -> tuple[list[dict], list[int], list[str]]:
    """n rows from the real test set with integer golds: every third completion is wrong."""
    rows = [r for r in read_jsonl(EVALS / "data" / "gsm8k_test.jsonl")[: 3 * n] if re.fullmatch(r"\d+", gold_answer(r["answer"]))][:n]
    out, wrong, extracted = [], [], []
    for i, r in enumerate(rows):
        gold = int(gold_answer(r["answer"]))
        style = i % 3
        if style == 0:
            completion, ans = f"Let me think. So I get {gold + 7} apples.", str(gold + 7)
            wrong.append(i)
        elif style == 1:
            completion, ans = f"Step by step ... the total is \\boxed{{{gold}}}.", str(gold)
        else:
            completion, ans = f"{r['answer']}", str(gold)
        out.append({"question": r["question"], "completion": completion, "answer": r["answer"]})
        extracted.append(ans)
    return out, wrong, extracted


def test_gsm8k_outputs_scored_exactly(tmp_path, capsys):
    rows, wrong, extracted = gsm8k_outputs(20)
    assert len(rows) == 20
    outputs = write_jsonl(tmp_path / "completions.jsonl", rows)
    out = tmp_path / "out"
    assert main(["eval", str(GSM8K), "--outputs", str(outputs), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "0.6500" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["suite"] == "gsm8k" and results["n"] == 20 and results["skipped"] == 0
    assert results["metrics"]["accuracy"] == pytest.approx((20 - len(wrong)) / 20)
    assert results["seconds"] >= 0 and results["samples_per_second"] > 0
    samples = read_jsonl(out / "samples.jsonl")
    assert [s["extracted"] for s in samples] == extracted
    assert [i for i, s in enumerate(samples) if not s["correct"]] == wrong
    assert all(s["line"] == i + 1 and s["prompt"] == rows[i]["question"] for i, s in enumerate(samples))
    failures = (out / "failures.md").read_text()
    table = [line for line in failures.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(table) == len(wrong)
    for i, line in zip(wrong, table):
        assert line.startswith(f"| {i} | {i + 1} |") and f"| {extracted[i]} |" in line and "numeric mismatch" in line
        assert f"| {gold_answer(rows[i]['answer'])} |" in line


def test_python_one_liner_and_limit(tmp_path):
    rows, wrong, _ = gsm8k_outputs(20)
    outputs = write_jsonl(tmp_path / "c.jsonl", rows)
    results = evaluate_suite("gsm8k", outputs=outputs, out=tmp_path / "o", limit=6, progress=False)
    assert results["n"] == 6
    assert results["metrics"]["accuracy"] == pytest.approx(1 - sum(1 for i in wrong if i < 6) / 6)
    assert json.loads((tmp_path / "o" / "results.json").read_text())["metrics"] == results["metrics"]
    with pytest.raises(MaskGRPOError, match="exactly one"):
        evaluate_suite("gsm8k", out=tmp_path / "o")


def test_malformed_rows_error_or_skip(tmp_path, capsys):
    rows, _, _ = gsm8k_outputs(6)
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, '{"completion": "#### 3", "answer": ')  # line 3: malformed JSON
    lines.insert(4, json.dumps({"completion": "#### 5"}))  # line 5: no gold answer
    lines.insert(5, json.dumps(["not", "an", "object"]))  # line 6
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    out = tmp_path / "out"
    assert main(["eval", str(GSM8K), "--outputs", str(path), "--out", str(out)]) == 2
    assert f"{path}:3: malformed JSON" in error_line(capsys)
    assert not (out / "results.json").exists()

    fixed = lines[:2] + lines[3:]
    write_jsonl(path, fixed)
    assert main(["eval", str(GSM8K), "--outputs", str(path), "--out", str(out)]) == 2
    assert f"{path}:4: missing 'answer'" in error_line(capsys)

    write_jsonl(path, lines)
    assert main(["eval", str(GSM8K), "--outputs", str(path), "--out", str(out), "--skip-bad"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["n"] == 6 and results["skipped"] == 3
    assert [r.split(": ", 1)[0] for r in results["skipped_reasons"]] == [f"{path}:3", f"{path}:5", f"{path}:6"]
    assert "skipped 3 bad rows" in capsys.readouterr().err


def test_missing_inputs_exit_2(tmp_path, capsys):
    missing = tmp_path / "nothing.jsonl"
    assert main(["eval", str(GSM8K), "--outputs", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert f"{missing}: file not found" in error_line(capsys)
    assert main(["eval", str(GSM8K), "--outputs", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path}: is a folder" in error_line(capsys)
    assert main(["eval", str(SHAPES), "--outputs", str(tmp_path / "no_dir"), "--out", str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'no_dir'}: folder not found" in error_line(capsys)
    assert main(["eval", str(tmp_path / "suite.yaml"), "--outputs", str(missing)]) == 2
    assert "suite file not found" in error_line(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", str(SHAPES), "--outputs", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert f"{empty}: no GenEval index folders" in error_line(capsys)


def test_cli_subprocess_reports_one_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ['{"completion": "#### 1", "answer": "#### 1"}', "{oops"])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "maskgrpo.cli", "eval", str(GSM8K), "--outputs", str(path), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"maskgrpo: error: {path}:2: malformed JSON"), proc.stderr


# -- image outputs -----------------------------------------------------------------------------------
def shapes_rows(per_tag: int = 2) -> list[dict]:
    rows = read_jsonl(EVALS / "shapes" / "metadata.jsonl")
    return [r for tag in TAGS for r in [x for x in rows if x["tag"] == tag][:per_tag]]


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory) -> Path:
    return write_geneval_folder(tmp_path_factory.mktemp("geneval") / "correct", shapes_rows(2), images_per_row=2, seed=1)


def test_shapes_correct_images_score_one(shapes_folder, tmp_path):
    out = tmp_path / "out"
    assert main(["eval", str(SHAPES), "--outputs", str(shapes_folder), "--out", str(out), "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["n"] == 24 and results["prompts"] == 12 and results["skipped"] == 0
    assert results["metrics"] == {"overall": 1.0, **{tag: 1.0 for tag in sorted(TAGS)}}
    samples = read_jsonl(out / "samples.jsonl")
    assert [(s["index"], s["sample"]) for s in samples] == [(i, k) for i in range(12) for k in range(2)]
    assert all(s["correct"] and s["reason"] == "" and s["detections"] for s in samples)
    with Image.open(out / "grid.png") as grid:
        assert grid.format == "PNG" and grid.width > 500
    assert (out / "report.html").read_text().count("<img") == 24


def test_shapes_wrong_images_lower_the_score(tmp_path):
    rows = shapes_rows(2)
    tag_of = [r["tag"] for r in rows]
    first = {tag: tag_of.index(tag) for tag in TAGS}
    wrong = {
        (first["single_object"], 0): "class",
        (first["counting"], 1): "count",
        (first["counting"] + 1, 0): "count",
        (first["position"], 0): "side",
        (first["color_attr"] + 1, 1): "color",
    }
    folder = write_geneval_folder(tmp_path / "mixed", rows, images_per_row=2, seed=2, wrong=wrong)
    results = evaluate_suite(SHAPES, outputs=folder, out=tmp_path / "out", progress=False)
    per_tag = {tag: 1.0 for tag in TAGS}
    for (r, _), _kind in wrong.items():
        per_tag[tag_of[r]] -= 0.25  # 2 prompts x 2 images per tag
    assert {k: results["metrics"][k] for k in TAGS} == pytest.approx(per_tag)
    assert results["metrics"]["overall"] == pytest.approx(sum(per_tag.values()) / 6)
    samples = read_jsonl(tmp_path / "out" / "samples.jsonl")
    failed = {(s["index"], s["sample"]) for s in samples if not s["correct"]}
    assert failed == set(wrong)
    assert all(s["reason"] for s in samples if not s["correct"])
    assert (tmp_path / "out" / "grid.png").stat().st_size > 0


def test_bad_image_and_bad_metadata(shapes_folder, tmp_path, capsys):
    folder = tmp_path / "broken"
    shutil.copytree(shapes_folder, folder)
    fake = folder / "00003" / "samples" / "0001.png"
    fake.write_text("this is not a PNG")
    out = tmp_path / "out"
    assert main(["eval", str(SHAPES), "--outputs", str(folder), "--out", str(out)]) == 2
    assert error_line(capsys).endswith(f"{fake}: not an image")
    assert main(["eval", str(SHAPES), "--outputs", str(folder), "--out", str(out), "--skip-bad"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["n"] == 24 and results["skipped"] == 0 and results["unreadable"] == 1 and results["metrics"]["overall"] < 1.0
    capsys.readouterr()

    meta = folder / "00005" / "metadata.jsonl"
    row = json.loads(meta.read_text())
    meta.write_text(json.dumps({**row, "tag": "bogus_tag"}) + "\n")
    assert main(["eval", str(SHAPES), "--outputs", str(folder), "--out", str(out), "--skip-bad"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["skipped"] == 1 and results["unreadable"] == 1 and results["n"] == 22
    capsys.readouterr()
    fake.unlink()
    assert main(["eval", str(SHAPES), "--outputs", str(folder), "--out", str(out)]) == 2
    message = error_line(capsys)
    assert f"{meta}:1: unknown tag 'bogus_tag'" in message

    meta.write_text('{"tag": "colors", "include": [\n')
    assert main(["eval", str(SHAPES), "--outputs", str(folder), "--out", str(out)]) == 2
    assert f"{meta}:1: malformed JSON" in error_line(capsys)
    shutil.rmtree(folder / "00005" / "samples")
    meta.write_text(json.dumps(row) + "\n")
    assert main(["eval", str(SHAPES), "--outputs", str(folder), "--out", str(out)]) == 2
    assert f"{folder / '00005' / 'samples'}: no images" in error_line(capsys)


def test_an_unreadable_image_is_a_failed_sample_unless_excluded(shapes_folder, tmp_path, capsys):
    """One broken file of six must not give 1.0 on the other five: with --skip-bad it is a failed
    sample (score 0, its reason reported); --exclude-unreadable leaves it out, and says so."""
    folder = tmp_path / "six"
    rows = shapes_rows(1)[:3]  # 3 prompts x 2 images
    write_geneval_folder(folder, rows, images_per_row=2, seed=4)
    broken = folder / "00001" / "samples" / "0000.png"
    broken.write_bytes(broken.read_bytes()[:40])  # a PNG cut off after its header
    tag = rows[1]["tag"]
    out = tmp_path / "out"
    assert main(["eval", str(SHAPES), "--outputs", str(folder), "--out", str(out)]) == 2
    assert f"{broken}: " in error_line(capsys)

    assert main(["eval", str(SHAPES), "--outputs", str(folder), "--out", str(out), "--skip-bad", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["n"] == 6 and results["unreadable"] == 1 and results["excluded"] == 0 and results["skipped"] == 0
    assert results["metrics"][tag] == 0.5 and results["metrics"]["overall"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert results["unreadable_reasons"][0].startswith(f"{broken}: ")
    samples = read_jsonl(out / "samples.jsonl")
    bad = [s for s in samples if (s["index"], s["sample"]) == (1, 0)]
    assert len(bad) == 1 and bad[0]["correct"] is False and bad[0]["reason"].startswith("unreadable image: ") and bad[0]["unreadable"]
    assert "1 unreadable image scored as a failure" in (out / "report.html").read_text()
    printed = capsys.readouterr()
    assert "1 unreadable image scored as a failure" in printed.err and "1 unreadable image scored as a failure" in printed.out

    out2 = tmp_path / "out2"
    assert main(["eval", str(SHAPES), "--outputs", str(folder), "--out", str(out2), "--exclude-unreadable", "--no-progress"]) == 0
    results = json.loads((out2 / "results.json").read_text())
    assert results["n"] == 5 and results["unreadable"] == 1 and results["excluded"] == 1 and results["metrics"]["overall"] == 1.0
    assert len(read_jsonl(out2 / "samples.jsonl")) == 5
    assert "1 unreadable image excluded" in (out2 / "report.html").read_text()
    printed = capsys.readouterr()
    assert "1 unreadable image excluded" in printed.err and "1 unreadable image excluded" in printed.out


def test_a_text_model_on_an_image_suite_is_a_clear_error(tmp_path, capsys):
    assert main(["eval", str(SHAPES), "--model", "arith-small", "--out", str(tmp_path / "o")]) == 2
    line = error_line(capsys)
    assert "too small for the image codes" in line and "not a text-to-image model" in line


# -- text generation (--model) -----------------------------------------------------------------------
def test_text_model_generates_then_scores(tmp_path):
    from maskgrpo.backbones.transformer import MaskedTransformer
    from maskgrpo.tokenizers.char import CharTokenizer

    tokenizer = CharTokenizer()
    model = MaskedTransformer(tokenizer.vocab_size, tokenizer.mask_token_id, max_length=32, d_model=32, n_layers=1, n_heads=2)
    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = [{"q": f"{a}+{b}=", "a": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 1), (2, 2), (7, 1)]]
    write_jsonl(tmp_path / "arith.jsonl", data)
    suite = tmp_path / "arith.yaml"
    suite.write_text(
        "name: tiny-arith\nmodality: text\ndata: arith.jsonl\nfields: {prompt: q, answer: a}\n"
        "metrics: [{type: math_accuracy}]\n"
        "sampler: {type: low_confidence, gen_length: 8, block_length: 4, steps: 4}\n"
        "samples_per_prompt: 2\n"
    )
    out = tmp_path / "out"
    argv = ["eval", str(suite), "--model", str(model_dir), "--out", str(out), "--device", "cpu", "--batch-size", "4"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["n"] == 2 * len(data) and results["prompts"] == len(data) and results["samples_per_prompt"] == 2
    assert 0.0 <= results["metrics"]["accuracy"] <= 1.0 and results["generation_seconds"] > 0
    samples = read_jsonl(out / "samples.jsonl")
    assert [(s["index"], s["sample"]) for s in samples] == [(i, k) for i in range(len(data)) for k in range(2)]
    assert all(isinstance(s["completion"], str) and s["answer"] == data[s["index"]]["a"] for s in samples)
    assert (out / "failures.md").is_file()
    # samples.jsonl is itself a valid --outputs file: rescoring it gives the same numbers
    again = evaluate_suite(suite, outputs=out / "samples.jsonl", out=tmp_path / "again", progress=False)
    assert again["metrics"] == results["metrics"]
