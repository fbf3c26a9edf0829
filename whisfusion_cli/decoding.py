"""Parallel Diffusion Decoding (PDD), Whisfusion (arXiv 2508.07048) Sec. 3.3.

One decoder pass on the fully masked canvas gives a distribution per position; k candidate
transcripts are sampled from it at once (candidate 0 takes the argmax). The k candidates of a window
all start as the same all-[MASK] canvas, so that first pass runs on one row per window and the k
candidates are drawn from its logits (`first_pass`). Each of the N-1 later steps re-masks a fraction
rho_t of every candidate and re-predicts it; all k x windows run as one batch. The candidate with
the highest mean token confidence wins. The cost is N decoder passes, whatever the transcript
length. Functions are small and sync-free so the loop can be compiled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import DecodingOptions
from .diffusion import select_remask, select_remask_scoped
from .token_stats import choose_tokens

DecoderFn = Callable[..., Tensor | tuple[Tensor, Tensor]]
"""(canvas (B*R, L), positions=None) -> logits for B windows with R rows each, window-major: row n
belongs to window n // R. PDD calls it with R = 1 on the first pass (one all-[MASK] row per window,
`first_pass`) and R = k afterwards (every candidate); the decoder folds a window's R rows into one
cross-attention sequence over that window's audio K/V. positions None: logits (B*R, L, V) at every
position; positions (B*R, P) int64: logits (B*R, P, V) at those positions only, so PDD skips the
output head (most of a pass's FLOPs with a 51,865-token vocabulary) where no token can change. A
decoder that computes equal rows once may return (logits (M, L or P, V), rows (B*R,) int64): canvas
row n's logits are logits[rows[n]] (`distinct_rows`), never spelled out."""
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


def content_mask(canvas: Tensor, eos_id: int) -> Tensor:
    """(N, L) True for the tokens before the first end-of-text and for that end-of-text itself."""
    is_eos = (canvas == eos_id).int()
    before = is_eos.cumsum(-1) - is_eos  # eos tokens strictly before each position
    return before == 0


def mean_confidence(canvas: Tensor, confidence: Tensor, eos_id: int) -> Tensor:
    """Mean confidence over each row's content (text + its end-of-text), (N,)."""
    keep = content_mask(canvas, eos_id).float()
    return (confidence * keep).sum(-1) / keep.sum(-1).clamp(min=1.0)


def head_sizes(schedule: tuple[float, ...], canvas_len: int) -> tuple[int, ...]:
    """P_t, the positions each PDD step computes logits at: all L first, then min(L, ceil(rho_t L)).

    A static upper bound on the positions any row re-masks: `select_remask` re-masks round(rho L),
    `select_remask_scoped` round(rho |scope|) <= round(rho L).
    """
    return tuple(canvas_len if step == 0 else min(canvas_len, math.ceil(rho * canvas_len))
                 for step, rho in enumerate(schedule))


def first_pass(decoder: DecoderFn, n_windows: int, canvas_len: int, mask_id: int, k: int,
               temperature: float, generator: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
    """PDD's first step: k candidates per window drawn from ONE decoder row per window.

    Every candidate starts as the same all-[MASK] canvas, so the decoder runs on (n_windows, L) and
    each window's k candidates read that window's logits row in place (`choose_tokens` rows):
    candidate 0 the argmax, the others samples at `temperature`. A k-th of the pass's compute and
    of its logits, the largest tensor of a PDD run.

    Returns:
        canvas (N, L) and confidence (N, L), N = n_windows * k window-major: each token and its
        probability (temperature 1).
    """
    canvas = torch.full((n_windows, canvas_len), mask_id, dtype=torch.long, device=device)  # (B, L)
    logits, rows = _logits_rows(decoder(canvas))  # (B or fewer, L, V)
    window = torch.arange(n_windows, device=device).repeat_interleave(k)  # (N,) each candidate's window
    return choose_tokens(logits, window if rows is None else rows[window], True, k, temperature, generator)


def predict(decoder: DecoderFn, canvas: Tensor, confidence: Tensor, mask_id: int,
            n_positions: int) -> tuple[Tensor, Tensor]:
    """A PDD step after the first: every masked position takes its argmax token and that token's probability.

    Logits are computed only at each row's first `n_positions` P positions in re-mask order: all
    its masked positions (<= P), then others; P >= L: at every position.
    """
    masked = canvas == mask_id  # (N, L)
    if n_positions >= canvas.shape[1]:
        pred, prob = choose_tokens(*_logits_rows(decoder(canvas)))  # (N, L) each
        return torch.where(masked, pred, canvas), torch.where(masked, prob, confidence)
    positions = masked_first(masked)[:, :n_positions]  # (N, P)
    pred, prob = choose_tokens(*_logits_rows(decoder(canvas, positions=positions)))  # (N, P) each
    hit = masked.gather(1, positions)
    new_tokens = torch.where(hit, pred, canvas.gather(1, positions))
    new_conf = torch.where(hit, prob, confidence.gather(1, positions))
    return canvas.scatter(1, positions, new_tokens), confidence.scatter(1, positions, new_conf)


def _logits_rows(out: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | None]:
    """A DecoderFn's result as (logits, rows or None)."""
    return out if isinstance(out, tuple) else (out, None)


def masked_first(masked: Tensor) -> Tensor:
    """(N, L) each row's positions, its masked ones first, each group in canvas order.

    What a stable sort of `masked` (descending) gives, from two prefix sums and a scatter: on the
    GPU a sort of these short rows is several kernels and ~25 us per step; no host sync either way.
    """
    m = masked.long()
    slot = torch.where(masked, m.cumsum(-1), m.sum(-1, keepdim=True) + (1 - m).cumsum(-1)) - 1  # (N, L)
    order = torch.arange(masked.shape[1], device=masked.device).expand_as(slot)
    return torch.empty_like(slot).scatter_(1, slot, order)


@torch.inference_mode()
def pdd(decoder: DecoderFn, n_windows: int, canvas_len: int, mask_id: int, eos_id: int,
        options: DecodingOptions, device: torch.device) -> PDDOutput:
    """Runs PDD for `n_windows` audio windows whose adapter K/V the `decoder` closure already holds.

    Args:
        decoder: a DecoderFn, called first on an (n_windows, L) canvas (one all-[MASK] row per
            window, `first_pass`), then on (n_windows * k, L) canvases, candidates window-major.
            Steps after the first ask for logits only at the P_t = `head_sizes` positions per row
            that can change; the result is the same as with the full head.
        canvas_len: L, the number of token positions (text + end-of-text padding).
        mask_id, eos_id: the [MASK] and end-of-text ids.
        options: k, steps, schedule, re-mask rule, temperature, seed.
    """
    k = options.k
    generator = make_generator(device, options.seed)
    canvas, confidence = first_pass(decoder, n_windows, canvas_len, mask_id, k, options.temperature, generator,
                                    device)  # (N, L) each
    sizes = head_sizes(options.schedule, canvas_len)
    for step, rho in enumerate(options.schedule[1:], start=1):
        if options.scope == "text":
            remask = select_remask_scoped(canvas, confidence, rho, options.remask, eos_id, generator)
        else:
            remask = select_remask(confidence, round(rho * canvas_len), options.remask, generator)
        canvas, confidence = predict(decoder, canvas.masked_fill(remask, mask_id), confidence, mask_id, sizes[step])
    scores = mean_confidence(canvas, confidence, eos_id).view(n_windows, k)
    best = scores.argmax(-1)  # (B,)
    candidates = canvas.view(n_windows, k, canvas_len)
    rows = torch.arange(n_windows, device=device)
    return PDDOutput(candidates[rows, best], scores[rows, best], candidates, scores, len(options.schedule),
                     confidence.view(n_windows, k, canvas_len), best)


def distinct_rows(decoder: DecoderFn, n_windows: int) -> DecoderFn:
    """`decoder`, run only on each window's distinct canvas rows; equal rows share their logits.

    The k candidates of a window start equal (all [MASK]) and mostly converge after a step or two
    (the bundled model on real clips: 1-4 distinct rows of 15 from the third pass on), so eager
    decoding, compute-bound on a CPU or on large GPU batches, skips most of its work. Each window
    gets the same number of rows (its distinct ones, padded with repeats) because the decoder folds
    a window's candidates into one cross-attention sequence. A canvas of one row per window (PDD's
    first pass) goes straight through. Data-dependent shapes and a host sync per pass: not for the
    CUDA-graph path.
    """
    def fn(canvas: Tensor, positions: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        n, dev = canvas.shape[0], canvas.device
        k = n // n_windows  # rows per window
        if k == 1:  # nothing to share, and no host sync
            return decoder(canvas, positions=positions)
        win = torch.arange(n_windows, device=dev).repeat_interleave(k)  # (N,) each row's window
        key = torch.cat([win[:, None], canvas] + ([] if positions is None else [positions]), 1)
        uniq, inv = torch.unique(key, dim=0, return_inverse=True)  # sorted: window-major ids
        counts = torch.bincount(uniq[:, 0], minlength=n_windows)  # distinct rows per window
        width = int(counts.max())  # the one host sync
        if width == k:
            return decoder(canvas, positions=positions)
        slot = inv - (counts.cumsum(0) - counts)[win]  # (N,) each row's rank among its window's
        pick = torch.zeros(n_windows, width, dtype=torch.long, device=dev)  # unused slots: row 0, a repeat
        pick[win, slot] = torch.arange(n, device=dev) % k
        rows = (torch.arange(n_windows, device=dev)[:, None] * k + pick).flatten()  # (B * width,)
        logits = decoder(canvas[rows], positions=None if positions is None else positions[rows])
        return logits, win * width + slot  # (B * width, L or P, V), and each canvas row's logits row

    return fn


def eager_decoder(forward: Callable[..., Tensor], cross_kv: object, n_windows: int) -> DecoderFn:
    """A decoder's `forward(tokens, cross_kv, positions=)` over one batch's adapter K/V, as the
    DecoderFn PDD calls, run eagerly on each window's distinct rows (`distinct_rows`)."""
    return distinct_rows(lambda canvas, positions=None: forward(canvas, cross_kv, positions=positions), n_windows)


def canvas_to_ids(row: Tensor | list[int], eos_id: int, vocab_limit: int | None = None,
                  confidence: Tensor | list[float] | None = None, dedupe: float = 0.0) -> list[int]:
    """The transcript's ids: everything before the first end-of-text, ids the tokenizer lacks dropped.

    With `confidence` (the row's token probabilities) and dedupe > 0, a token equal to the one
    before it is dropped when either of the two was predicted with probability below `dedupe`:
    parallel prediction's stutter ("fat fat pieces") goes, a confident real repeat ("had had") stays.
    """
    return canvas_tokens(row, eos_id, vocab_limit, confidence, dedupe)[0]


def canvas_tokens(row: Tensor | list[int], eos_id: int, vocab_limit: int | None = None,
                  confidence: Tensor | list[float] | None = None, dedupe: float = 0.0) -> tuple[list[int], list[float]]:
    """`canvas_to_ids`'s ids and each one's probability (a merged run's: its least confident member's)."""
    ids = row.tolist() if isinstance(row, Tensor) else list(row)
    conf = (confidence.tolist() if isinstance(confidence, Tensor) else list(confidence)) \
        if confidence is not None else [1.0] * len(ids)
    end = ids.index(eos_id) if eos_id in ids else len(ids)
    out: list[int] = []
    probs: list[float] = []
    last_conf = 1.0
    for i, c in zip(ids[:end], conf[:end]):
        if vocab_limit is not None and i >= vocab_limit:
            continue
        if out and i == out[-1] and min(c, last_conf) < dedupe:
            last_conf = min(c, last_conf)  # one unsure member merges the whole run
            probs[-1] = min(probs[-1], c)
            continue
        out.append(i)
        probs.append(c)
        last_conf = c
    return out, probs
