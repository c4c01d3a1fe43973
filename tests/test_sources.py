"""Every input kind of ``mmpipe embed``, end to end with the tiny CLIP.

Real components only: files on disk, tar shards, a moto S3 server and an HTTP server, both on
127.0.0.1.
"""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mmpipe
from mmpipe import ConfigError
from conftest import QuietHandler, local_http_server, photo

SIZE = (96, 64)  # photo()'s default size


def run(input, out: Path, spec: str, **options) -> tuple[mmpipe.JobResult, dict[str, dict]]:
    result = mmpipe.embed(str(input), str(out), model=spec, batch_size=4, progress=False, **options)
    rows = {r["id"]: r for r in mmpipe.read_output(out).to_pylist()}
    assert len(rows) == result.ok + result.errors
    for row in rows.values():
        if row["error"] is None:
            # An ok row has the vectors its inputs call for, and only those.
            assert (row["image_embedding"] is not None) == (row["width"] is not None)
            assert (row["text_embedding"] is not None) == (row["text"] is not None)
            assert row["image_embedding"] is not None or row["text_embedding"] is not None
        else:
            assert row["image_embedding"] is None and row["text_embedding"] is None
    return result, rows


def image_bytes(seed: int, fmt: str = "PNG", size=SIZE) -> bytes:
    buf = io.BytesIO()
    photo(seed, size).save(buf, fmt)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------- folders


def test_directory_recursive_with_sidecar_captions(image_dir, tiny_model_spec, tmp_path):
    photo(50, (40, 30)).save(image_dir / "sub" / "UPPER.PNG")
    (image_dir / "sub" / "UPPER.txt").write_text("  caption with spaces\n")
    photo(51).save(image_dir / ".hidden.png")
    (image_dir / "notes.md").write_text("not an image")
    (image_dir / "orphan.txt").write_text("a caption with no image")
    (image_dir / "broken.jpg").write_bytes(b"not a jpeg at all")

    result, rows = run(image_dir, tmp_path / "out", tiny_model_spec)

    assert (result.ok, result.errors) == (9, 1)
    assert sorted(rows) == ["broken.jpg", "img1.jpg", "img2.png", "img4.png", "img5.jpg",
                            "img7.jpg", "sub/UPPER.PNG", "sub/img0.png", "sub/img3.jpg",
                            "sub/img6.png"]
    captions = {i: r["text"] for i, r in rows.items()}
    assert captions == {
        "broken.jpg": None, "img1.jpg": None, "img5.jpg": None, "img7.jpg": None,
        "sub/img3.jpg": None,
        "img2.png": "a picture number 2", "img4.png": "a picture number 4",
        "sub/img0.png": "a picture number 0", "sub/img6.png": "a picture number 6",
        "sub/UPPER.PNG": "caption with spaces"}
    for id_, row in rows.items():
        assert row["uri"] == (image_dir / id_).as_uri()
        if id_ != "broken.jpg":
            assert (row["width"], row["height"]) == ((40, 30) if id_ == "sub/UPPER.PNG" else SIZE)
    broken = rows["broken.jpg"]
    assert broken["error"].startswith("decode:") and broken["width"] is None


def test_directory_with_trailing_slash_gives_the_same_ids(image_dir, tiny_model_spec, tmp_path):
    _, rows = run(f"{image_dir}/", tmp_path / "out", tiny_model_spec)
    assert "sub/img0.png" in rows and len(rows) == 8


def test_glob_ids_are_relative_to_its_base(image_dir, tiny_model_spec, tmp_path):
    _, rows = run(image_dir / "*.jpg", tmp_path / "jpg", tiny_model_spec)
    assert sorted(rows) == ["img1.jpg", "img5.jpg", "img7.jpg"]  # not recursive
    assert all(r["error"] is None and (r["width"], r["height"]) == SIZE for r in rows.values())

    _, rows = run(image_dir / "sub" / "*", tmp_path / "sub", tiny_model_spec)
    assert sorted(rows) == ["img0.png", "img3.jpg", "img6.png"]
    assert rows["img0.png"]["text"] == "a picture number 0"


