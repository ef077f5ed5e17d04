"""An installed wheel works outside the checkout: presets, suites and the small shipped models
are package data (maskgrpo/paths.py), not files found next to the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(args)} -> {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    # Build from a copy of what the wheel is made of (setuptools writes build/ and *.egg-info
    # beside the sources); no build isolation, so no network.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "maskgrpo", src / "maskgrpo", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)], tmp_path, dict(os.environ))
    (wheel,) = (tmp_path / "dist").glob("maskgrpo-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in (
        "maskgrpo/presets/backbones.yaml",
        "maskgrpo/suites/gsm8k.yaml",
        "maskgrpo/suites/data/gsm8k_test.jsonl",
        "maskgrpo/suites/data/gsm8k_LICENSE.txt",
        "maskgrpo/checkpoints/arith-small/config.json",
        "maskgrpo/checkpoints/shapes-vq/diffusion_pytorch_model.safetensors",
    ):
        assert data in names, f"{data} is not in the wheel"
    site = tmp_path / "site"
    _run([*pip, "install", "--no-deps", "--no-compile", "-q", "--target", str(site), str(wheel)], tmp_path, dict(os.environ))

    # A folder outside the checkout; only the installed copy of maskgrpo is importable from
    # PYTHONPATH (the venv's other packages stay importable, its editable finder comes after).
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKGRPO_")}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    python = [sys.executable, "-m", "maskgrpo"]

    where = _run(
        [
            sys.executable,
            "-c",
            "import json, sys, maskgrpo; from maskgrpo.registry import backbones, load_presets; load_presets(); "
            "print(json.dumps({'file': maskgrpo.__file__, 'path': sys.path, 'preset': backbones.expand('arith-small')['path']}))",
        ],
        work,
        env,
    )
    info = json.loads(where.stdout)
    assert Path(info["file"]).is_relative_to(site)
    assert Path(info["preset"]).is_relative_to(site) and Path(info["preset"], "config.json").is_file()
    assert not any(p and Path(p).resolve() == REPO for p in info["path"]), "the checkout is on sys.path"

    listed = _run([*python, "list"], work, env).stdout
    assert "arith-small" in listed and "shapes-small" in listed and "fading_out" in listed

    recipe = work / "arith-grpo.yaml"
    shutil.copy(REPO / "recipes" / "arith-grpo.yaml", recipe)
    checked = _run([*python, "check", str(recipe)], work, env).stdout
    assert "ok (grpo recipe 'arith-grpo')" in checked and "config.json" in checked  # the model's size from the shipped config

    out = work / "eval-arith"
    _run([*python, "eval", "arith", "--model", "arith-small", "--out", str(out), "--no-progress"], work, env)
    results = json.loads((out / "results.json").read_text())
    assert Path(results["suite_file"]).is_relative_to(site) and results["n"] == 125
    assert 0.0 <= results["metrics"]["accuracy"] <= 1.0
    assert not any(work.glob("runs")), "eval --out wrote somewhere else"
