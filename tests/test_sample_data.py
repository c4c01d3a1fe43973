from pathlib import Path

import pytest
from PIL import Image

from mmpipe.sample_data import BROKEN_FILES, MARKER, SOURCES, make_sample_images

pytest.importorskip("skimage")


def images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in (".jpg", ".png") and p.name not in BROKEN_FILES)


def test_counts_captions_and_broken_files(tmp_path):
    folder = make_sample_images(tmp_path / "s", n=30)
    made = images(folder)
    assert len(made) == 30
    assert {p.suffix for p in made} == {".jpg", ".png"}
    for p in made:
        caption = p.with_suffix(".txt").read_text().strip()
        source = next(s for s in SOURCES if p.stem.endswith(Path(s.file).stem))
        assert caption.startswith(source.caption)
    assert {p.stem.split("_", 1)[1] for p in made} == {Path(s.file).stem for s in SOURCES}
    truncated, empty = (folder / name for name in BROKEN_FILES)
    assert empty.stat().st_size == 0
    assert truncated.read_bytes()[:2] == b"\xff\xd8" and not truncated.read_bytes().endswith(b"\xff\xd9")
    with pytest.raises(OSError):
        Image.open(truncated).load()


def test_sizes_vary_or_are_exact(tmp_path):
    sizes = {Image.open(p).size for p in images(make_sample_images(tmp_path / "v", n=20, broken=False))}
    assert len(sizes) > 10
    assert all(16 <= min(s) and max(s) <= 900 for s in sizes)
    exact = make_sample_images(tmp_path / "e", n=12, size=(640, 480), captions=False, broken=False,
                               png_share=0)
    made = images(exact)
    assert [p.suffix for p in made] == [".jpg"] * 12
    assert {Image.open(p).size for p in made} == {(640, 480)}
    assert not list(exact.glob("*.txt")) and not any((exact / b).exists() for b in BROKEN_FILES)


def test_deterministic_for_a_seed(tmp_path):
    a = make_sample_images(tmp_path / "a", n=10, seed=3)
    b = make_sample_images(tmp_path / "b", n=10, seed=3)
    c = make_sample_images(tmp_path / "c", n=10, seed=4)
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any(not (c / f).exists() or (a / f).read_bytes() != (c / f).read_bytes()
               for f in files if f != MARKER)


def test_a_finished_folder_is_reused_and_a_changed_one_remade(tmp_path):
    folder = make_sample_images(tmp_path / "s", n=8)
    first = images(folder)[0]
    mtime = first.stat().st_mtime_ns
    make_sample_images(folder, n=8)
    assert first.stat().st_mtime_ns == mtime  # not made again
    make_sample_images(folder, n=5, broken=False)
    assert len(images(folder)) == 5 and len(list(folder.glob("*.txt"))) == 5
    assert not any((folder / b).exists() for b in BROKEN_FILES)
