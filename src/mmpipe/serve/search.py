"""``POST /v1/search`` (an extension; OpenAI has no such route): text→image and image→image
search over an index made by ``mmpipe index``.

Request: ``{"query": "a red car", "k": 10}``; ``query`` is a string, an ``image_url`` part, or a
list of them (one vector from the normalised sum of theirs: images close to all of them).
Queries are embedded by the server's embeddings model, through its dynamic batcher, so search
shares its batching and overload control; when no embeddings model is configured, the index's
own model is served as one.
"""

from __future__ import annotations

import asyncio

from ..errors import ConfigError
from ..records import Item
from ..search import SearchIndex, SearchIndexError, query_vector
from .batcher import DynamicBatcher
from .config import Embeddings, ServeConfig
from .embeddings import EmbeddingModel
from .errors import RequestError
from .inputs import InputLimits, failed_items, part_item

MAX_QUERY_PARTS = 8


def open_search_index(config: ServeConfig) -> tuple[SearchIndex, ServeConfig]:
    """The configured index, and the config with an embeddings model to embed its queries."""
    try:
        index = SearchIndex(config.search.index)
    except SearchIndexError as exc:
        raise ConfigError("search.index", str(exc)) from None
    if config.embeddings is None:
        config = config.model_copy(update={"embeddings": Embeddings(model=index.meta.model)})
    return index, config


def check_embeddings(index: SearchIndex, model: EmbeddingModel) -> None:
    """The embeddings model must make the index's vectors, or every answer would be noise."""
    def text_vector(text: str):
        records = model.served.predict(model.served.prepare([Item(id="probe", text=text)]))
        return records[0].outputs["text_embedding"]

    index.check_model(str(model.spec), model.dim, text_vector, field="embeddings.model")


async def search_request(body: dict, batcher: DynamicBatcher, model: EmbeddingModel,
                         index: SearchIndex, limits: InputLimits, max_k: int) -> dict:
    name = body.get("model") or model.served.name
    if name not in model.names:
        raise RequestError(f"model {name!r} does not exist; the index is searched with "
                           f"{model.served.name!r}", param="model", status=404, code="model_not_found")
    k = body.get("k", min(10, max_k))
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= max_k:
        raise RequestError(f"k must be an integer from 1 to {max_k}", param="k")
    value = body.get("query")
    parts = value if isinstance(value, list) else [value]
    if not parts or len(parts) > MAX_QUERY_PARTS or not all(isinstance(p, (str, dict)) and p for p in parts):
        raise RequestError(f"query must be a non-empty string, an image_url part, or a list of up to "
                           f"{MAX_QUERY_PARTS} of them", param="query")
    items = [await part_item(p, f"query[{i}]" if isinstance(value, list) else "query", limits)
             for i, p in enumerate(parts)]
    records = await batcher.submit(items)
    failed_items(items, records)
    vector = query_vector([r.outputs["image_embedding" if it.data is not None else "text_embedding"]
                           for it, r in zip(items, records)])
    hits = await asyncio.to_thread(index.search, vector, k)  # LanceDB reads files: off the loop
    return {"object": "list", "model": name, "index_rows": index.meta.rows,
            "data": [{"object": "search_result", "rank": h.rank, "id": h.id, "uri": h.uri,
                      "text": h.text, "score": round(h.score, 6), "width": h.width, "height": h.height}
                     for h in hits]}
