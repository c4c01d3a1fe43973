import json

import pytest

import mmpipe
from mmpipe.cli import main
from mmpipe.demo import describe_output, run_demo

pytest.importorskip("skimage")


@pytest.mark.slow
def test_run_demo_embeds_samples_and_resumes(tmp_path, tiny_model_spec):
    lines = []
    result = run_demo(tmp_path / "demo", n=12, model=tiny_model_spec, progress=False,
                      moderation=False, notify=lines.append)
    assert (result.job.ok, result.job.errors) == (12, 2) and result.moderation is None
    assert result.made_images and not result.fell_back and result.model == tiny_model_spec
    table = mmpipe.read_output(tmp_path / "demo" / "embeddings")
    assert table.num_rows == 14
    assert sum(t is not None for t in table["text"].to_pylist()) == 12
    assert sorted(e.split(":")[0] for e in table["error"].to_pylist() if e) == ["decode", "decode"]
    guide = "\n".join(describe_output(result))
    assert "part-00000.parquet" in guide and "_manifest.json" in guide and "stats.json" in guide
    assert "mmpipe.read_output(" in guide

    again = run_demo(tmp_path / "demo", n=12, model=tiny_model_spec, progress=False,
                     moderation=False, notify=lines.append)
    assert not again.made_images and (again.job.ok, again.job.errors, again.job.skipped) == (0, 0, 14)


@pytest.mark.slow
def test_run_demo_falls_back_in_one_line_when_the_model_cannot_load(tmp_path, tiny_model_spec):
    lines = []
    result = run_demo(tmp_path / "demo", n=3, model=f"path:{tmp_path / 'missing'}",
                      fallback=tiny_model_spec, progress=False, moderation=False,
                      notify=lines.append)
    assert result.fell_back and result.model == tiny_model_spec and result.job.ok == 3
    fallback_lines = [line for line in lines if "falling back" in line]
    assert len(fallback_lines) == 1 and "could not load" in fallback_lines[0]


@pytest.mark.slow
def test_run_demo_without_fallback_raises(tmp_path):
    with pytest.raises(mmpipe.ModelLoadError):
        run_demo(tmp_path / "demo", n=2, model=f"path:{tmp_path / 'missing'}", progress=False,
                 moderation=False, notify=lambda line: None)


@pytest.mark.slow
def test_demo_command_moderates_the_sample_set_for_real(tmp_path, tiny_model_spec, capsys):
    main(["demo", "--out", str(tmp_path / "d"), "--n", "4", "--model", tiny_model_spec, "--no-progress"])
    stderr = capsys.readouterr().err
    assert "embedded 6 items: 4 ok, 2 errors" in stderr
    assert "mmpipe.read_output(" in stderr and "report.html" in stderr
    rows = {r["id"]: r for r in mmpipe.read_output(tmp_path / "d" / "moderation").to_pylist()}
    offensive = [r for k, r in rows.items() if k.startswith("text_images/offensive")]
    clean = [r for k, r in rows.items() if k.startswith("text_images/clean")]
    assert offensive and all(r["action"] == "block" for r in offensive)
    assert clean and all(r["action"] == "allow" for r in clean)
    overlay = rows["videos/overlay.mp4"]
    assert overlay["action"] == "block" and any(3 <= s["start"] + 0.5 <= 5.5 for s in overlay["segments"])
    assert rows["videos/animated.gif"]["action"] == "block"
    assert rows["comment-000"]["action"] == "allow"
    manifest = json.loads((tmp_path / "d" / "embeddings" / "_manifest.json").read_text())
    assert manifest["random_weights"] is False
