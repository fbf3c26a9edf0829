"""Training and validation splits: cached encoder features with their token ids, batched as the
canvases decoding uses.

A clip's target canvas is its ids then end-of-text padding; a batch's canvases are padded to
max_i max(canvas_length(duration_i, max_seq_len), len(ids_i) + 1), so training and inference see
the same lengths. Clips whose ids + end-of-text overflow max_seq_len are left out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .asr import FRAME_BUCKET
from .cache import FeatureCache, build_shared
from .config import TrainConfig, WhisfusionConfig
from .data import Example
from .decoding import canvas_length
from .distributed import Dist
from .model import Whisfusion
from .tokenizer import Tokenizer

__all__ = ["Split", "canvas_targets", "open_splits"]

log = logging.getLogger("whisfusion_cli")


@dataclass
class Split:
    """Cached clips with their token ids."""

    cache: FeatureCache
    ids: list[list[int]]

    def batch(self, idx: list[int], eos_id: int, max_len: int) -> tuple[Tensor, Tensor, Tensor, list[float]]:
        """xa (B, S, C) fp16 padded to the longest clip, n_frames (B,), x0 (B, L) (canvas_targets), durations."""
        xa, n_frames = self.cache.batch(idx, FRAME_BUCKET)  # as decoding buckets them
        durations = [self.cache.entries[i].duration for i in idx]
        return xa, n_frames, canvas_targets([self.ids[i] for i in idx], durations, eos_id, max_len), durations


def canvas_targets(ids: list[list[int]], durations: list[float], eos_id: int, max_len: int) -> Tensor:
    """x0 (B, L): each transcript's ids, then end-of-text padding (targets too), on the canvas decoding
    uses: L = max over the batch of max(canvas_length(duration), len(ids) + 1)."""
    length = max(max(canvas_length(d, max_len), len(x) + 1) for d, x in zip(durations, ids))
    x0 = torch.full((len(ids), length), eos_id, dtype=torch.long)
    for row, x in enumerate(ids):
        x0[row, : len(x)] = torch.tensor(x, dtype=torch.long)
    return x0


def _open_split(cache_dir: Path, keys: list[str], tokenizer: Tokenizer, max_len: int) -> Split:
    """Tokenised clips; those whose ids + end-of-text overflow the canvas limit are dropped."""
    cache = FeatureCache(cache_dir, keys)
    texts = [e.text for e in cache.entries]
    ids = tokenizer.encode_transcripts(texts)
    fits = [i for i, x in enumerate(ids) if len(x) < max_len]
    if len(fits) < len(ids):
        log.warning("%d clips have more than %d tokens: left out", len(ids) - len(fits), max_len - 1)
        cache, ids = FeatureCache(cache_dir, [keys[i] for i in fits]), [ids[i] for i in fits]
    return Split(cache, ids)


def open_splits(cfg: TrainConfig, dist: Dist, model: Whisfusion, wcfg: WhisfusionConfig, tokenizer: Tokenizer,
                train_ex: list[Example], val_ex: list[Example],
                progress: Callable[[int, int], None] | None) -> tuple[Split, Split | None]:
    """Encodes what the feature cache lacks (ranks share the work) and opens the train/val splits."""
    cache_dir = Path(cfg.cache_dir or Path(cfg.output) / "features")
    report = build_shared(train_ex + val_ex, cache_dir, model.encoder.to(dist.device).eval(), dist.rank,
                          dist.world_size, dist.barrier, cfg.encode_batch_size, progress)
    model.encoder.cpu()  # frozen and cached: it only rides along into the checkpoints
    if report.skipped and dist.is_main:
        log.warning("feature cache: skipped clips %s", dict(report.skipped))
    max_len = wcfg.decoder.max_seq_len
    train_keys = [k for k, i in zip(report.keys, report.kept) if i < len(train_ex)]
    val_keys = [k for k, i in zip(report.keys, report.kept) if i >= len(train_ex)]
    val = _open_split(cache_dir, val_keys, tokenizer, max_len) if val_keys else None
    return _open_split(cache_dir, train_keys, tokenizer, max_len), val
