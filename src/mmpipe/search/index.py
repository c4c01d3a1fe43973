"""An embedded vector index of embedding jobs' output: INDEX_DIR holds a LanceDB table of image
vectors (with ids, uris, captions) and ``_index.json``, which says what model made the vectors
and which shards of which output folders the table mirrors.

Indexing again syncs the table with the folders' committed shards: new shards are added, a
shard rewritten since (an ``--overwrite`` run) has its rows replaced, a shard gone has its rows
removed; nothing else is read. Rows are tagged with their shard, and a shard's rows are deleted
before they are added, so an indexing run killed between the table write and ``_index.json``
leaves no duplicate behind when re-run.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import MmpipeError
from ..sinks.output_dir import OutputDir
from ..atomic import atomic_path

TABLE = "items"
META = "_index.json"
# Below this many rows an exact scan answers in tens of milliseconds on two cores; above it an
# IVF-PQ index (re-ranked exactly) keeps a query at a few milliseconds.
ANN_MIN_ROWS = 25_000


class SearchIndexError(MmpipeError):
    """An index that cannot be built from, or opened with, what was given."""


@dataclass
class IndexMeta:
    model: str
    dimension: int
    random_weights: bool
    # output folder (absolute) → shard name → {"rows", "size", "mtime_ns"} of the indexed shard
    sources: dict[str, dict[str, dict]] = field(default_factory=dict)
    rows: int = 0
    ann: dict | None = None  # the ANN index's settings once built
    # A caption and its text vector from the shards: lets a searcher check that the model it
    # loaded reproduces the index's vectors (the same spec may name other weights elsewhere).
    probe: dict | None = None

    @classmethod
    def read(cls, folder: Path) -> "IndexMeta":
        path = folder / META
        if not path.is_file():
            raise SearchIndexError(f"{folder}: not an mmpipe index (no {META}; make one with "
                              "'mmpipe index OUT_DIR --to INDEX_DIR')")
        return cls(**json.loads(path.read_text()))

    def write(self, folder: Path) -> None:
        with atomic_path(folder / META) as tmp:
            tmp.write_text(json.dumps(self.__dict__, indent=2) + "\n")


@dataclass(frozen=True)
class IndexReport:
    path: Path
    rows: int
    added_shards: int
    replaced_shards: int
    removed_shards: int
    added_rows: int
    skipped_rows: int  # error rows and rows without an image vector
    ann: dict | None


def build_index(out_dirs: Sequence[str | os.PathLike], to: str | os.PathLike,
                ann_min_rows: int = ANN_MIN_ROWS,
                on_step: Callable[[str, int, int], None] | None = None) -> IndexReport:
    """Sync the LanceDB table under ``to`` with the committed shards of ``out_dirs``.

    ``on_step(what, done, total)`` hears of each shard indexed and of the ANN index build."""
    import lancedb

    step = on_step or (lambda what, done, total: None)
    folder = Path(to)
    manifests = {Path(d).resolve(): _embed_manifest(Path(d)) for d in out_dirs}
    folder.mkdir(parents=True, exist_ok=True)
    meta = _meta_for(folder, manifests)
    db = lancedb.connect(str(folder))
    table = db.open_table(TABLE) if TABLE in db.table_names() else None
    plans = [_plan(out_dir, meta.sources.setdefault(str(out_dir), {})) for out_dir in manifests]
    total = sum(len(p.todo) for p in plans)
    counts = dict(added=0, replaced=0, removed=0, rows=0, skipped=0)
    done = 0
    for plan in plans:
        indexed = meta.sources[str(plan.out_dir)]
        if table is not None and (plan.stale or plan.todo):
            keys = ", ".join(_quote(f"{plan.out_dir}/{s}") for s in sorted({*plan.stale, *plan.todo}))
            table.delete(f"shard IN ({keys})")
        for s in plan.stale:
            counts["replaced" if s in plan.current else "removed"] += 1
            del indexed[s]
        for s in plan.todo:
            step("indexing shards", done, total)
            rows, skipped = _index_rows(plan.out_dir / s, f"{plan.out_dir}/{s}", meta.dimension)
            if meta.probe is None:
                meta.probe = _probe(plan.out_dir / s)
            if rows.num_rows:
                if table is None:
                    table = db.create_table(TABLE, rows)
                else:
                    table.add(rows)
            indexed[s] = plan.current[s]
            counts["added"] += s not in plan.stale
            counts["rows"] += rows.num_rows
            counts["skipped"] += skipped
            done += 1
    step("indexing shards", total, total)
    meta.rows = table.count_rows() if table is not None else 0
    if table is not None and (partitions := _ann_partitions(meta, ann_min_rows)):
        step(f"building the ANN index over {meta.rows} rows", 0, 1)
        meta.ann = _build_ann(table, meta.rows, partitions)
        step(f"building the ANN index over {meta.rows} rows", 1, 1)
    elif table is not None and (counts["rows"] or counts["replaced"] or counts["removed"]):
        table.optimize()  # compacts the shards' small fragments, folds new rows into the ANN index
    meta.write(folder)
    return IndexReport(folder, meta.rows, counts["added"], counts["replaced"], counts["removed"],
                       counts["rows"], counts["skipped"], meta.ann)


@dataclass(frozen=True)
class _Plan:
    out_dir: Path
    current: dict[str, dict]  # committed shard → fingerprint
    stale: list[str]  # indexed shards rewritten or gone since
    todo: list[str]  # shards to (re)index


def _plan(out_dir: Path, indexed: dict[str, dict]) -> _Plan:
    current = {p.name: _fingerprint(p) for p in OutputDir(out_dir).committed_shards()}
    return _Plan(out_dir, current, stale=[s for s in indexed if current.get(s) != indexed[s]],
                 todo=sorted(s for s in current if indexed.get(s) != current[s]))


def open_table(folder: Path):
    import lancedb

    db = lancedb.connect(str(folder))
    if TABLE not in db.table_names():
        raise SearchIndexError(f"{folder}: the index holds no rows yet (its output folders had no "
                          "image vectors)")
    return db.open_table(TABLE)


def _embed_manifest(out_dir: Path) -> dict:
    manifest = OutputDir(out_dir).read_manifest() if out_dir.is_dir() else None
    if manifest is None:
        raise SearchIndexError(f"{out_dir}: not an mmpipe output folder (no _manifest.json; make one "
                          "with 'mmpipe embed INPUT --out OUT_DIR')")
    if manifest.get("job") != "embed":
        raise SearchIndexError(f"{out_dir}: holds '{manifest.get('job')}' output; only 'mmpipe embed' "
                          "output has vectors to index")
    return manifest


def _meta_for(folder: Path, manifests: dict[Path, dict]) -> IndexMeta:
    """The index's metadata, checking that every folder's vectors come from the index's model."""
    first = next(iter(manifests.values()))
    meta = (IndexMeta.read(folder) if (folder / META).is_file() else
            IndexMeta(model=first["model"], dimension=int(first["dimension"]),
                      random_weights=bool(first.get("random_weights"))))
    for out_dir, manifest in manifests.items():
        if (manifest["model"], int(manifest["dimension"])) != (meta.model, meta.dimension):
            raise SearchIndexError(f"{out_dir} was embedded with {manifest['model']} "
                              f"({manifest['dimension']} dims) but {folder} holds vectors of "
                              f"{meta.model} ({meta.dimension} dims); index it into another --to")
    return meta


