"""`mmpipe index` and `mmpipe search`."""

from __future__ import annotations

from typing import Optional

import typer
from rich.console import Console

from ..extras import require
from .common import err


def index(
    out_dirs: list[str] = typer.Argument(..., help="Output folders of 'mmpipe embed' (one or more)."),
    to: str = typer.Option(..., "--to", help="Index folder (made if missing; synced if it exists)."),
    ann_min_rows: int = typer.Option(25_000, min=1, help="Build an ANN (IVF-PQ) index once the table "
                                     "has this many rows; below it every search scans exactly."),
    progress: Optional[bool] = typer.Option(None, help="Progress bar (default: on a terminal)."),
) -> None:
    """Index embedding shards into a LanceDB table for 'mmpipe search'. Re-running adds only new
    shards (and replaces rewritten ones)."""
    require("mmpipe index", "search")
    from rich.progress import Progress

    from ..search import build_index

    with Progress(console=err, disable=not (err.is_terminal if progress is None else progress),
                  transient=True) as bar:
        task = bar.add_task("indexing", total=None)
        report = build_index(out_dirs, to, ann_min_rows,
                             on_step=lambda what, done, total: bar.update(task, description=what,
                                                                          completed=done, total=total))
    ann = (f"; ANN index {report.ann['type']} with {report.ann['partitions']} partitions"
           if report.ann else "; no ANN index (exact search)")
    err.print(f"{report.path}: {report.rows} rows ({report.added_rows} added from "
              f"{report.added_shards} new shards, {report.replaced_shards} shards replaced, "
              f"{report.removed_shards} removed, {report.skipped_rows} rows without an image "
              f"vector skipped){ann}", markup=False)


def search(
    index_dir: str = typer.Argument(..., help="Index folder made by 'mmpipe index'."),
    query: Optional[str] = typer.Argument(None, help="Text to search images for."),
    image: Optional[str] = typer.Option(None, help="Image file to search similar images for "
                                        "(with QUERY too: images close to both)."),
    k: int = typer.Option(20, "-k", "--k", min=1, max=10_000, help="Results to return."),
    html: Optional[str] = typer.Option(None, help="Also write the results as an HTML page with thumbnails."),
    json_out: bool = typer.Option(False, "--json", help="Print results as JSON lines instead of a table."),
    model: Optional[str] = typer.Option(None, help="The index's model from another place (e.g. path:DIR "
                                        "on this machine); checked to reproduce the index's vectors. "
                                        "Default: the spec recorded in the index."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    allow_pickle: bool = typer.Option(False, help="Allow pickle (.bin) weights; they can run code."),
) -> None:
    """Search an index by text (text→image) or by an example image (image→image)."""
    require("mmpipe search", "search")
    import json
    from dataclasses import asdict
    from pathlib import Path

    from rich.table import Table

    from ..errors import ConfigError
    from ..search import Searcher, write_results

    if not query and image is None:
        raise ConfigError("QUERY", "give a text query, --image FILE, or both")
    data = None
    if image is not None:
        try:
            data = Path(image).read_bytes()
        except OSError as exc:
            raise ConfigError("--image", f"cannot read {image!r}: {exc.strerror or exc}") from None
    searcher = Searcher(index_dir, model, device, allow_pickle)
    hits = searcher.search(searcher.query_vector(query, data), k)
    if searcher.meta.random_weights:
        err.print("[yellow]the index holds random-weight vectors (benchmark only): results are not meaningful[/]")
    if json_out:
        for h in hits:
            print(json.dumps(asdict(h), ensure_ascii=False))
    else:
        table = Table("#", "score", "id", "uri", "text")
        for h in hits:
            table.add_row(str(h.rank), f"{h.score:.3f}", h.id, h.uri or "", (h.text or "")[:60])
        Console(highlight=False).print(table)
    if html:
        label = " + ".join(x for x in (repr(query) if query else None, image) if x)
        write_results(hits, html, label, f"{len(hits)} results from {index_dir} "
                                         f"({searcher.meta.rows} rows, model {searcher.spec})")
        err.print(f"results: {html}", markup=False)
