"""`pip install mmpipe` as a user runs it: a fresh venv with the core only (no extras), the exact
versions of constraints.txt, the package built from this checkout (not an editable install)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import photo

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("core") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # A copy of the checkout: building in place would leave build/ and *.egg-info behind in it.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", "-c", str(src / "constraints.txt"), str(src)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return venv


def mmpipe(venv: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "mmpipe"), *args], capture_output=True, text=True,
                          timeout=300, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", "HOME": str(venv)})


def test_the_core_has_no_extra(core_venv):
    proc = subprocess.run([str(core_venv / "bin" / "python"), "-c",
                           "import importlib.util as u; print([m for m in ('fastapi', 'lancedb', 'matplotlib', "
                           "'rapidocr_onnxruntime', 'cv2', 'sentence_transformers', 'av', 'ray') if u.find_spec(m)])"],
                          capture_output=True, text=True)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_embed_runs_on_the_core(core_venv, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        photo(i).save(images / f"{i}.jpg")
    (images / "broken.png").write_bytes(b"not a png")
    proc = mmpipe(core_venv, "embed", str(images), "--out", str(tmp_path / "out"), "--model", "random:ViT-B-32",
                  "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    assert "3 ok, 1 error" in proc.stderr


@pytest.mark.parametrize("args, extra", [
    (["moderate", "in", "--out", "out"], "moderate"),
    (["serve"], "serve"),
    (["index", "shards", "--to", "index"], "search"),
    (["search", "index", "a cat"], "search"),
    (["tune", "--model", "random:ViT-B-32", "--task", "embed"], "tune"),
    (["bank", "info", "bank"], "moderate"),
    (["demo"], "moderate,samples"),
    (["embed", "in", "--out", "out", "--engine", "ray"], "ray"),
    (["embed", "s3://bucket/images", "--out", "out", "--model", "random:ViT-B-32"], "s3"),
    (["embed", "kafka://127.0.0.1:9092/uploads", "--out", "out", "--follow", "--model", "random:ViT-B-32"],
     "kafka"),
])
def test_a_command_without_its_extra_says_how_to_install_it(core_venv, args, extra):
    proc = mmpipe(core_venv, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"pip install 'mmpipe[{extra}]'"), proc.stderr


def test_help_needs_no_extra(core_venv):
    proc = mmpipe(core_venv, "moderate", "--help")
    assert proc.returncode == 0 and "policy" in proc.stdout, proc.stderr
