"""A bank on disk: BANK_DIR/entries.parquet (a row per hash of a known image, and optionally its
CLIP image vector) and bank.json (counts, and the CLIP model of the vectors). Rewritten whole on
each change, by rename, so a reader never sees half a bank; 100k entries are a few MB of hashes,
and 200 MB more with 512-d vectors."""

from __future__ import annotations

import csv
import dataclasses
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

from ..decode.image import DecodeError, decode_image
from ..errors import MmpipeError
from ..models.spec import ModelSpec
from ..atomic import atomic_path
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
# Images per forward pass of the CLIP image tower when adding files.
CLIP_BATCH = 32


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
    clip: np.ndarray | None = None  # L2-normalised CLIP image vector


def schema(clip_dim: int | None = None) -> pa.Schema:
    """The entries' columns: with vectors, a ``clip`` column of the model's width, null on the
    rows that have none (imported hashes, crops, files added without a model)."""
    if clip_dim is None:
        return SCHEMA
    return SCHEMA.append(pa.field("clip", pa.list_(pa.float32(), clip_dim)))


def model_key(spec: ModelSpec) -> str:
    """``spec`` as a bank records it: a checkpoint folder by its absolute path, so the vectors'
    model is found from any working directory and ``path:./ckpt`` equals ``path:/abs/ckpt``."""
    if spec.kind == "path":
        return f"path:{Path(spec.target).expanduser().resolve()}"
    return str(spec)