def _fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _index_rows(path: Path, shard: str, dim: int) -> tuple[pa.Table, int]:
    """A shard's rows that have an image vector, as the index table's rows."""
    shard_table = pq.read_table(path, columns=["id", "uri", "text", "width", "height",
                                               "image_embedding"])
    keep = shard_table.filter(pc.is_valid(shard_table["image_embedding"]))
    vectors = keep["image_embedding"].combine_chunks()
    if vectors.type.list_size != dim:
        raise SearchIndexError(f"{path}: vectors of {vectors.type.list_size} dims, the index's have {dim}")
    table = pa.table({
        "id": keep["id"], "uri": keep["uri"], "text": keep["text"],
        "width": keep["width"], "height": keep["height"],
        "shard": pa.array([shard] * keep.num_rows, pa.string()),
        "vector": vectors,
    })
    return table, shard_table.num_rows - keep.num_rows


def _probe(path: Path) -> dict | None:
    table = pq.read_table(path, columns=["text", "text_embedding"])
    table = table.filter(pc.and_(pc.is_valid(table["text_embedding"]), pc.is_valid(table["text"])))
    if not table.num_rows:
        return None
    return {"text": table["text"][0].as_py(),
            "vector": np.asarray(table["text_embedding"][0].as_py(), np.float32).round(6).tolist()}


def _ann_partitions(meta: IndexMeta, ann_min_rows: int) -> int | None:
    """The partition count a (re)built ANN index should have, or None when none is needed: the
    index is built once the table reaches ``ann_min_rows`` and rebuilt when it has grown 4×
    since (optimize() adds rows to the old partitions, which then grow too coarse).

    √rows partitions: on 100k clustered 512-d vectors 256 partitions, probed 5 % and re-ranked,
    gave recall@20 1.000 at 5 ms, where 24 partitions needed a third probed for 0.99
    (benchmarks/search_latency.py)."""
    if meta.rows < ann_min_rows:
        return None
    built_for = (meta.ann or {}).get("rows", 0)
    if built_for and meta.rows < 4 * built_for:
        return None
    return max(1, round(meta.rows ** 0.5))


def _build_ann(table, rows: int, partitions: int) -> dict:
    from lancedb.index import IvfPq

    dim = table.schema.field("vector").type.list_size
    # 8 dimensions per PQ code byte: 64 bytes per 512-d vector; re-ranking restores exactness.
    sub_vectors = max(1, dim // 8) if dim % 8 == 0 else 1
    table.create_index("vector", config=IvfPq(distance_type="cosine", num_partitions=partitions,
                                              num_sub_vectors=sub_vectors), replace=True)
    return {"type": "IVF_PQ", "rows": rows, "partitions": partitions, "sub_vectors": sub_vectors}
