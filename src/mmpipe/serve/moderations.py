"""``POST /v1/moderations`` in the OpenAI schema, answered by the moderation job's stages.

``input`` is a string, a list of strings (one result each), or a list of parts
(``{"type": "text", "text": …}`` / ``{"type": "image_url", "image_url": {"url": …}}``) that
together make one result, scored as the worst of its parts.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from typing import Any

from ..decode import sniff_media_type
from ..engine.local import run_in_turn
from ..jobs.moderate import ModerateConfig, moderation_stages
from ..net import fetch_url
from ..policy import Policy
from ..records import Item
from .batcher import DynamicBatcher
from .errors import RequestError

INPUT_TYPE = {"text": "text", "image": "image", "video": "image"}


def moderation_runner(policy: Policy, job: ModerateConfig, clip=None):
    """A factory a batcher replica calls once: loads the models, returns the batch function."""
    stages = [s for s in moderation_stages(policy, job, clip) if s.name != "judge"]

    def make():
        fns = [(s.name, s.setup()) for s in stages]
        return lambda items: run_in_turn(fns, list(items))
    return make


async def parse_input(body: dict, max_bytes: int, allow_private: bool) -> list[list[Item]]:
    """One list of items per result the response will hold."""
    value = body.get("input")
    if isinstance(value, str):
        return [[Item(id="0", text=value)]]
    if not isinstance(value, list) or not value:
        raise RequestError("input must be a string, a list of strings or a list of content parts",
                           param="input")
    if all(isinstance(v, str) for v in value):
        return [[Item(id=str(i), text=v)] for i, v in enumerate(value)]
    parts = []
    for i, part in enumerate(value):
        where = f"input[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(Item(id=where, text=part["text"]))
        elif kind == "image_url" and isinstance(part.get("image_url"), dict) \
                and isinstance(part["image_url"].get("url"), str):
            url = part["image_url"]["url"]
            data = await _image_bytes(url, max_bytes, allow_private, where)
            kind = sniff_media_type(data, url if not url.startswith("data:") else None)
            if kind not in ("image", "video"):
                # Bytes that sniff as text would otherwise be moderated as text: say so instead.
                raise RequestError(f"cannot decode the image_url as an image ({kind or 'unknown'} "
                                   "bytes)", param=where)
            parts.append(Item(id=where, uri=None if url.startswith("data:") else url, data=data))
        else:
            raise RequestError("each part must be {type: text, text} or {type: image_url, "
                               "image_url: {url}}", param=where)
    return [parts]


async def _image_bytes(url: str, max_bytes: int, allow_private: bool, where: str) -> bytes:
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise RequestError("data URLs must be base64-encoded", param=f"{where}.image_url.url")
        if len(payload) * 3 // 4 > max_bytes:
            raise RequestError(f"image exceeds {max_bytes} bytes", param=f"{where}.image_url.url")
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("invalid base64 in data URL", param=f"{where}.image_url.url") from None
    try:
        return await asyncio.to_thread(fetch_url, url, allow_private=allow_private, max_bytes=max_bytes)
    except (OSError, ValueError) as exc:
        raise RequestError(f"cannot use image URL: {exc}", param=f"{where}.image_url.url") from None


async def moderate_request(body: dict, batcher: DynamicBatcher, policy: Policy, model: str,
                           max_bytes: int, allow_private: bool) -> dict:
    groups = await parse_input(body, max_bytes, allow_private)
    flat = [item for group in groups for item in group]
    records = await batcher.submit(flat)
    results, start = [], 0
    for group in groups:
        done = records[start:start + len(group)]
        start += len(group)
        for item, record in zip(group, done):
            if record.error:
                raise RequestError(f"{item.id}: {record.error}", param=item.id if item.id != "0" else "input")
        results.append(_result(policy, done))
    return {"id": f"modr-{uuid.uuid4().hex}", "model": model, "results": results}


def _result(policy: Policy, records: list) -> dict[str, Any]:
    scores, applied = {}, {}
    for c in policy.categories:
        values = [(r.outputs["scores"].get(c.name), INPUT_TYPE[r.media_type]) for r in records]
        used = [(v, t) for v, t in values if v is not None]
        scores[c.name] = max((v for v, _ in used), default=0.0)
        applied[c.name] = sorted({t for _, t in used})
    flags = {c.name: bool(applied[c.name]) and scores[c.name] >= c.review for c in policy.categories}
    return {"flagged": any(flags.values()), "categories": flags,
            "category_scores": {k: round(float(v), 6) for k, v in scores.items()},
            "category_applied_input_types": applied}
