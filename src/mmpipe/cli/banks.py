"""`mmpipe bank add|import|info`."""

from __future__ import annotations

from typing import Optional

import typer

from ..extras import require
from .common import err

bank_app = typer.Typer(no_args_is_help=True, help="Banks of perceptual hashes (PDQ, pHash) and CLIP vectors "
                                                  "of known media, for policy categories with source: bank.")


@bank_app.command("add")
def bank_add(
    bank: str = typer.Argument(..., help="Bank folder (made if missing)."),
    files: list[str] = typer.Argument(..., help="Image files to hash into the bank."),
    label: Optional[str] = typer.Option(None, help="Label of these entries, reported with a match."),
    clip_model: Optional[str] = typer.Option(None, help="Also store each file's CLIP image vector from "
                                             "this checkpoint, for hash: clip categories (one model a bank)."),
) -> None:
    """Hash image files (PDQ and pHash) into a bank; adding a file again replaces its entry."""
    require("mmpipe bank add", "moderate")
    from ..bank import add_files

    clip = None
    if clip_model is not None:
        from ..models import ModelSpec, load_embedder

        clip = load_embedder(ModelSpec.parse(clip_model, "--clip-model"))
    print_bank(add_files(bank, files, label, clip=clip))


@bank_app.command("import")
def bank_import(
    bank: str = typer.Argument(..., help="Bank folder (made if missing)."),
    csv_file: str = typer.Argument(..., help="CSV with a header: pdq (64 hex digits) and/or phash "
                                             "(16), optional id, label, source."),
) -> None:
    """Import shared hashes (e.g. PDQ hex from ThreatExchange) into a bank."""
    require("mmpipe bank import", "moderate")
    from ..bank import import_csv

    print_bank(import_csv(bank, csv_file))


@bank_app.command("info")
def bank_info(bank: str = typer.Argument(..., help="Bank folder.")) -> None:
    """How many entries, hashes and labels a bank holds."""
    require("mmpipe bank info", "moderate")
    from ..bank import open_bank

    print_bank(open_bank(bank))


def print_bank(bank) -> None:
    info = bank.info()
    labels = ", ".join(f"{n} {label}" for label, n in info["labels"].items())
    clip = info.get("clip")
    vectors = f", {clip['vectors']} CLIP vectors ({clip['model']})" if clip else ""
    err.print(f"{bank.path}: {info['entries']} entries, {info['hashes']['pdq']} PDQ and "
              f"{info['hashes']['phash']} pHash hashes{vectors}; labels: {labels or 'none'}", markup=False)
