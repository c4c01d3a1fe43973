"""`mmpipe index` and `mmpipe search` on real embedding output of the tiny CLIP: results equal an
exact scan of the shards' vectors, indexing is incremental and never duplicates a row, the ANN
path finds what the exact scan finds, and a model that does not match the index is refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import mmpipe
from mmpipe.errors import ConfigError
from mmpipe.search import IndexMeta, SearchIndexError, Searcher, build_index, write_results
from mmpipe.search.index import open_table
from tests.conftest import photo, save_tiny_clip

CLI = [sys.executable, "-m", "mmpipe.cli"]


def _images(folder: Path, seeds, broken: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in seeds:
        photo(i).save(folder / f"p{i:03d}.jpg")
        (folder / f"p{i:03d}.txt").write_text(f"photo number {i}")
    if broken:
        (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


def _embed(images: Path, out: Path, spec: str, **options) -> Path:
    mmpipe.embed(str(images), str(out), model=spec, progress=False, shard_size=4, **options)
    return out


def _shard_vectors(out: Path) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    table = table.filter(table["error"].is_null())
    return table["id"].to_pylist(), np.stack(table["image_embedding"].to_numpy(zero_copy_only=False))


@pytest.fixture
def embedded(tmp_path, tiny_model_spec) -> Path:
    return _embed(_images(tmp_path / "images", range(10), broken=True), tmp_path / "out", tiny_model_spec)


@pytest.mark.slow
def test_text_and_image_search_equal_an_exact_scan(embedded, tmp_path, tiny_model_spec):
    report = build_index([embedded], tmp_path / "index")
    assert (report.rows, report.added_shards, report.skipped_rows, report.ann) == (10, 3, 1, None)

    searcher = Searcher(tmp_path / "index")
    assert searcher.spec == tiny_model_spec  # read from the index, not given
    ids, vectors = _shard_vectors(embedded)
    query = searcher.query_vector("photo number 3")
    hits = searcher.search(query, k=5)
    want = np.argsort(-(vectors @ query), kind="stable")[:5]
    assert [h.id for h in hits] == [ids[i] for i in want]
    np.testing.assert_allclose([h.score for h in hits], (vectors @ query)[want], atol=1e-5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0].uri.endswith(".jpg") and hits[0].text.startswith("photo number")

    image = (tmp_path / "images" / "p007.jpg").read_bytes()
    hits = searcher.search(searcher.query_vector(image=image), k=3)
    assert hits[0].id == "p007.jpg" and hits[0].score == pytest.approx(1.0, abs=1e-5)

    both = searcher.query_vector("photo number 3", image)
    expected = query + searcher.query_vector(image=image)
    np.testing.assert_allclose(both, expected / np.linalg.norm(expected), atol=1e-6)


def test_reindexing_adds_new_shards_replaces_rewritten_ones_and_never_duplicates(tmp_path, tiny_model_spec):
    images = _images(tmp_path / "images", range(6))
    out = _embed(images, tmp_path / "out", tiny_model_spec)
    index = tmp_path / "index"
    assert build_index([out], index).added_shards == 2

    again = build_index([out], index)
    assert (again.added_shards, again.replaced_shards, again.added_rows, again.rows) == (0, 0, 0, 6)

    _images(images, range(6, 11))  # five more files: the resumed job writes new shards
    _embed(images, out, tiny_model_spec)
    grown = build_index([out], index)
    assert (grown.added_shards, grown.added_rows, grown.rows) == (2, 5, 11)

    _embed(images, out, tiny_model_spec, overwrite=True)  # every shard rewritten (3 of them)
    rewritten = build_index([out], index)
    assert (rewritten.replaced_shards, rewritten.removed_shards, rewritten.added_shards) == (3, 1, 0)
    ids = open_table(index).to_arrow()["id"].to_pylist()
    assert sorted(ids) == sorted(f"p{i:03d}.jpg" for i in range(11))

    # An indexing run killed after writing a shard's rows but before _index.json: the shard is
    # not recorded, so the next run adds it again, deleting the leftover rows first.
    meta = IndexMeta.read(index)
    meta.sources[str(out.resolve())].pop("part-00000.parquet")
    meta.write(index)
    healed = build_index([out], index)
    assert (healed.added_shards, healed.rows) == (1, 11)
    assert len(open_table(index).to_arrow()["id"].to_pylist()) == 11


@pytest.mark.slow
def test_ann_index_is_built_when_large_and_finds_what_the_exact_scan_finds(tmp_path, tiny_model_spec):
    # IVF-PQ trains 256 centroids per sub-vector, so it needs a few hundred rows.
    out = _embed(_images(tmp_path / "images", range(300)), tmp_path / "out", tiny_model_spec,
                 batch_size=64)
    report = build_index([out], tmp_path / "index", ann_min_rows=200)
    assert report.ann["type"] == "IVF_PQ" and report.ann["rows"] == 300
    assert open_table(tmp_path / "index").list_indices()

    searcher = Searcher(tmp_path / "index")
    ids, vectors = _shard_vectors(out)
    for i in (5, 150, 299):
        hits = searcher.search(vectors[i], k=10)
        exact = [ids[j] for j in np.argsort(-(vectors @ vectors[i]), kind="stable")[:10]]
        assert hits[0].id == ids[i]
        assert len(set(h.id for h in hits) & set(exact)) >= 8  # recall@10 of the re-ranked ANN

    # Rows added later join the existing ANN index (no rebuild below 4× growth) and are found.
    _embed(_images(tmp_path / "images", range(300, 320)), out, tiny_model_spec, batch_size=64)
    grown = build_index([out], tmp_path / "index", ann_min_rows=200)
    assert grown.rows == 320 and grown.ann == report.ann
    ids, vectors = _shard_vectors(out)
    new = ids.index("p310.jpg")
    assert Searcher(tmp_path / "index").search(vectors[new], k=1)[0].id == "p310.jpg"


def test_mixing_models_is_refused(tmp_path, embedded, tiny_model_spec):
    build_index([embedded], tmp_path / "index")
    other = save_tiny_clip(tmp_path / "other-clip", seed=99)
    other_out = _embed(_images(tmp_path / "more", range(20, 23)), tmp_path / "other-out", f"path:{other}")
    with pytest.raises(SearchIndexError, match="was embedded with path:.*other-clip.*holds vectors of"):
        build_index([other_out], tmp_path / "index")
    # Same shape, other weights: the indexed caption's vector is not reproduced.
    with pytest.raises(ConfigError, match="does not reproduce .* vectors"):
        Searcher(tmp_path / "index", model=f"path:{other}")
    # The same weights from another folder are accepted.
    copy = save_tiny_clip(tmp_path / "same-clip-elsewhere")
    assert Searcher(tmp_path / "index", model=f"path:{copy}").spec == f"path:{copy}"
    with pytest.raises(SearchIndexError, match="not an mmpipe output folder"):
        build_index([tmp_path / "images"], tmp_path / "index")
    with pytest.raises(SearchIndexError, match="not an mmpipe index"):
        Searcher(tmp_path / "images")


def test_html_results_embed_thumbnails(embedded, tmp_path):
    build_index([embedded], tmp_path / "index")
    searcher = Searcher(tmp_path / "index")
    hits = searcher.search(searcher.query_vector("photo <b>"), k=4)
    page = write_results(hits, tmp_path / "results.html", "photo <b>", "facts").read_text()
    assert page.count("src='data:image/jpeg;base64,") == 4
    assert "photo &lt;b&gt;" in page and "photo <b>" not in page
    assert all(h.id in page for h in hits)


@pytest.mark.slow
def test_cli_index_and_search(embedded, tmp_path):
    index = tmp_path / "index"
    run = subprocess.run([*CLI, "index", str(embedded), "--to", str(index)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "10 rows" in run.stderr and "1 rows without an image vector skipped" in run.stderr

    run = subprocess.run([*CLI, "search", str(index), "photo number 2", "-k", "3", "--json",
                          "--html", str(tmp_path / "r.html")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["rank"] for r in rows] == [1, 2, 3] and rows[0]["score"] >= rows[2]["score"]
    assert (tmp_path / "r.html").read_text().count("data:image/jpeg") == 3

    run = subprocess.run([*CLI, "search", str(index), "--image", str(tmp_path / "images" / "p004.jpg"),
                          "-k", "1", "--json"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["id"] == "p004.jpg"

    for args, field in ((["search", str(index)], "QUERY"),
                        (["search", str(index), "x", "--image", str(tmp_path / "nope.jpg")], "--image"),
                        (["search", str(index), "x", "--image", str(tmp_path / "images" / "p001.txt")], "--image"),
                        (["search", str(tmp_path / "images"), "x"], "not an mmpipe index"),
                        (["index", str(tmp_path / "images"), "--to", str(index)], "not an mmpipe output")):
        run = subprocess.run([*CLI, *args], capture_output=True, text=True)
        assert run.returncode == 2, (args, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1 and field in run.stderr, run.stderr


@pytest.mark.slow
def test_serve_answers_search_with_the_index_model(embedded, tmp_path, tiny_model_spec):
    import base64

    from mmpipe.serve.app import create_app
    from mmpipe.serve.config import Embeddings, Search, ServeConfig
    from tests.conftest import RunningServer

    index = tmp_path / "index"
    build_index([embedded], index)
    searcher = Searcher(index)
    # No embeddings model configured: the index's own model is loaded to embed queries.
    server = RunningServer(create_app(ServeConfig(search=Search(index=str(index), max_k=5))))
    try:
        status, _, body = server.post("/v1/search", {"query": "photo number 3", "k": 4})
        assert status == 200, body
        want = searcher.search(searcher.query_vector("photo number 3"), k=4)
        assert [d["id"] for d in body["data"]] == [h.id for h in want]
        np.testing.assert_allclose([d["score"] for d in body["data"]], [h.score for h in want], atol=1e-5)
        assert body["data"][0]["rank"] == 1 and body["index_rows"] == 10

        image = (tmp_path / "images" / "p006.jpg").read_bytes()
        part = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(image).decode()}}
        status, _, body = server.post("/v1/search", {"query": part, "k": 1})
        assert status == 200 and body["data"][0]["id"] == "p006.jpg"
        status, _, body = server.post("/v1/search", {"query": ["photo number 3", part], "k": 2})
        want = searcher.search(searcher.query_vector("photo number 3", image), k=2)
        assert status == 200 and [d["id"] for d in body["data"]] == [h.id for h in want]
        # The same model answers /v1/embeddings.
        status, _, body = server.post("/v1/embeddings", {"input": "photo number 3"})
        assert status == 200 and len(body["data"][0]["embedding"]) == searcher.meta.dimension

        for request, param in (({"query": "x", "k": 6}, "k"), ({"query": "x", "k": 0}, "k"),
                               ({"query": ""}, "query"), ({"query": [1]}, "query"), ({}, "query"),
                               ({"query": "x", "model": "other"}, "model")):
            status, _, body = server.post("/v1/search", request)
            assert status in (400, 404) and body["error"]["param"] == param, (request, body)
    finally:
        server.stop()

    # A server whose embeddings model is not the index's refuses to start.
    other = save_tiny_clip(tmp_path / "other-clip", seed=7)
    with pytest.raises(ConfigError, match="embeddings.model.*does not reproduce"):
        create_app(ServeConfig(embeddings=Embeddings(model=f"path:{other}"), search=Search(index=str(index))))
    with pytest.raises(ConfigError, match="search.index.*not an mmpipe index"):
        create_app(ServeConfig(search=Search(index=str(tmp_path / "images"))))


def test_serve_without_index_answers_search_404(tiny_model_spec):
    from mmpipe.serve.app import create_app
    from mmpipe.serve.config import ServeConfig
    from tests.conftest import RunningServer

    server = RunningServer(create_app(ServeConfig()))
    try:
        status, _, body = server.post("/v1/search", {"query": "x"})
        assert status == 404 and body["error"]["code"] == "index_not_found"
    finally:
        server.stop()


def test_a_siglip_index_answers_text_and_image_queries(tmp_path, tiny_siglip_spec, siglip_reference):
    images = _images(tmp_path / "images", range(6))
    out = _embed(images, tmp_path / "out", tiny_siglip_spec, fast_decode=False)
    build_index([out], tmp_path / "index")
    searcher = Searcher(tmp_path / "index")
    assert searcher.spec == tiny_siglip_spec
    query = searcher.query_vector("photo number 3")
    np.testing.assert_allclose(query, siglip_reference.text_vectors(["photo number 3"])[0], atol=1e-5)
    ids, vectors = _shard_vectors(out)
    assert [h.id for h in searcher.search(query, k=3)] == [ids[i] for i in np.argsort(-(vectors @ query))[:3]]
    hit = searcher.search(searcher.query_vector(image=(images / "p004.jpg").read_bytes()), k=1)[0]
    assert hit.id == "p004.jpg" and hit.score == pytest.approx(1.0, abs=1e-5)
