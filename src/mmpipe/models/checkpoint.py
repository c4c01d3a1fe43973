"""A transformers checkpoint folder as every loader reads it: safetensors weights (pickle only
when allowed), then its config and tokenizer, with one clear error when they do not load."""

from __future__ import annotations

from pathlib import Path

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
