"""Decoding bytes into arrays a model can take (CPU work, run in the decode pool)."""

from .image import DEFAULT_MAX_PIXELS, DecodeError, decode_image
from .media import sniff_media_type
from .text import DecodedText, decode_text
from .video import VideoFrames, sample_frames

__all__ = ["DEFAULT_MAX_PIXELS", "DecodeError", "DecodedText", "VideoFrames", "decode_image",
           "decode_text", "sample_frames", "sniff_media_type"]
