"""Banks of perceptual hashes (PDQ, pHash) and CLIP vectors of known media, and matching frames
against them."""

from .hashing import HASHES, hash_image
from .match import Matcher, VectorMatcher
from .store import Bank, BankError, add_files, import_csv, model_key, open_bank, read_manifest

__all__ = ["HASHES", "Bank", "BankError", "Matcher", "VectorMatcher", "add_files", "hash_image",
           "import_csv", "model_key", "open_bank", "read_manifest"]
