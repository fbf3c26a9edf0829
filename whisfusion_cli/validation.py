"""Validation during training: the masked-diffusion loss at fixed mask ratios and greedy-PDD WER.

Whisper's English normalisation comes before the WER count (`wer.py`), as in `evaluate`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import DecodingOptions, TrainConfig, WhisfusionConfig
from .curriculum import add_noise, noise_seed
from .decoding import canvas_length, canvas_to_ids, eager_decoder, pdd
from .diffusion import masked_diffusion_loss
from .distributed import Dist, autocast
from .splits import Split
from .tokenizer import Tokenizer
from .wer import normalize, word_errors

__all__ = ["evaluate"]


def _wer_counts(refs: list[str], hyps: list[str]) -> tuple[int, int]:
    """(word errors, reference words) after Whisper's English normalisation; empty references left out."""
    counts = [word_errors(normalize(r), normalize(h)) for r, h in zip(refs, hyps) if normalize(r)]
    return sum(e for e, _ in counts), sum(n for _, n in counts)


@torch.inference_mode()
def evaluate(decoder: nn.Module, split: Split, wcfg: WhisfusionConfig, tokenizer: Tokenizer, cfg: TrainConfig,
             dist: Dist) -> dict[str, Any]:
    """Validation loss at each fixed t of cfg.val_t and greedy-PDD (k=1) WER, over all processes.

    Process r takes clips r, r + world_size, ...; the masks are seeded per clip, so the figures do
    not depend on the number of processes.
    """
    max_len, mask_id, eos_id = wcfg.decoder.max_seq_len, wcfg.decoder.mask_id, wcfg.eos_id
    device = dist.device
    options = DecodingOptions.from_preset(wcfg.default_preset, k=1, seed=cfg.seed)
    sums = [0.0] * (2 * len(cfg.val_t) + 2)  # per t: loss * positions, positions; then errors, ref words
    mine = list(range(dist.rank, len(split.ids), dist.world_size))
    for start in range(0, len(mine), cfg.batch_size):
        idx = mine[start: start + cfg.batch_size]
        xa, n_frames, x0, durations = split.batch(idx, eos_id, max_len)
        with autocast(device):
            kv = decoder.cross_kv(xa.to(device).float(), n_frames.to(device))
            for j, t in enumerate(cfg.val_t):
                seeds = [noise_seed(cfg.seed + 1 + j, -1, i) for i in idx]
                xt, masked, tt = (v.to(device) for v in add_noise(x0, seeds, mask_id, (t, t), max_len))
                loss = masked_diffusion_loss(decoder(xt, kv), x0.to(device), masked, tt)
                sums[2 * j] += float(loss) * x0.numel()
                sums[2 * j + 1] += x0.numel()
            out = pdd(eager_decoder(decoder, kv, len(idx)), len(idx), canvas_length(max(durations), max_len),
                      mask_id, eos_id, options, device)
        hyps = [tokenizer.decode(canvas_to_ids(r, eos_id, tokenizer.vocab_size)) for r in out.tokens]
        errors, words = _wer_counts([split.cache.entries[i].text for i in idx], hyps)
        sums[-2:] = [sums[-2] + errors, sums[-1] + words]
    sums = dist.sum(sums)
    losses = {str(t): sums[2 * j] / max(1.0, sums[2 * j + 1]) for j, t in enumerate(cfg.val_t)}
    return {"val_loss": sum(losses.values()) / len(losses), "val_loss_t": losses,
            "val_wer": sums[-2] / sums[-1] if sums[-1] else None}
