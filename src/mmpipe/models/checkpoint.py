"""A transformers checkpoint folder as every loader reads it: safetensors weights (pickle only
when allowed), then its config and tokenizer, with one clear error when they do not load."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelLoadError


def require_weights(folder: Path, allow_pickle: bool) -> None:
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json")):
        return
    pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
    if pickled and not allow_pickle:
        raise ModelLoadError(f"{folder} has only pickle weights ({', '.join(pickled)}); they can run "
                             "code when loaded. Convert them to safetensors, or pass --allow-pickle")
    if not pickled:
        raise ModelLoadError(f"no weights (*.safetensors) in {folder}")


def read_checkpoint(folder: Path, config_class, allow_pickle: bool, what: str):
    """(config, tokenizer) of the checkpoint in ``folder``, its weights checked but not loaded."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # ours is the only progress bar on the terminal
    require_weights(folder, allow_pickle)
    try:
        return config_class.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load {what} from {folder}: {exc}") from None


class TokenIds:
    """text → the model's token ids (int64, special tokens added, cut at ``max_length``), as
    ``tokenizer(text, truncation=True, max_length=max_length)`` gives them.

    A fast tokenizer's Rust core is called directly, on a copy set up once to truncate. The
    transformers call around it costs twice as much and, going through ``encode_batch``, lets go
    of the GIL: in a server whose model thread runs Python, each text then waited up to the
    interpreter's switch interval (5 ms) to get it back. Picklable, for worker processes."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.core = None
        if getattr(tokenizer, "is_fast", False):
            from tokenizers import Tokenizer

            self.core = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
            self.core.no_padding()
            side = getattr(tokenizer, "truncation_side", "right")
            self.core.enable_truncation(max_length, direction=side)

    def __call__(self, text: str) -> np.ndarray:
        if self.core is not None:
            ids = self.core.encode(text).ids
        else:
            ids = self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]
        return np.asarray(ids, dtype=np.int64)
