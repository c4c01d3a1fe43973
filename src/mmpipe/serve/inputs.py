"""Request ``input`` values as items: strings and OpenAI content parts (text, image_url)."""

from __future__ import annotations

import asyncio
import base64
import binascii

from ..decode import sniff_media_type
from ..net import fetch_url
from ..records import Item
from .errors import RequestError

PART_SHAPE = "each part must be {type: text, text} or {type: image_url, image_url: {url}}"


class InputLimits:
    def __init__(self, max_bytes: int, allow_private_urls: bool):
        self.max_bytes, self.allow_private_urls = max_bytes, allow_private_urls


async def part_item(part, where: str, limits: InputLimits) -> Item:
    """One item from a string or a content part; ``where`` (``input[2]``) names it in errors."""
    if isinstance(part, str):
        return Item(id=where, text=part)
    kind = part.get("type") if isinstance(part, dict) else None
    if kind == "text" and isinstance(part.get("text"), str):
        return Item(id=where, text=part["text"])
    image = part.get("image_url") if kind == "image_url" else None
    url = image.get("url") if isinstance(image, dict) else image if isinstance(image, str) else None
    if not isinstance(url, str):
        raise RequestError(PART_SHAPE, param=where)
    data = await _image_bytes(url, where, limits)
    remote = not url.startswith("data:")
    found = sniff_media_type(data, url if remote else None)
    if found not in ("image", "video"):
        # Bytes that sniff as text would otherwise be scored as text: say so instead.
        raise RequestError(f"cannot decode the image_url as an image ({found or 'unknown'} bytes)",
                           param=where)
    return Item(id=where, uri=url if remote else None, data=data)


async def _image_bytes(url: str, where: str, limits: InputLimits) -> bytes:
    param = f"{where}.image_url.url"
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise RequestError("data URLs must be base64-encoded", param=param)
        if len(payload) * 3 // 4 > limits.max_bytes:
            raise RequestError(f"image exceeds {limits.max_bytes} bytes", param=param)
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("invalid base64 in data URL", param=param) from None
    try:
        # Refuses file://, loopback, private and link-local addresses (every redirect too)
        # unless the server's config allows them.
        return await asyncio.to_thread(fetch_url, url, allow_private=limits.allow_private_urls,
                                       max_bytes=limits.max_bytes)
    except (OSError, ValueError) as exc:
        raise RequestError(f"cannot use image URL: {exc}", param=param) from None


def failed_items(items: list[Item], records: list) -> None:
    """A request whose input cannot be read or decoded is the caller's error: 400 naming it."""
    for item, record in zip(items, records):
        if record.error:
            raise RequestError(f"{item.id}: {record.error}", param=item.id)
