"""Hash-bank matching: Q query PDQ hashes against an N-entry bank, nearest entry per query.

  python   a plain loop over Python ints, ``(q ^ b).bit_count()`` per query per entry: what one
           writes without numpy; on all Q queries, or the first S with --subset (the rate is
           then extrapolated: the work per query is the same for every query);
  scan     ``mmpipe.bank.Matcher.nearest(q)``: XOR and ``np.bitwise_count`` over 4 uint64
           words, 32 queries against the whole bank per step, on all Q queries;
  index    ``Matcher.nearest(q, within=31)``, what moderation runs: only matches within PDQ's 31
           bits count, found through the multi-index over 16 bands (index build included).

Random 256-bit hashes, with every 10th query a planted near-duplicate of a bank entry (0-24
bits flipped), so matches exist. On the S queries all three must agree: the same nearest
distance (python, scan) and the same entry for every match within 31 bits (all three).
Target: mmpipe / python >= 50x.

    .venv/bin/python benchmarks/hash_match.py               # Q=10,000, N=100,000 (~1.5 min)
    .venv/bin/python benchmarks/hash_match.py --subset 500  # the Python loop on 500 queries
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mmpipe.bank import Matcher


def make_hashes(n_bank: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bank, queries, and for each query the bank row it was planted from (-1: random)."""
    rng = np.random.default_rng(seed)
    bank = rng.integers(0, 256, (n_bank, 32), dtype=np.uint8)
    queries = rng.integers(0, 256, (n_queries, 32), dtype=np.uint8)
    planted = np.full(n_queries, -1)
    for q in range(0, n_queries, 10):
        planted[q] = rng.integers(n_bank)
        bits = np.unpackbits(bank[planted[q]])
        flip = rng.choice(256, rng.integers(0, 25), replace=False)
        bits[flip] ^= 1
        queries[q] = np.packbits(bits)
    return bank, queries, planted


def python_nearest(bank: list[int], queries: list[int]) -> list[tuple[int, int]]:
    found = []
    for q in queries:
        best, best_d = -1, 257
        for i, b in enumerate(bank):
            d = (q ^ b).bit_count()
            if d < best_d:
                best, best_d = i, d
        found.append((best, best_d))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--subset", type=int, default=None, help="queries the Python loop runs (all)")
    args = parser.parse_args()
    args.subset = args.subset or args.queries
    bank, queries, planted = make_hashes(args.bank, args.queries)

    as_ints = lambda rows: [int.from_bytes(r.tobytes(), "big") for r in rows]
    bank_ints, subset_ints = as_ints(bank), as_ints(queries[:args.subset])
    start = time.perf_counter()
    slow = python_nearest(bank_ints, subset_ints)
    python_s = time.perf_counter() - start

    start = time.perf_counter()
    index, distance = Matcher(bank).nearest(queries)
    scan_s = time.perf_counter() - start
    start = time.perf_counter()
    matched, matched_d = Matcher(bank).nearest(queries, within=31)
    index_s = time.perf_counter() - start

    assert [d for _, d in slow] == distance[:args.subset].tolist(), "scan distances differ"
    expected = [i if d <= 31 else -1 for i, d in slow]
    assert expected == matched[:args.subset].tolist(), "index matches differ"
    assert (np.where(distance <= 31, index, -1) == matched).all(), "scan and index differ"
    hits = planted >= 0
    python_qps = args.subset / python_s
    print(f"bank {args.bank:,} PDQ hashes, {args.queries:,} queries ({hits.sum():,} planted "
          f"near-duplicates; {int((matched >= 0).sum()):,} within 31 bits, "
          f"{int((matched[hits] == planted[hits]).sum()):,} of them at the planted entry)")
    print("| matcher | queries run | seconds | queries/s | vs python |")
    print("|---|---:|---:|---:|---:|")
    ran = (f"{args.subset:,}" if args.subset == args.queries else
           f"{args.subset:,} of {args.queries:,}, rate extrapolated")
    print(f"| python loop (`int.bit_count`) | {ran} | {python_s:.2f} | {python_qps:,.1f} | 1.0× |")
    for name, seconds in (("mmpipe scan, `nearest(q)`", scan_s),
                          ("mmpipe multi-index, `nearest(q, within=31)`", index_s)):
        qps = args.queries / seconds
        print(f"| {name} | {args.queries:,} | {seconds:.2f} | {qps:,.0f} | {qps / python_qps:,.0f}× |")
    print(f"on the {args.subset} queries all ran: same nearest distances (python, scan), "
          "same matches within 31 bits (all three)")


if __name__ == "__main__":
    main()
