"""Typed records that flow between the stages of a job.

Each boundary has one record type. A failure anywhere turns a record into an error record
(same id and uri, ``error`` set, payload dropped) that flows on to the sink, so nothing is lost.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .moderation_records import Moderation


@dataclass
class Item:
    """One input as listed by a source: where it is, and its bytes once read."""

    id: str
    uri: str | None = None
    text: str | None = None
    text_truncated: bool = False  # the source cut ``text`` at MAX_TEXT_CHARS
    data: bytes | None = None
    # Returns (bytes, caption or None); sources that stream (tar shards) fill ``data`` directly.
    read: Callable[[], tuple[bytes | None, str | None]] | None = field(
        default=None, repr=False, compare=False)
    error: str | None = None


@dataclass
class Decoded:
    """An item decoded and preprocessed for a model, still on the CPU."""

    id: str
    uri: str | None
    text: str | None
    pixels: np.ndarray | None = None  # resized, cropped image (C, H, W) uint8; the model normalises
    # A JPEG left for the model's device to decode (--decode-device cuda), instead of pixels.
    encoded: bytes | None = None
    tokens: np.ndarray | None = None  # model-ready token ids (L,) int64
    # A pipelined image tower's activations between two of its parts: (tokens, width) float32.
    hidden: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    # Moderation: what the item is, its frames and what the model stages found in them.
    moderation: Moderation | None = None


@dataclass
class Scored:
    """What the models made of an item: named outputs (embeddings, scores)."""

    id: str
    uri: str | None
    text: str | None
    outputs: dict[str, Any] = field(default_factory=dict)
    width: int | None = None
    height: int | None = None
    error: str | None = None
    text_tokens: int | None = None  # tokens the text model read of ``text``, after its truncation


Record = Item | Decoded | Scored


def failed(record: Record, reason: str) -> Record:
    """The error twin of ``record``: identity kept, payload dropped, reason recorded."""
    payload = {"data": None, "pixels": None, "encoded": None, "tokens": None, "hidden": None,
               "moderation": None, "outputs": {}}
    names = {f.name for f in dataclasses.fields(record)}
    changes = {k: v for k, v in payload.items() if k in names}
    return dataclasses.replace(record, error=reason, **changes)
