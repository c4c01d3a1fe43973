"""Decoding bytes into arrays a model can take (CPU work, run in the decode pool).

Video is in ``decode.video``, imported where it is used: it needs PyAV, of the moderate extra."""

from .image import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from .media import sniff_media_type
from .text import DecodedText, decode_text

__all__ = ["DEFAULT_MAX_PIXELS", "DecodeError", "DecodedText", "decode_image",
           "decode_text", "sniff_media_type"]
