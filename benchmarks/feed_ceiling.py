"""How close ``mmpipe embed`` comes to its decode ceiling, and what the process feeding the model
costs per item, side by side in one run.

On N photo JPEGs (640x480 by default, made once by ``mmpipe.sample_data`` into ``bench_data/``,
git-ignored), with the job's own preprocessing (``zeros:ViT-B-32``: CLIP ViT-B/32's resize and
crop, and a model that returns zero vectors without reading its input), for each decode mode:

  (i)   the ceiling: the job's own read + decode + preprocess function over every item in a
        process pool with one process per core, nothing around it;
  (ii)  ``mmpipe.embed`` on the folder: items/s from the end of setup to the last row written;
  (iii) the CPU time of the job's own process (the one that feeds the model; its decode worker
        processes are not in it) per item over (ii)'s run. The zero model computes nothing, so
        there is nothing to subtract: this is the pipeline's own cost, and 1/(iii) is how many
        items/s one such process could feed on any number of cores.

Decode modes: the default (worker processes writing crops into shared memory, JPEG DCT scaling
on), ``--no-decode-processes`` (threads in the job's process), and each with ``--no-fast-decode``
(the reference's exact decode and resize). Rounds are interleaved and the median is printed,
because this machine's speed moves between runs more than most effects.

    python benchmarks/feed_ceiling.py                 # N=1000, batch 64, 3 rounds
    python benchmarks/feed_ceiling.py --quick         # N=200, 1 round: a smoke check
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import shutil
import statistics
import time
from pathlib import Path

import mmpipe
from mmpipe.config import usable_cores
from mmpipe.engine import LocalEngine
from mmpipe.jobs.embed import EmbedConfig, embedding_options, gated_model
from mmpipe.stages.embedding import embedding_stages
from mmpipe.sample_data import make_sample_images
from mmpipe.sources import open_source
from mmpipe.stages.common import ReadThenDecode

MODEL = "zeros:ViT-B-32"
ROOT = Path(__file__).resolve().parent.parent
MODES = {  # name: mmpipe.embed options; --modes takes the first words
    "default (processes, fast decode)": {},
    "threads (--no-decode-processes)": {"decode_processes": False},
    "processes, --no-fast-decode": {"fast_decode": False},
    "threads, --no-fast-decode": {"decode_processes": False, "fast_decode": False},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="Number of JPEGs (default 1000).")
    ap.add_argument("--size", default="640x480", help="WxH of the JPEGs (default 640x480).")
    ap.add_argument("--batch-size", type=int, default=64, help="The job's batch size (default 64).")
    ap.add_argument("--rounds", type=int, default=3, help="Interleaved rounds; medians are printed.")
    ap.add_argument("--data", type=Path, default=ROOT / "bench_data", help="Cache folder.")
    ap.add_argument("--quick", action="store_true", help="N=200, one round: a smoke check.")
    ap.add_argument("--modes", nargs="+", default=["default", "threads", "processes,", "threads,"],
                    help="Decode modes by their first word (default: all four).")
    args = ap.parse_args()
    modes = {name: options for name, options in MODES.items() if name.split()[0] in args.modes}
    n, rounds = (200, 1) if args.quick else (args.n, args.rounds)
    w, h = (int(v) for v in args.size.lower().split("x"))
    folder = make_sample_images(args.data / f"jpeg-{w}x{h}-n{n}", n=n, size=(w, h), captions=False,
                                broken=False, png_share=0)
    cores = usable_cores()
    print(f"data: {n} JPEGs {w}x{h} in {folder}; model {MODEL}, batch {args.batch_size}; "
          f"{cores} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}")

    runs: dict[str, dict[str, list[float]]] = {m: {"i": [], "ii": [], "iii": []} for m in modes}
    for r in range(rounds):
        for mode, options in modes.items():
            ceiling = ceiling_rate(str(folder), options, args.batch_size, cores)
            result = mmpipe.embed(str(folder), str(args.data / "out-feed"), model=MODEL, batch_size=args.batch_size,
                                  overwrite=True, progress=False, **options)
            assert (result.ok, result.errors) == (n, 0), (result.ok, result.errors, result.top_errors)
            runs[mode]["i"].append(ceiling)
            runs[mode]["ii"].append(result.stats.items_per_s)
            runs[mode]["iii"].append(result.stats.cpu_ms_per_item)
            print(f"round {r + 1}: {mode:<36} (i) {ceiling:7.1f}  (ii) {result.stats.items_per_s:7.1f} items/s  "
                  f"(iii) {result.stats.cpu_ms_per_item:.3f} ms/item  busy: {result.stats.busy_summary()}")
    shutil.rmtree(args.data / "out-feed", ignore_errors=True)

    print()
    print(f"{'decode mode (medians of ' + str(rounds) + ')':<36} {'(i) items/s':>12} {'(ii) items/s':>13} "
          f"{'(ii)/(i)':>9} {'(iii) ms/item':>14} {'1/(iii) items/s':>16}")
    for mode, fig in runs.items():
        i, ii, iii = (statistics.median(fig[k]) for k in ("i", "ii", "iii"))
        print(f"{mode:<36} {i:>12.1f} {ii:>13.1f} {ii / i:>9.2f} {iii:>14.3f} {1000 / iii:>16.0f}")


def ceiling_rate(folder: str, options: dict, batch_size: int, cores: int) -> float:
    """(i): items/s of the job's own decode function (reading included) in a pool of ``cores``
    processes, timed after the pool has started and warmed up."""
    cfg = EmbedConfig.build(input=folder, out="-", model=MODEL, batch_size=batch_size, **options)
    stages = embedding_stages(gated_model(cfg, LocalEngine()), embedding_options(cfg))
    decode = stages[0].setup().decode  # the job's per-item function
    items = list(open_source(folder, cfg.source_options()))
    with multiprocessing.get_context("spawn").Pool(cores, initializer=_set_decode, initargs=(decode,)) as pool:
        pool.map(_decode_one, items[:cores * 4], chunksize=1)  # warm up every process
        t = time.perf_counter()
        for _ in pool.imap_unordered(_decode_one, items, chunksize=16):
            pass
        return len(items) / (time.perf_counter() - t)


_decode = None


def _set_decode(decode) -> None:
    global _decode
    _decode = ReadThenDecode(decode, read_workers=1)


def _decode_one(item) -> bool:
    record = _decode([item])[0]
    assert record.error is None, record.error
    return True  # nothing but a flag travels back: the ceiling has nothing around it


if __name__ == "__main__":
    main()
