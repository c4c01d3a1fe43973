"""Search over what the embedding jobs produce: an embedded LanceDB index of their vectors
(``build_index``), queried by text or image with the model that made them (``Searcher``)."""

from .html import write_results
from .index import IndexMeta, IndexReport, SearchIndexError, build_index
from .query import Hit, Searcher

__all__ = ["Hit", "IndexMeta", "IndexReport", "SearchIndexError", "Searcher", "build_index",
           "write_results"]
