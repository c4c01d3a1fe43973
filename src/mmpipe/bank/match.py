"""Nearest bank entry: by Hamming distance over packed bits (PDQ, pHash), or by cosine similarity
of unit vectors (CLIP).

Hashes two ways, same answers: a brute-force scan (XOR and popcount of uint64 words, a block of queries
against the whole bank at a time), and, when only matches within ``within`` bits matter, a
multi-index over 16-bit bands. Pigeonhole: hashes at most ``within`` bits apart differ in at most
``within // bands`` bits of some band, so with ``within < 2 * bands`` (PDQ's 31 over 16 bands)
every match shares a band exactly or one bit off: 17 sorted-array look-ups per band find its
candidates, a few per query instead of the whole bank.
"""

from __future__ import annotations

import numpy as np

# Queries per step of the scan: the (step, bank) distance matrix stays a few MB at 100k entries.
_STEP = 32
_BAND_BITS = 16
# Below this many entries the scan is as fast as building the index.
_INDEX_FROM = 4096


def as_words(hashes: np.ndarray) -> np.ndarray:
    """(N, nbytes) uint8 → (N, nbytes / 8) uint64; byte order does not change popcounts."""
    return np.ascontiguousarray(hashes, np.uint8).view(np.uint64)


class Matcher:
    def __init__(self, bank: np.ndarray):
        self.words = as_words(bank)  # (N, W)
        self.columns = np.ascontiguousarray(self.words.T)  # (W, N): each word's scan reads in order
        self._bands: tuple[np.ndarray, np.ndarray] | None = None

    def nearest(self, queries: np.ndarray, within: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each query row's (M, nbytes uint8) nearest bank entry and distance. With ``within``,
        only entries at most that far count: the others get index -1 (and a distance past any
        hash's length, as every query does against an empty bank)."""
        q = as_words(queries)
        bits = q.shape[1] * 64
        n_bands = bits // _BAND_BITS
        if within is not None and within < 2 * n_bands and len(self.words) >= _INDEX_FROM:
            index, distance = self._indexed(q, within)
        else:
            index, distance = self._scan(q)
        if within is not None:
            far = distance > within
            index[far], distance[far] = -1, bits + 1
        return index, distance

    def _scan(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        index = np.full(len(q), -1, np.int64)
        distance = np.full(len(q), q.shape[1] * 64 + 1, np.int64)
        if not len(self.words):
            return index, distance
        for start in range(0, len(q), _STEP):
            chunk = q[start:start + _STEP]
            d = np.zeros((len(chunk), len(self.words)), np.uint16)
            for w, column in enumerate(self.columns):
                d += np.bitwise_count(chunk[:, w, None] ^ column[None, :])
            best = d.argmin(axis=1)
            index[start:start + len(chunk)] = best
            distance[start:start + len(chunk)] = d[np.arange(len(chunk)), best]
        return index, distance

    def _indexed(self, q: np.ndarray, within: int) -> tuple[np.ndarray, np.ndarray]:
        order, values = self._band_index()  # (B, N) each: per band, the rows sorted by its value
        probes = np.concatenate([[0], 1 << np.arange(_BAND_BITS)]).astype(np.uint16)
        bands = q.view(np.uint16)  # (M, B)
        q_columns = np.ascontiguousarray(q.T)
        pair_q, pair_row, pair_d = [], [], []
        for b in range(bands.shape[1]):
            keys = (bands[:, b, None] ^ probes[None, :]).ravel()  # (M * 17,)
            lo = np.searchsorted(values[b], keys, "left")
            counts = np.searchsorted(values[b], keys, "right") - lo
            total = int(counts.sum())
            # Every position in each [lo, lo + count) range, without a Python loop.
            offsets = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(total)
            rows = order[b][offsets]
            qi = np.repeat(np.arange(len(keys)) // len(probes), counts)
            # Word by word over contiguous columns: a third of the time of gathering whole rows.
            d = np.zeros(total, np.uint16)
            for w, column in enumerate(self.columns):
                d += np.bitwise_count(q_columns[w][qi] ^ column[rows])
            keep = d <= within
            pair_q.append(qi[keep])
            pair_row.append(rows[keep])
            pair_d.append(d[keep])
        qi, rows, d = np.concatenate(pair_q), np.concatenate(pair_row), np.concatenate(pair_d)
        first = np.lexsort((rows, d, qi))  # per query: nearest first, lowest row on ties as the scan
        qi, rows, d = qi[first], rows[first], d[first]
        lead = np.ones(len(qi), bool)
        lead[1:] = qi[1:] != qi[:-1]
        index = np.full(len(q), -1, np.int64)
        distance = np.full(len(q), q.shape[1] * 64 + 1, np.int64)
        index[qi[lead]], distance[qi[lead]] = rows[lead], d[lead]
        return index, distance

    def _band_index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._bands is None:
            bands = self.words.view(np.uint16).T  # (B, N)
            order = np.argsort(bands, axis=1, kind="stable")
            self._bands = order, np.take_along_axis(bands, order, axis=1)
        return self._bands


class VectorMatcher:
    """Nearest bank vector by cosine similarity: bank and queries are unit rows, so a step of
    queries against the whole bank is one matrix product ((32, 100k) float32: 13 MB)."""

    def __init__(self, bank: np.ndarray):
        self.vectors = np.ascontiguousarray(bank, np.float32)  # (N, dim)

    def nearest(self, queries: np.ndarray, at_least: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each query row's (M, dim) nearest bank entry and similarity. With ``at_least``, only
        entries that similar count: the others get index -1 and similarity -2, below any
        cosine (as every query does against an empty bank)."""
        index = np.full(len(queries), -1, np.int64)
        similarity = np.full(len(queries), -2.0, np.float32)
        if len(self.vectors):
            for start in range(0, len(queries), _STEP):
                s = np.asarray(queries[start:start + _STEP], np.float32) @ self.vectors.T
                best = s.argmax(axis=1)
                index[start:start + len(s)] = best
                similarity[start:start + len(s)] = s[np.arange(len(s)), best]
        if at_least is not None:
            far = similarity < at_least
            index[far], similarity[far] = -1, -2.0
        return index, similarity