def test_glob_keeps_sidecar_captions_it_does_not_match(image_dir, tiny_model_spec, tmp_path):
    _, rows = run(image_dir / "**" / "*.png", tmp_path / "out", tiny_model_spec)
    assert {i: r["text"] for i, r in rows.items()} == {
        "img2.png": "a picture number 2", "img4.png": "a picture number 4",
        "sub/img0.png": "a picture number 0", "sub/img6.png": "a picture number 6"}


def test_glob_without_matches_names_input(image_dir, tiny_model_spec, tmp_path):
    with pytest.raises(ConfigError) as info:
        mmpipe.embed(str(image_dir / "*.webp"), str(tmp_path / "out"), model=tiny_model_spec,
                     progress=False)
    assert info.value.field == "INPUT"


def test_missing_input_names_input(tiny_model_spec, tmp_path):
    for missing in ("nope", "nope.csv", "nope.tar"):
        with pytest.raises(ConfigError) as info:
            mmpipe.embed(str(tmp_path / missing), str(tmp_path / "out"), model=tiny_model_spec,
                         progress=False)
        assert info.value.field == "INPUT"


# -------------------------------------------------------------------------------- manifests


@pytest.fixture
def manifest_dir(tmp_path) -> Path:
    """A manifest folder with images beside it (imgs/) and one outside it (elsewhere/)."""
    folder = tmp_path / "m"
    (folder / "imgs").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    photo(1).save(folder / "imgs" / "a.png")
    photo(2, (50, 70)).save(folder / "imgs" / "b.jpg")
    photo(3).save(folder / "imgs" / "c.png")
    photo(4, (33, 44)).save(tmp_path / "elsewhere" / "e.png")
    return folder


def test_csv_manifest(manifest_dir, tiny_model_spec, tmp_path):
    absolute = manifest_dir / "imgs" / "c.png"
    (manifest_dir / "list.csv").write_text(
        "id,image,caption\n"
        "a,imgs/a.png,first caption\n"
        "b,imgs/b.jpg,\n"
        "t,,only text\n"
        f"abs,{absolute},absolute path\n"
        "up,../elsewhere/e.png,outside the manifest folder\n"
        "missing,imgs/nope.png,gone\n"
        ",imgs/c.png,no id\n"
        "empty,,\n")
    result, rows = run(manifest_dir / "list.csv", tmp_path / "out", tiny_model_spec)

    assert (result.ok, result.errors) == (6, 2)
    assert sorted(rows) == ["a", "abs", "b", "empty", "missing", "row-6", "t", "up"]
    assert rows["a"]["text"] == "first caption" and rows["b"]["text"] is None
    assert rows["a"]["uri"] == (manifest_dir / "imgs" / "a.png").as_uri()
    assert (rows["b"]["width"], rows["b"]["height"]) == (50, 70)
    assert (rows["up"]["width"], rows["up"]["height"]) == (33, 44)
    assert rows["abs"]["uri"] == absolute.as_uri() and rows["abs"]["error"] is None
    assert rows["row-6"]["text"] == "no id" and rows["row-6"]["error"] is None
    text_only = rows["t"]
    assert text_only["text"] == "only text" and text_only["uri"] is None
    assert text_only["image_embedding"] is None and text_only["text_embedding"] is not None
    assert text_only["width"] is None and text_only["error"] is None
    assert rows["missing"]["error"].startswith("read:")
    assert rows["missing"]["text"] == "gone"
    assert "neither an image nor a text" in rows["empty"]["error"]


