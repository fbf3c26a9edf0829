"""Distillation from Whisper's AR decoder for `stream_train.py --distill ALPHA` (README.md beside this file).

Whisper's own decoder (shipped beside the model as its rescorer) learnt English and real speech from
680 k hours; the diffusion decoder has heard a few. At every training step the AR decoder reads
each row's gold text teacher-forced in one causal pass over the same encoder states (trimmed to the
clip's speech frames, the rest masked): its distribution for canvas position i, p_AR(. | audio,
x_<i), is a soft target there. The masked positions' loss becomes
(1 - ALPHA) * CE(gold) + ALPHA * CE(teacher's top-K, renormalised), with the diffusion loss's 1/t
weight, up to and including the first end-of-text (past it the teacher has nothing to say).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from whisfusion_cli.rescoring import Rescorer
from whisfusion_cli.whisper import audio_key_mask

TOP_K = 16  # teacher tokens kept per position (the rest of its mass is negligible and costs memory)


class Teacher:
    """The AR decoder reading gold texts: soft targets on the diffusion decoder's canvas."""

    def __init__(self, rescorer: Rescorer, top_k: int = TOP_K):
        self.rescorer, self.top_k = rescorer.eval().requires_grad_(False), top_k

    @torch.no_grad()
    def targets(self, xa: Tensor, n_frames: Tensor, x0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """xa (B, S, C) encoder states (rows padded past n_frames (B,)), x0 (B, L) ids then end-of-text
        padding -> the teacher's top-K ids (B, L, K), their renormalised probabilities (B, L, K) and
        where it has a target (B, L): positions up to each row's first end-of-text."""
        dec, prompt, eot = self.rescorer.decoder, self.rescorer.prompt, self.rescorer.eot
        b, length = x0.shape
        p = len(prompt)
        mask = audio_key_mask(n_frames, xa.shape[1])
        ckv = [(k, v, mask) for k, v in dec.cross_kv(xa.to(dec.layer_norm.weight.dtype))]
        tokens = torch.cat([x0.new_tensor(prompt).expand(b, p), x0], 1)[:, : p - 1 + length]  # (B, p-1+L)
        cache = dec.new_cache(b, tokens.shape[1])
        logits = dec(tokens, ckv, cache, 0)[:, p - 1:]  # (B, L, V): position i predicts canvas token i
        logits[..., eot + 1:] = -math.inf  # specials and timestamps are never text
        top, idx = logits.float().topk(self.top_k, -1)  # (B, L, K)
        n_text = (x0 != eot).sum(1)  # (B,) the canvas holds ids, then end-of-text only
        valid = torch.arange(length, device=x0.device) <= n_text[:, None]  # (B, L)
        return idx, top.softmax(-1), valid


def distill_loss(logits: Tensor, x0: Tensor, masked: Tensor, t: Tensor, targets: tuple[Tensor, Tensor, Tensor],
                 alpha: float) -> Tensor:
    """masked_diffusion_loss with the teacher's soft targets mixed in at weight alpha where it has them.

    logits (B, L, V), x0 (B, L), masked (B, L), t (B,); targets from Teacher.targets."""
    idx, prob, valid = targets
    logp = logits.float().log_softmax(-1)  # (B, L, V)
    hard = -logp.gather(-1, x0[..., None])[..., 0]  # (B, L)
    soft = -(prob * logp.gather(-1, idx)).sum(-1)  # (B, L)
    per = torch.where(valid, (1 - alpha) * hard + alpha * soft, hard)
    return (per * masked / t[:, None]).sum() / x0.numel()


def agreement(targets: tuple[Tensor, Tensor, Tensor], x0: Tensor) -> float:
    """Share of the teacher's target positions where its first choice is the gold token (a log check)."""
    idx, _, valid = targets
    return float(((idx[..., 0] == x0) & valid).sum() / valid.sum().clamp(min=1))

