"""Banks of perceptual hashes (PDQ, pHash) of known media, and matching frames against them."""

from .hashing import HASHES, hash_image
from .match import Matcher
from .store import Bank, BankError, add_files, import_csv, open_bank

__all__ = ["HASHES", "Bank", "BankError", "Matcher", "add_files", "hash_image", "import_csv",
           "open_bank"]
