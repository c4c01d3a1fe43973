"""A Kafka message as an item: its key is the item id, its value a JSON object with the fields a
manifest row takes (``image`` path or URL, ``image_b64``, ``text``, ``id``), or with
``--kafka-value raw`` the image's bytes. A message that cannot be made into an item becomes an
error item naming its partition and offset: it is a row of the output, never a stop.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import replace

from ..records import Item
from .options import SourceOptions, cut_text, filesystem
from .manifest import locate

VALUE_FORMATS = ("json", "raw")


class MessageItems:
    def __init__(self, topic: str, value_format: str, options: SourceOptions):
        # A kafka:// job's storage options are librdkafka's settings: the images its messages name
        # are read with their store's own defaults (credentials from the environment).
        self.options = replace(options, storage_options={})
        self.topic, self.raw = topic, value_format == "raw"
        # Relative image paths in messages mean what they mean to the process that runs the job.
        self.fs, self.base = filesystem(os.getcwd(), {})

    def item(self, key: bytes | None, value: bytes | None, partition: int, offset: int) -> Item:
        position = f"kafka://{self.topic}/{partition}/{offset}"
        item_id = key.decode("utf-8", errors="replace") if key else None
        value = value or b""
        if self.raw:
            problem = "empty message" if not value else self._too_large(value)
            if problem:
                return self._error(item_id or position, problem, partition, offset)
            return Item(id=item_id or position, uri=position, data=value)
        try:
            row = json.loads(value)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._error(item_id or position, f"invalid JSON ({type(exc).__name__})", partition, offset)
        if not isinstance(row, dict):
            return self._error(item_id or position, "not a JSON object", partition, offset)
        item_id = item_id or (str(row["id"]) if row.get("id") not in (None, "") else position)
        text, cut = cut_text(str(row["text"])) if row.get("text") not in (None, "") else (None, False)
        if row.get("image_b64") not in (None, ""):
            try:
                data = base64.b64decode(str(row["image_b64"]), validate=True)
            except (binascii.Error, ValueError):
                return self._error(item_id, "image_b64 is not valid base64", partition, offset)
            if problem := self._too_large(data):
                return self._error(item_id, problem, partition, offset)
            return Item(id=item_id, uri=position, text=text, text_truncated=cut, data=data)
        if row.get("image") not in (None, ""):
            uri, read = locate(str(row["image"]), self.fs, self.base, self.options)
            return Item(id=item_id, uri=uri, text=text, text_truncated=cut, read=read)
        if text is None:
            return self._error(item_id, "message has neither image, image_b64 nor text", partition, offset)
        return Item(id=item_id, uri=position, text=text, text_truncated=cut)

    def _too_large(self, data: bytes) -> str | None:
        limit = self.options.max_bytes
        return f"too large: exceeds the {limit}-byte limit" if len(data) > limit else None

    def _error(self, item_id: str, reason: str, partition: int, offset: int) -> Item:
        # "kafka: <reason>" first, so errors group by kind; where it was last.
        return Item(id=item_id, uri=f"kafka://{self.topic}/{partition}/{offset}",
                    error=f"kafka: {reason}: partition {partition} offset {offset}")
