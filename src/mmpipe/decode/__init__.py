"""Decoding bytes into arrays a model can take (CPU work, run in the decode pool)."""

from .image import DEFAULT_MAX_PIXELS, DecodeError, decode_image

__all__ = ["DEFAULT_MAX_PIXELS", "DecodeError", "decode_image"]
