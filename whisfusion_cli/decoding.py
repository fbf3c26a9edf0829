"""Parallel Diffusion Decoding (PDD), Whisfusion (arXiv 2508.07048) Sec. 3.3.

One decoder pass on the fully masked canvas gives a distribution per position; k candidate
transcripts are sampled from it at once (candidate 0 takes the argmax). Each of the N-1 later
steps re-masks a fraction rho_t of every candidate and re-predicts it; all k x windows run as one
batch. The candidate with the highest mean token confidence wins. The cost is N decoder passes,
whatever the transcript length. Functions are small and sync-free so the loop can be compiled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import DecodingOptions
from .diffusion import select_remask, select_remask_scoped

DecoderFn = Callable[[Tensor], Tensor]  # canvas (B*k, L) -> logits (B*k, L, V)
TOKENS_PER_SECOND = 8  # canvas positions per second of audio: well above fast speech (~5 tokens/s)
MIN_CANVAS = 16
CANVAS_MULTIPLE = 16  # canvas lengths are rounded up to this: few distinct shapes (CUDA graphs, kernels)


def canvas_length(duration_s: float, max_len: int) -> int:
    """The canvas for a window of `duration_s` seconds: text + end-of-text padding.

    Bounded by the audio's duration instead of a fixed 256 (adaptive length): fewer positions to
    compute and a re-mask fraction rho_t that applies to the text rather than to padding.
    Training pads each batch to the same length, so both see the same canvases.
    """
    wanted = math.ceil((duration_s * TOKENS_PER_SECOND + 8) / CANVAS_MULTIPLE) * CANVAS_MULTIPLE
    return max(1, min(max_len, max(MIN_CANVAS, wanted)))


@dataclass(frozen=True)
class PDDOutput:
    """Tensors for B windows with k candidates each on a canvas of L positions."""

    tokens: Tensor  # (B, L) the chosen candidate's canvas
    confidence: Tensor  # (B,) its mean token confidence
    candidates: Tensor  # (B, k, L) every candidate
    candidate_confidence: Tensor  # (B, k)
    n_forward: int  # decoder passes made (= steps)
    token_confidence: Tensor  # (B, k, L) each candidate token's probability
    best: Tensor  # (B,) index of the chosen candidate


def make_generator(device: torch.device, seed: int | None) -> torch.Generator:
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


def sample_candidates(logits: Tensor, k: int, temperature: float, generator: torch.Generator) -> Tensor:
    """Gumbel-max sampling of (B*k, L) ids from (B*k, L, V) logits; candidate 0 of each window is greedy."""
    gumbel = -torch.log(-torch.log(torch.rand(logits.shape, device=logits.device, generator=generator)
                                   .clamp_(1e-20, 1.0 - 1e-7)))
    sampled = (logits.float() / max(temperature, 1e-6) + gumbel).argmax(-1)
    greedy = logits.argmax(-1)
    is_first = (torch.arange(logits.shape[0], device=logits.device) % k == 0)[:, None]
    return torch.where(is_first, greedy, sampled)


def content_mask(canvas: Tensor, eos_id: int) -> Tensor:
    """(N, L) True for the tokens before the first end-of-text and for that end-of-text itself."""
    is_eos = (canvas == eos_id).int()
    before = is_eos.cumsum(-1) - is_eos  # eos tokens strictly before each position
    return before == 0


def mean_confidence(canvas: Tensor, confidence: Tensor, eos_id: int) -> Tensor:
    """Mean confidence over each row's content (text + its end-of-text), (N,)."""
    keep = content_mask(canvas, eos_id).float()
    return (confidence * keep).sum(-1) / keep.sum(-1).clamp(min=1.0)


def predict(decoder: DecoderFn, canvas: Tensor, confidence: Tensor, mask_id: int, first: bool,
            k: int, options: DecodingOptions, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One PDD step: fill every masked position, record each new token's probability."""
    logits = decoder(canvas)  # (N, L, V), the model's dtype
    if first:
        pred = sample_candidates(logits, k, options.temperature, generator)
    else:
        pred = logits.argmax(-1)
    # p(pred) = exp(logit - logsumexp): no (N, L, V) fp32 softmax is materialised
    chosen = logits.gather(-1, pred[..., None])[..., 0].float()
    prob = torch.exp(chosen - torch.logsumexp(logits, -1).float())  # (N, L)
    masked = canvas == mask_id
    return torch.where(masked, pred, canvas), torch.where(masked, prob, confidence)


@torch.inference_mode()
def pdd(decoder: DecoderFn, n_windows: int, canvas_len: int, mask_id: int, eos_id: int,
        options: DecodingOptions, device: torch.device) -> PDDOutput:
    """Runs PDD for `n_windows` audio windows whose adapter K/V the `decoder` closure already holds.

    Args:
        decoder: maps a canvas (n_windows * k, L) to logits; candidates are window-major.
        canvas_len: L, the number of token positions (text + end-of-text padding).
        mask_id, eos_id: the [MASK] and end-of-text ids.
        options: k, steps, schedule, re-mask rule, temperature, seed.
    """
    k = options.k
    n = n_windows * k
    generator = make_generator(device, options.seed)
    canvas = torch.full((n, canvas_len), mask_id, dtype=torch.long, device=device)
    confidence = torch.zeros(n, canvas_len, device=device)
    for step, rho in enumerate(options.schedule):
        if step > 0:
            if options.scope == "text":
                remask = select_remask_scoped(canvas, confidence, rho, options.remask, eos_id, generator)
            else:
                remask = select_remask(confidence, round(rho * canvas_len), options.remask, generator)
            canvas = canvas.masked_fill(remask, mask_id)
        canvas, confidence = predict(decoder, canvas, confidence, mask_id, step == 0, k, options, generator)
    scores = mean_confidence(canvas, confidence, eos_id).view(n_windows, k)
    best = scores.argmax(-1)  # (B,)
    candidates = canvas.view(n_windows, k, canvas_len)
    rows = torch.arange(n_windows, device=device)
    return PDDOutput(candidates[rows, best], scores[rows, best], candidates, scores, len(options.schedule),
                     confidence.view(n_windows, k, canvas_len), best)


def canvas_to_ids(row: Tensor | list[int], eos_id: int, vocab_limit: int | None = None,
                  confidence: Tensor | list[float] | None = None, dedupe: float = 0.0) -> list[int]:
    """The transcript's ids: everything before the first end-of-text, ids the tokenizer lacks dropped.

    With `confidence` (the row's token probabilities) and dedupe > 0, a token equal to the one
    before it is dropped when either of the two was predicted with probability below `dedupe`:
    parallel prediction's stutter ("fat fat pieces") goes, a confident real repeat ("had had") stays.
    """
    ids = row.tolist() if isinstance(row, Tensor) else list(row)
    conf = (confidence.tolist() if isinstance(confidence, Tensor) else list(confidence)) \
        if confidence is not None else [1.0] * len(ids)
    end = ids.index(eos_id) if eos_id in ids else len(ids)
    out: list[int] = []
    last_conf = 1.0
    for i, c in zip(ids[:end], conf[:end]):
        if vocab_limit is not None and i >= vocab_limit:
            continue
        if out and i == out[-1] and min(c, last_conf) < dedupe:
            last_conf = min(c, last_conf)  # one unsure member merges the whole run
            continue
        out.append(i)
        last_conf = c
    return out
