"""Stages of a text-only embedding model: tokenize each text, then encode batches."""

from __future__ import annotations

from typing import Sequence

from ..models.text_encoder import LoadedTextEncoder
from ..records import Decoded, Item, Scored
from ..stage import Resources, Stage
from .common import per_item


def text_embedding_stages(encoder: LoadedTextEncoder, batch_size: int) -> list[Stage]:
    def tokenize(item: Item) -> Decoded:
        if item.data is not None or not item.text:
            raise ValueError(f"{encoder.spec} embeds text only")
        return Decoded(id=item.id, uri=item.uri, text=item.text, tokens=encoder.tokenize(item.text))

    return [Stage("decode", lambda: per_item("decode", tokenize), stateless=True),
            Stage("embed", lambda: TextEmbedBatch(encoder), batch_size=batch_size,
                  resources=Resources(num_cpus=1))]


class TextEmbedBatch:
    def __init__(self, encoder: LoadedTextEncoder):
        self.encoder = encoder.make_encoder()

    def __call__(self, batch: Sequence[Decoded]) -> list[Scored]:
        vectors = self.encoder.embed_texts([r.tokens for r in batch])
        return [Scored(id=r.id, uri=r.uri, text=r.text, outputs={"text_embedding": v},
                       text_tokens=len(r.tokens))
                for r, v in zip(batch, vectors)]
