"""The masked-diffusion process in one place: forward masking, the 1/t-weighted loss, re-masking.

Training (`forward_process`, `masked_diffusion_loss`) and decoding (`select_remask`) both use
this module, so the definition of "masked" lives once (SMDM, Nie et al. 2024; LLaDA, 2025).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import RemaskRule

DOUBT = 0.9  # padding predicted with less confidence than this stays open to re-masking


def forward_process(x0: Tensor, mask_id: int, t_min: float = 0.0, t_max: float = 1.0,
                    generator: torch.Generator | None = None, eps: float = 1e-3) -> tuple[Tensor, Tensor, Tensor]:
    """Masks each sequence with its own ratio t ~ U(t_min, t_max).

    Args:
        x0: (B, L) clean token ids.
        mask_id: the [MASK] id.
        t_min, t_max: range of the mask ratio (stage 1: 0..1, stage 2: 0.7..1).

    Returns:
        xt (B, L) with masked positions set to mask_id, the boolean mask (B, L), and t (B,).
        t is kept >= eps so the 1/t weight stays finite.
    """
    b, n = x0.shape
    t = torch.rand(b, device=x0.device, generator=generator) * (t_max - t_min) + t_min
    t = t.clamp(min=eps)
    masked = torch.rand(b, n, device=x0.device, generator=generator) < t[:, None]
    return x0.masked_fill(masked, mask_id), masked, t


def masked_diffusion_loss(logits: Tensor, x0: Tensor, masked: Tensor, t: Tensor) -> Tensor:
    """Cross-entropy on masked positions weighted 1/t, averaged over all positions.

    The 1/t weight makes this the ELBO of the masked-diffusion model: at ratio t only a fraction
    t of the positions carry a loss, so each is up-weighted to keep every t equally important.
    logits (B, L, V), x0 (B, L), masked (B, L), t (B,).
    """
    ce = F.cross_entropy(logits.float().flatten(0, 1), x0.flatten(), reduction="none").view_as(x0)
    return (ce * masked / t[:, None]).sum() / x0.numel()


def select_remask(confidence: Tensor, n_remask: int, rule: RemaskRule,
                  generator: torch.Generator | None = None) -> Tensor:
    """Chooses `n_remask` positions per row to mask again before the next PDD step.

    Args:
        confidence: (N, L) probability each current token had when it was predicted.
        n_remask: how many positions per row (the same for every row: static shapes).
        rule: "low_confidence" re-masks the least confident tokens (LLaDA); "random" picks
            uniformly (the plain reverse process).

    Returns:
        (N, L) boolean mask of the positions to re-mask.
    """
    length = confidence.shape[1]
    if n_remask <= 0:
        return torch.zeros_like(confidence, dtype=torch.bool)
    if n_remask >= length:
        return torch.ones_like(confidence, dtype=torch.bool)
    idx = _remask_score(confidence, rule, generator).topk(n_remask, dim=-1, largest=False).indices
    return torch.zeros_like(confidence, dtype=torch.bool).scatter_(1, idx, True)


def select_remask_scoped(canvas: Tensor, confidence: Tensor, fraction: float, rule: RemaskRule, eos_id: int,
                         generator: torch.Generator | None = None) -> Tensor:
    """Like `select_remask`, but the fraction applies to each row's text as predicted so far.

    The scope of a row is its positions before its first end-of-text, that end-of-text, and any
    padding predicted with confidence below DOUBT: the end-of-text prediction is the length
    estimate, and confident padding is never re-masked nor counted. Row r re-masks
    round(fraction * |scope_r|) positions; shapes stay static (no host sync).
    """
    is_eos = (canvas == eos_id).int()
    scope = ((is_eos.cumsum(-1) - is_eos) == 0) | (confidence < DOUBT)  # (N, L)
    count = (fraction * scope.sum(-1)).round()  # (N,)
    score = _remask_score(confidence, rule, generator)
    order = score.masked_fill(~scope, float("inf")).argsort(-1)  # (N, L) first to re-mask first
    first = torch.arange(canvas.shape[1], device=canvas.device) < count[:, None]  # (N, L) the first count slots
    return torch.zeros_like(first).scatter_(1, order, first)


def _remask_score(confidence: Tensor, rule: RemaskRule, generator: torch.Generator | None) -> Tensor:
    """(N, L) score, lowest re-masked first: the confidence (noise breaks ties) or pure noise."""
    noise = torch.rand(confidence.shape, device=confidence.device, generator=generator)
    return confidence + 1e-6 * noise if rule == "low_confidence" else noise