@dataclass(frozen=True)
class Bank:
    path: Path
    table: pa.Table
    clip_model: str | None = None  # the model of the clip column's vectors; None: no vectors

    def __len__(self) -> int:
        return self.table.num_rows

    def hashes(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """The rows that have a ``kind`` hash, and those hashes as (n, nbytes) uint8."""
        column = self.table[kind]
        rows = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False))
        data = b"".join(column.take(rows).to_pylist())
        return rows, np.frombuffer(data, np.uint8).reshape(len(rows), HASHES[kind])

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows that have a CLIP vector, and those vectors as (n, dim) float32."""
        if self.clip_model is None:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        column = self.table["clip"]
        rows = np.flatnonzero(column.is_valid().to_numpy(zero_copy_only=False))
        values = column.take(rows).combine_chunks().flatten().to_numpy()
        return rows, values.reshape(len(rows), column.type.list_size)

    def entry(self, row: int) -> dict:
        return {k: self.table[k][row].as_py() for k in ("id", "variant", "label", "source")}

    def info(self) -> dict:
        return read_manifest(self.path)


def read_manifest(path: str | Path) -> dict:
    """bank.json alone: what a job checks (the vectors' model) before it reads any entries."""
    path = Path(path)
    if not (path / ENTRIES).is_file() or not (path / MANIFEST).is_file():
        raise BankError(f"{path}: not a hash bank (no {ENTRIES}; make one with 'mmpipe bank add')")
    return json.loads((path / MANIFEST).read_text())


def open_bank(path: str | Path, create: bool = False) -> Bank:
    path = Path(path)
    if (path / ENTRIES).is_file() or not create:
        clip = read_manifest(path).get("clip")  # banks made before vectors have no "clip"
        if clip is None:
            return Bank(path, pq.read_table(path / ENTRIES, schema=SCHEMA))
        return Bank(path, pq.read_table(path / ENTRIES, schema=schema(clip["dim"])), clip["model"])
    return Bank(path, SCHEMA.empty_table())


def add_files(path: str | Path, files: Iterable[str | Path], label: str | None = None,
              clip=None) -> Bank:
    """Hash image files (and their centred crops) into the bank; an id is the file's content
    digest, so adding a file again replaces its entries instead of duplicating them.

    ``clip`` (a ``LoadedEmbedder``: CLIP, SigLIP): also store each file's image vector, on its uncropped row
    only: CLIP centre-crops every image itself, so the crops' vectors would repeat it. A bank
    holds vectors of one model, so another model than the bank records is refused."""
    model = model_key(clip.spec) if clip is not None else None
    if model is not None and (Path(path) / ENTRIES).is_file():
        recorded = (read_manifest(path).get("clip") or {}).get("model")
        if recorded not in (None, model):
            raise BankError(f"{path}: its CLIP vectors are from {recorded}, not {model}; add with "
                            f"--clip-model {recorded}, or make a new bank for {model}")
    embedder = clip.make_embedder() if clip is not None else None
    entries, uncropped, pixels, vectors = [], [], [], []
    for f in files:
        data = Path(f).read_bytes()
        try:
            # decoded as moderation decodes what it matches (alpha on white, HEIC, pixel cap)
            image, _ = decode_image(data)
        except DecodeError as exc:
            raise BankError(f"{f}: not an image ({exc})") from None
        uncropped.append(len(entries))
        for variant, crop in (("full", 0.0), *((f"crop{c:g}", c) for c in CROPS)):
            w, h = image.size
            dx, dy = round(w * crop), round(h * crop)
            hashes = hash_image(np.asarray(image.crop((dx, dy, w - dx, h - dy))))
            if hashes["pdq_quality"] < MIN_PDQ_QUALITY:
                raise BankError(f"{f}: PDQ quality {hashes['pdq_quality']} (< {MIN_PDQ_QUALITY}): "
                                "too flat to match reliably")
            entries.append(BankEntry(id=hashlib.sha256(data).hexdigest()[:16], variant=variant,
                                     label=label, source=str(f), **hashes))
        if embedder is not None:
            pixels.append(clip.preprocessor.image(image, exact=False))  # as moderation's frames
            if len(pixels) == CLIP_BATCH:  # a batch at a time: memory stays flat over many files
                vectors.extend(embedder.embed_images(np.stack(pixels)))
                pixels = []
    if embedder is None:
        return _extend(path, entries)
    if pixels:
        vectors.extend(embedder.embed_images(np.stack(pixels)))
    for row, vector in zip(uncropped, vectors):
        entries[row] = dataclasses.replace(entries[row], clip=vector)
    return _extend(path, entries, (model, clip.dim))


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


def _extend(path: str | Path, entries: list[BankEntry], clip: tuple[str, int] | None = None) -> Bank:
    """``clip``: (model, dim) of the entries' vectors, when they have any."""
    bank = open_bank(path, create=True)
    if bank.clip_model is not None:
        model, dim = bank.clip_model, bank.table.schema.field("clip").type.list_size
    else:
        model, dim = clip or (None, None)
    columns = schema(dim)
    kept = bank.table
    if dim is not None and "clip" not in kept.column_names:  # the first vectors of a hash bank
        kept = kept.append_column(columns.field("clip"), pa.nulls(len(kept), columns.field("clip").type))
    new = pa.Table.from_pylist([{**e.__dict__, "clip": None if e.clip is None else e.clip.tolist()}
                                for e in entries], schema=columns)
    ids = pa.array(sorted({e.id for e in entries}), pa.string())
    kept = kept.filter(pc.invert(pc.is_in(kept["id"], ids)))
    table = pa.concat_tables([kept, new])
    bank.path.mkdir(parents=True, exist_ok=True)
    with atomic_path(bank.path / ENTRIES) as tmp:
        pq.write_table(table, tmp)
    manifest = {"version": 1, "entries": len(set(table["id"].to_pylist())), "rows": table.num_rows,
                "hashes": {k: table.num_rows - table[k].null_count for k in HASHES},
                "clip": {"model": model, "dim": dim, "vectors": table.num_rows - table["clip"].null_count}
                if model else None,
                "labels": dict(Counter(label or "(no label)" for label in
                                   dict(zip(table["id"].to_pylist(), table["label"].to_pylist())).values()))}
    with atomic_path(bank.path / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    return Bank(bank.path, table, model)