def test_jsonl_manifest_text_only_first_and_bad_lines(manifest_dir, tiny_model_spec, tmp_path):
    lines = [
        json.dumps({"id": "t0", "text": "text before any image"}),
        json.dumps({"id": "i1", "image": "imgs/a.png", "text": "a caption"}),
        "this is {not json",
        json.dumps([1, 2, 3]),
        "",
        json.dumps({"id": "i2", "image": "imgs/b.jpg"}),
        json.dumps({"id": 7, "image": "imgs/c.png", "text": None}),
    ]
    (manifest_dir / "list.jsonl").write_text("\n".join(lines) + "\n")
    result, rows = run(manifest_dir / "list.jsonl", tmp_path / "out", tiny_model_spec)

    assert (result.ok, result.errors) == (4, 2)
    assert rows["t0"]["text"] == "text before any image" and rows["t0"]["image_embedding"] is None
    assert rows["i1"]["text"] == "a caption" and rows["i1"]["image_embedding"] is not None
    assert (rows["i2"]["width"], rows["i2"]["height"]) == (50, 70) and rows["i2"]["text"] is None
    assert rows["7"]["error"] is None and rows["7"]["text"] is None
    assert "invalid JSON" in rows["row-2"]["error"]
    assert "not a JSON object" in rows["row-3"]["error"]


def test_jsonl_manifest_whose_first_line_is_broken(manifest_dir, tiny_model_spec, tmp_path):
    lines = ["{broken", json.dumps({"id": "i1", "image": "imgs/a.png", "caption": "cap"})]
    (manifest_dir / "list.jsonl").write_text("\n".join(lines) + "\n")
    result, rows = run(manifest_dir / "list.jsonl", tmp_path / "out", tiny_model_spec)
    assert (result.ok, result.errors) == (1, 1)
    assert rows["i1"]["text"] == "cap" and rows["i1"]["image_embedding"] is not None
    assert "invalid JSON" in rows["row-0"]["error"]


def _parquet_manifest(folder: Path) -> Path:
    # Decoy columns with default names, so only the overrides find the real data.
    table = pa.table({
        "uid": pa.array([1, 2, 3], pa.int64()),
        "file": ["imgs/a.png", "imgs/b.jpg", None],
        "desc": ["parquet caption", None, "parquet text only"],
        "image": ["imgs/nope1.png", "imgs/nope2.png", "imgs/nope3.png"],
        "text": ["decoy", "decoy", "decoy"],
        "id": ["x", "y", "z"],
    })
    path = folder / "list.parquet"
    pq.write_table(table, path, row_group_size=2)
    return path


def test_parquet_manifest_with_column_overrides(manifest_dir, tiny_model_spec, tmp_path):
    path = _parquet_manifest(manifest_dir)
    result, rows = run(path, tmp_path / "out", tiny_model_spec,
                       id_column="uid", image_column="file", text_column="desc")
    assert (result.ok, result.errors) == (3, 0)
    assert sorted(rows) == ["1", "2", "3"]
    assert rows["1"]["text"] == "parquet caption" and rows["1"]["image_embedding"] is not None
    assert rows["2"]["text"] is None and (rows["2"]["width"], rows["2"]["height"]) == (50, 70)
    assert rows["3"]["text"] == "parquet text only" and rows["3"]["image_embedding"] is None


def test_parquet_manifest_default_columns(manifest_dir, tiny_model_spec, tmp_path):
    result, rows = run(_parquet_manifest(manifest_dir), tmp_path / "out", tiny_model_spec)
    assert sorted(rows) == ["x", "y", "z"] and result.errors == 3
    assert all(r["text"] == "decoy" and r["error"].startswith("read:") for r in rows.values())


def _write_manifest(folder: Path, kind: str) -> Path:
    rows = [{"id": "a", "image": "imgs/a.png", "caption": "c"}]
    path = folder / f"list.{kind}"
    if kind == "csv":
        path.write_text("id,image,caption\na,imgs/a.png,c\n")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize("flag", ["id_column", "image_column", "text_column"])
def test_missing_named_column_names_the_flag(manifest_dir, tiny_model_spec, tmp_path, kind, flag):
    path = _write_manifest(manifest_dir, kind)
    with pytest.raises(ConfigError) as info:
        mmpipe.embed(str(path), str(tmp_path / "out"), model=tiny_model_spec, progress=False,
                     **{flag: "no_such_column"})
    assert info.value.field == "--" + flag.replace("_", "-")
    assert "no_such_column" in str(info.value) and "caption" in str(info.value)
    assert not (tmp_path / "out").exists()  # refused before the job starts


