"""Search over what the embedding jobs produce: an embedded LanceDB index of their vectors
(``build_index``), queried by text or image with the model that made them (``Searcher``)."""

from .html import write_results
from .index import IndexMeta, IndexReport, SearchIndexError, build_index
from .query import Hit, SearchIndex, Searcher, query_vector

__all__ = ["Hit", "IndexMeta", "IndexReport", "SearchIndex", "SearchIndexError", "Searcher",
           "build_index", "query_vector", "write_results"]
