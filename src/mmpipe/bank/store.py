"""A bank on disk: BANK_DIR/entries.parquet (a row per hash of a known image) and bank.json
(counts). Rewritten whole on each change, by rename, so a reader never sees half a bank; 100k
entries are a few MB."""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from ..errors import MmpipeError
from ..tune.cache import atomic_path
from .hashing import HASHES, hash_image

ENTRIES = "entries.parquet"
MANIFEST = "bank.json"
# PDQ moves 70-150 of 256 bits when 5 % of each side is cropped away, so an added file is also
# hashed centre-cropped by these fractions a side: centred crops up to about 6 % still match.
CROPS = (0.025, 0.05)
# Below PDQ quality 50 (flat, near-blank images) hashes match unrelated flat frames.
MIN_PDQ_QUALITY = 50
SCHEMA = pa.schema([("id", pa.string()), ("variant", pa.string()), ("label", pa.string()),
                    ("source", pa.string()),
                    ("pdq", pa.binary(HASHES["pdq"])), ("pdq_quality", pa.int32()),
                    ("phash", pa.binary(HASHES["phash"]))])


class BankError(MmpipeError):
    """A bank that cannot be read, or input that cannot go into one."""


@dataclass(frozen=True)
class BankEntry:
    id: str
    variant: str | None  # how an added file was cropped before hashing; None: imported
    label: str | None
    source: str | None
    pdq: bytes | None
    pdq_quality: int | None
    phash: bytes | None


@dataclass(frozen=True)
class Bank:
    path: Path
    table: pa.Table

    def __len__(self) -> int:
        return self.table.num_rows

    def hashes(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """The rows that have a ``kind`` hash, and those hashes as (n, nbytes) uint8."""
        column = self.table[kind]
        rows = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False))
        data = b"".join(column.take(rows).to_pylist())
        return rows, np.frombuffer(data, np.uint8).reshape(len(rows), HASHES[kind])

    def entry(self, row: int) -> dict:
        return {k: self.table[k][row].as_py() for k in ("id", "variant", "label", "source")}

    def info(self) -> dict:
        return json.loads((self.path / MANIFEST).read_text())


def open_bank(path: str | Path, create: bool = False) -> Bank:
    path = Path(path)
    if (path / ENTRIES).is_file():
        return Bank(path, pq.read_table(path / ENTRIES, schema=SCHEMA))
    if not create:
        raise BankError(f"{path}: not a hash bank (no {ENTRIES}; make one with 'mmpipe bank add')")
    return Bank(path, SCHEMA.empty_table())


def add_files(path: str | Path, files: Iterable[str | Path], label: str | None = None) -> Bank:
    """Hash image files (and their centred crops) into the bank; an id is the file's content
    digest, so adding a file again replaces its entries instead of duplicating them."""
    entries = []
    for f in files:
        data = Path(f).read_bytes()
        try:
            with Image.open(Path(f)) as img:
                image = ImageOps.exif_transpose(img).convert("RGB")
        except (OSError, ValueError) as exc:
            raise BankError(f"{f}: not an image ({exc})") from None
        for variant, crop in (("full", 0.0), *((f"crop{c:g}", c) for c in CROPS)):
            w, h = image.size
            dx, dy = round(w * crop), round(h * crop)
            hashes = hash_image(np.asarray(image.crop((dx, dy, w - dx, h - dy))))
            if hashes["pdq_quality"] < MIN_PDQ_QUALITY:
                raise BankError(f"{f}: PDQ quality {hashes['pdq_quality']} (< {MIN_PDQ_QUALITY}): "
                                "too flat to match reliably")
            entries.append(BankEntry(id=hashlib.sha256(data).hexdigest()[:16], variant=variant,
                                     label=label, source=str(f), **hashes))
    return _extend(path, entries)


def import_csv(path: str | Path, csv_path: str | Path) -> Bank:
    """Rows of pdq (64 hex digits) and/or phash (16), with optional id, label, source."""
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        unknown = set(reader.fieldnames or ()) - {"id", "label", "source", "pdq", "phash"}
        if unknown or not {"pdq", "phash"} & set(reader.fieldnames or ()):
            raise BankError(f"{csv_path}: columns must include pdq or phash, and only id, label, "
                            f"source, pdq, phash (found: {', '.join(reader.fieldnames or ()) or 'none'})")
        entries = [_csv_entry(row, f"{csv_path}: line {reader.line_num}") for row in reader]
    return _extend(path, entries)


def _csv_entry(row: dict, where: str) -> BankEntry:
    hashes = {}
    for kind in HASHES:
        text = (row.get(kind) or "").strip().lower()
        if not text:
            continue
        try:
            value = bytes.fromhex(text)
        except ValueError:
            value = b""
        if len(value) != HASHES[kind]:
            raise BankError(f"{where}: {kind} must be {HASHES[kind] * 2} hex digits, not {text!r}")
        hashes[kind] = value
    if not hashes:
        raise BankError(f"{where}: no pdq or phash hash")
    digest = hashlib.sha256(b"".join(hashes.values())).hexdigest()[:16]
    return BankEntry(id=(row.get("id") or "").strip() or digest, variant=None, label=row.get("label") or None,
                     source=row.get("source") or None, pdq=hashes.get("pdq"), pdq_quality=None,
                     phash=hashes.get("phash"))


def _extend(path: str | Path, entries: list[BankEntry]) -> Bank:
    bank = open_bank(path, create=True)
    new = pa.Table.from_pylist([e.__dict__ for e in entries], schema=SCHEMA)
    ids = pa.array(sorted({e.id for e in entries}), pa.string())
    kept = bank.table.filter(pc.invert(pc.is_in(bank.table["id"], ids)))
    table = pa.concat_tables([kept, new])
    bank.path.mkdir(parents=True, exist_ok=True)
    with atomic_path(bank.path / ENTRIES) as tmp:
        pq.write_table(table, tmp)
    manifest = {"version": 1, "entries": len(set(table["id"].to_pylist())), "rows": table.num_rows,
                "hashes": {k: table.num_rows - table[k].null_count for k in HASHES},
                "labels": dict(Counter(label or "(no label)" for label in
                                   dict(zip(table["id"].to_pylist(), table["label"].to_pylist())).values()))}
    with atomic_path(bank.path / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    return Bank(bank.path, table)