def test_manifest_without_image_or_text_column(manifest_dir, tiny_model_spec, tmp_path):
    (manifest_dir / "list.csv").write_text("id,label\na,cat\n")
    with pytest.raises(ConfigError) as info:
        mmpipe.embed(str(manifest_dir / "list.csv"), str(tmp_path / "out"), model=tiny_model_spec,
                     progress=False)
    assert info.value.field == "--image-column" and "label" in str(info.value)


def test_empty_manifest_is_an_empty_job(manifest_dir, tiny_model_spec, tmp_path):
    (manifest_dir / "list.jsonl").write_text("")
    result = mmpipe.embed(str(manifest_dir / "list.jsonl"), str(tmp_path / "out"),
                          model=tiny_model_spec, progress=False)
    assert (result.ok, result.errors) == (0, 0)


# ------------------------------------------------------------------------------ tar shards


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def shard_members(offset: int = 0) -> list[tuple[str, bytes]]:
    return [
        ("s000.jpg", image_bytes(offset, "JPEG")),
        ("s000.txt", b"caption from txt\n"),
        ("s001.png", image_bytes(offset + 1)),
        ("s001.json", json.dumps({"caption": "caption from json", "other": 1}).encode()),
        ("s002.txt", b"a text-only sample"),
        ("s003.cls", b"7"),
        ("part.a/s004.seg.png", image_bytes(offset + 4, size=(40, 20))),
        ("part.a/s004.json", json.dumps({"text": "json text field"}).encode()),
        ("s005.png", image_bytes(offset + 5)),
        ("s005.json", b"{not json"),
    ]


def test_webdataset_shard(tiny_model_spec, tmp_path):
    shard = write_tar(tmp_path / "shard-000.tar", shard_members())
    result, rows = run(shard, tmp_path / "out", tiny_model_spec)

    assert (result.ok, result.errors) == (5, 1)
    prefix = "shard-000.tar/"
    assert sorted(rows) == [prefix + k for k in
                            ("part.a/s004", "s000", "s001", "s002", "s003", "s005")]
    texts = {i[len(prefix):]: r["text"] for i, r in rows.items()}
    assert texts == {"s000": "caption from txt", "s001": "caption from json",
                     "s002": "a text-only sample", "s003": None, "part.a/s004": "json text field",
                     "s005": None}
    assert rows[prefix + "s000"]["uri"] == shard.as_uri() + "#s000"
    nested = rows[prefix + "part.a/s004"]
    assert (nested["width"], nested["height"]) == (40, 20)
    assert rows[prefix + "s002"]["image_embedding"] is None
    assert rows[prefix + "s002"]["text_embedding"] is not None
    assert "no image or text member" in rows[prefix + "s003"]["error"]


