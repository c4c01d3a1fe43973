"""Text→image search latency over an N-vector index, side by side with exact search.

N unit vectors (512-d, as ViT-B/32's) are written as a real `mmpipe embed` output folder: 2,000
clusters of photos of a subject (cosine ~0.8 inside a cluster, ~0 across), since no real CLIP
model is at hand to embed 100k photos on 2 CPUs. Then, in one run:

  index      ``mmpipe.search.build_index`` (LanceDB table + IVF-PQ, timed);
  text       ``Searcher.query_vector(text)`` + ``search(k)``: text→image end to end, the query
             embedded by random:ViT-B-32's text tower (the model the index records);
  ann        ``Searcher.search(k)`` alone, on Q held-out image-like queries (new members of the
             clusters: image→image), with the recall@k of the exact answer;
  flat       the same table scanned exactly by LanceDB (what the index does below
             --ann-min-rows);
  numpy      the naive script: every vector read from the Parquet shards into RAM, one matrix
             product and argpartition per query.

    .venv/bin/python benchmarks/search_latency.py            # N=100,000, Q=300 (~4 min)
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmpipe.search import Searcher, build_index
from mmpipe.sinks.commit_log import Commit
from mmpipe.sinks.output_dir import MANIFEST, OutputDir

DIM = 512
CLUSTERS = 2000
SHARD = 10_000
TEXTS = ["a red car", "a dog on a beach", "two people hiking", "a bowl of ramen", "a city at night",
         "an astronaut", "a cat asleep on a sofa", "coins on a table", "a motorcycle", "a forest"]


def clustered(n: int, rng: np.random.Generator, centers: np.ndarray) -> np.ndarray:
    v = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, DIM), np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def write_output_dir(out: Path, vectors: np.ndarray) -> None:
    """An embed job's output folder: shards, commit log, manifest (random:ViT-B-32, 512-d)."""
    folder = OutputDir(out)
    out.mkdir(parents=True)
    vector_type = pa.list_(pa.float32(), DIM)
    for s, start in enumerate(range(0, len(vectors), SHARD)):
        chunk = vectors[start:start + SHARD]
        ids = [f"img{start + i:07d}" for i in range(len(chunk))]
        table = pa.table({
            "id": ids, "uri": [f"s3://photos/{i}.jpg" for i in ids], "text": pa.nulls(len(chunk), pa.string()),
            "image_embedding": pa.FixedSizeListArray.from_arrays(pa.array(chunk.ravel()), DIM),
            "text_embedding": pa.nulls(len(chunk), vector_type),
            "width": pa.array([640] * len(chunk), pa.int32()), "height": pa.array([480] * len(chunk), pa.int32()),
            "error": pa.nulls(len(chunk), pa.string())})
        name = f"part-{s:05d}.parquet"
        pq.write_table(table, out / name)
        folder.log.append(Commit(name, ids, 0))
    folder.write_json(MANIFEST, {"job": "embed", "model": "random:ViT-B-32", "random_weights": True,
                                 "dimension": DIM})


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def timed(fn, queries) -> tuple[list, list[float]]:
    results, seconds = [], []
    for q in queries:
        t0 = time.perf_counter()
        results.append(fn(q))
        seconds.append(time.perf_counter() - t0)
    return results, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("-k", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((CLUSTERS, DIM), np.float32)
    vectors = clustered(args.n, rng, centers)
    queries = clustered(args.queries, rng, centers)

    with tempfile.TemporaryDirectory() as tmp:
        out, index = Path(tmp) / "out", Path(tmp) / "index"
        write_output_dir(out, vectors)
        t0 = time.perf_counter()
        report = build_index([out], index)
        build_s = time.perf_counter() - t0
        searcher = Searcher(index)
        k = args.k
        searcher.search(searcher.query_vector(TEXTS[0]), k)  # warm: first reads of the files

        texts = [TEXTS[i % len(TEXTS)] + f" #{i}" for i in range(args.queries)]
        _, text_s = timed(lambda t: searcher.search(searcher.query_vector(t), k), texts)
        ann, ann_s = timed(lambda q: searcher.search(q, k), queries)
        table = searcher.index.table
        _, flat_s = timed(lambda q: table.search(q).distance_type("cosine").limit(k)
                          .bypass_vector_index().to_arrow(), queries[:50])

        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        shards = pq.read_table(sorted(out.glob("part-*.parquet")), columns=["id", "image_embedding"])
        matrix = np.stack(shards["image_embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
        ids = np.asarray(shards["id"].to_pylist())
        load_s = time.perf_counter() - t0

        def exact(q):
            sims = matrix @ q
            top = np.argpartition(-sims, k)[:k]
            return ids[top[np.argsort(-sims[top])]]

        truth, numpy_s = timed(exact, queries)
        rss_numpy = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    recall = np.mean([len({h.id for h in got} & set(want)) / k for got, want in zip(ann, truth)])
    rows = [("text→image, end to end (text tower + ANN)", *percentiles(text_s)),
            ("ANN search only (IVF-PQ + exact re-rank)", *percentiles(ann_s)),
            ("exact scan, LanceDB flat (50 queries)", *percentiles(flat_s)),
            ("exact, numpy over all vectors in RAM", *percentiles(numpy_s))]
    print(f"N={args.n} vectors ({DIM}-d), k={k}, {args.queries} queries; index built in {build_s:.1f} s "
          f"({report.ann['partitions']} partitions)" if report.ann else "(no ANN index)")
    print(f"{'mode':46s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for name, p50, p99 in rows:
        print(f"{name:46s} {p50:8.2f} {p99:8.2f}")
    print(f"recall@{k} of the ANN search vs exact: {recall:.3f}")
    print(f"numpy needs all vectors in RAM: {load_s:.1f} s to load, peak RSS {rss_numpy / 1024:.0f} MiB "
          f"(before loading: {rss_before / 1024:.0f} MiB)")
    print(f"ratios (p50): numpy/ann {rows[3][1] / rows[1][1]:.1f}x, flat/ann {rows[2][1] / rows[1][1]:.1f}x")


if __name__ == "__main__":
    main()