def test_glob_of_shards_keeps_same_keys_apart(tiny_model_spec, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_tar(shards / "a-000.tar", [("k0.png", image_bytes(1)), ("k0.txt", b"first shard")])
    write_tar(shards / "a-001.tar", [("k0.png", image_bytes(2)), ("k0.txt", b"second shard")])
    result, rows = run(shards / "a-*.tar", tmp_path / "out", tiny_model_spec)
    assert (result.ok, result.errors) == (2, 0)
    assert {i: r["text"] for i, r in rows.items()} == {
        "a-000.tar/k0": "first shard", "a-001.tar/k0": "second shard"}
    assert rows["a-000.tar/k0"]["image_embedding"] != rows["a-001.tar/k0"]["image_embedding"]


def test_truncated_shard_keeps_what_was_read(tiny_model_spec, tmp_path):
    full = write_tar(tmp_path / "full.tar", [
        ("k0.png", image_bytes(1)), ("k0.txt", b"kept"),
        ("k1.png", image_bytes(2)), ("k1.txt", b"lost")]).read_bytes()
    cut = tmp_path / "cut.tar"
    # Cut inside k1.png's data: k0 is complete and must survive.
    cut.write_bytes(full[: full.index(b"k1.png") + 512 + 100])
    result, rows = run(cut, tmp_path / "out", tiny_model_spec)
    assert rows["cut.tar/k0"]["text"] == "kept" and rows["cut.tar/k0"]["error"] is None
    assert "cannot read tar shard" in rows["cut.tar/<unreadable>"]["error"]
    assert sorted(rows) == ["cut.tar/<unreadable>", "cut.tar/k0"]
    assert (result.ok, result.errors) == (1, 1)


def test_oversized_tar_member_is_an_error_row(tiny_model_spec, tmp_path):
    big = image_bytes(1)
    shard = write_tar(tmp_path / "s.tar", [("k0.png", big), ("k1.txt", b"small text")])
    _, rows = run(shard, tmp_path / "out", tiny_model_spec, max_bytes=len(big) - 1)
    assert "too large" in rows["s.tar/k0"]["error"]
    assert rows["s.tar/k1"]["error"] is None


# ------------------------------------------------------------------------------------- S3

BUCKET = "mmpipe-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch, request):
    """A fresh bucket; returns (boto3 client, storage_options, bucket)."""
    import boto3

    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    bucket = f"{BUCKET}-{request.node.name.replace('_', '-')[:30].strip('-').lower()}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    options = {"endpoint_url": s3_endpoint, "key": "testing", "secret": "testing"}
    return client, options, bucket


@pytest.mark.slow
def test_s3_folder_and_manifest(s3, tiny_model_spec, tmp_path):
    client, options, bucket = s3
    for i in range(4):
        fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
        key = f"images/{'sub/' if i == 3 else ''}img{i}.{ext}"
        client.put_object(Bucket=bucket, Key=key, Body=image_bytes(i, fmt))
        if i % 2 == 0:
            client.put_object(Bucket=bucket, Key=key.rsplit(".", 1)[0] + ".txt",
                              Body=f"s3 caption {i}".encode())

    result, rows = run(f"s3://{bucket}/images", tmp_path / "dir", tiny_model_spec,
                       storage_options=options)
    assert (result.ok, result.errors) == (4, 0)
    assert sorted(rows) == ["img0.png", "img1.jpg", "img2.png", "sub/img3.jpg"]
    assert rows["img0.png"]["text"] == "s3 caption 0" and rows["img1.jpg"]["text"] is None
    assert rows["sub/img3.jpg"]["uri"] == f"s3://{bucket}/images/sub/img3.jpg"
    assert all((r["width"], r["height"]) == SIZE for r in rows.values())

    client.put_object(Bucket=bucket, Key="manifests/list.csv", Body=(
        "id,image,caption\n"
        "rel,../images/img0.png,relative up\n"
        f"abs,s3://{bucket}/images/img1.jpg,absolute\n"
        "gone,../images/nope.png,missing\n"
        "t,,text only\n").encode())
    result, rows = run(f"s3://{bucket}/manifests/list.csv", tmp_path / "manifest", tiny_model_spec,
                       storage_options=options)
    assert (result.ok, result.errors) == (3, 1)
    assert rows["rel"]["error"] is None and rows["rel"]["uri"] == f"s3://{bucket}/images/img0.png"
    assert rows["abs"]["error"] is None and (rows["abs"]["width"], rows["abs"]["height"]) == SIZE
    assert rows["gone"]["error"].startswith("read:")
    assert rows["t"]["text_embedding"] is not None


@pytest.mark.slow
def test_s3_urls_in_a_local_manifest_and_s3_shards(s3, tiny_model_spec, tmp_path):
    client, options, bucket = s3
    client.put_object(Bucket=bucket, Key="x/a.png", Body=image_bytes(7))
    row = {"id": "a", "url": f"s3://{bucket}/x/a.png"}
    (tmp_path / "list.jsonl").write_text(json.dumps(row) + "\n")
    result, rows = run(tmp_path / "list.jsonl", tmp_path / "out", tiny_model_spec,
                       storage_options=options)
    assert (result.ok, result.errors) == (1, 0) and rows["a"]["uri"] == f"s3://{bucket}/x/a.png"

    shard = write_tar(tmp_path / "s.tar", shard_members())
    for n in range(2):
        client.put_object(Bucket=bucket, Key=f"shards/s-{n:03d}.tar", Body=shard.read_bytes())
    result, rows = run(f"s3://{bucket}/shards/s-*.tar", tmp_path / "tars", tiny_model_spec,
                       storage_options=options)
    assert (result.ok, result.errors) == (10, 2)
    assert rows["s-001.tar/s001"]["text"] == "caption from json"
    assert rows["s-000.tar/s000"]["uri"] == f"s3://{bucket}/shards/s-000.tar#s000"


# ----------------------------------------------------------------------------------- HTTP


class _ImageHandler(QuietHandler):
    files: dict[str, bytes] = {}
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        _ImageHandler.requests.append(self.path)
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/a.png")
            self.end_headers()
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_body(404, b"not found")
        else:
            self.send_body(200, body)


@pytest.fixture(scope="module")
def http_images():
    _ImageHandler.files = {"/a.png": image_bytes(1), "/b.jpg": image_bytes(2, "JPEG", (70, 50))}
    with local_http_server(_ImageHandler) as url:
        yield url


@pytest.fixture
def url_manifest(http_images, tmp_path) -> Path:
    local = tmp_path / "local.png"
    photo(9).save(local)
    path = tmp_path / "urls.csv"
    path.write_text(
        "id,url,text\n"
        f"a,{http_images}/a.png,served over http\n"
        f"b,{http_images}/b.jpg,\n"
        f"moved,{http_images}/moved,\n"
        f"missing,{http_images}/missing.png,\n"
        f"file,{local.as_uri()},\n"
        "t,,text only\n")
    return path


def test_http_urls_with_private_allowed(url_manifest, http_images, tiny_model_spec, tmp_path):
    result, rows = run(url_manifest, tmp_path / "out", tiny_model_spec, allow_private_urls=True)
    assert (result.ok, result.errors) == (5, 1)
    assert rows["a"]["uri"] == f"{http_images}/a.png" and rows["a"]["text"] == "served over http"
    assert (rows["a"]["width"], rows["a"]["height"]) == SIZE
    assert (rows["b"]["width"], rows["b"]["height"]) == (70, 50)
    # Same image as "a"; batches differ, so the float sums may differ in the last bits.
    assert np.allclose(rows["moved"]["image_embedding"], rows["a"]["image_embedding"], atol=1e-6)
    assert rows["missing"]["error"] == "read: HTTP 404 Not Found"
    assert rows["file"]["error"] is None and rows["t"]["error"] is None


def test_http_urls_to_private_refused_per_row(url_manifest, tiny_model_spec, tmp_path):
    before = len(_ImageHandler.requests)
    result, rows = run(url_manifest, tmp_path / "out", tiny_model_spec)
    assert (result.ok, result.errors) == (1, 5)
    for id_ in ("a", "b", "moved", "missing"):
        error = rows[id_]["error"]
        assert error.startswith("read:") and "non-public address 127.0.0.1" in error, error
        assert "--allow-private-urls" in error
    assert "file:// URLs are refused" in rows["file"]["error"]
    assert rows["a"]["text"] == "served over http"  # the row keeps its identity and caption
    assert rows["t"]["error"] is None and rows["t"]["text_embedding"] is not None
    assert len(_ImageHandler.requests) == before  # nothing was fetched


def test_file_names_that_are_not_utf8_become_escaped_ids(tiny_model_spec, tmp_path):
    folder = tmp_path / "names"
    folder.mkdir()
    photo(1).save(os.fsdecode(bytes(folder) + b"/caf\xe9.jpg"), "JPEG")
    (folder / "drawing.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    result = mmpipe.embed(str(folder), str(tmp_path / "out"), model=tiny_model_spec, progress=False)
    rows = {r["id"]: r for r in mmpipe.read_output(tmp_path / "out").to_pylist()}
    assert (result.ok, result.errors) == (1, 1)
    assert rows["caf\\xe9.jpg"]["error"] is None and rows["caf\\xe9.jpg"]["image_embedding"] is not None
    assert "unsupported" in rows["drawing.svg"]["error"]
