"""The token each canvas position takes and its probability, from the decoder's logits, in one read.

Every PDD pass ends here: per position, the argmax (or, on the first pass, a sample)
and that token's probability under the softmax. With a 51,865-token vocabulary the logits are
the biggest tensor of a pass (15 candidates x 208 positions: 320 MB of bf16), and the plain torch
version reads them five to eight times (max, argmax, subtract, exp, sum; noise, log, log, add on the
first pass). On CUDA one Triton kernel reads each row once for the argmax (an online softmax:
running max and rescaled sum, Milakov & Gimelshein 2018) and, to sample, draws one Philox uniform u
per row and reads the row a second time only up to the first token whose cumulative mass exceeds
u x the sum (inverse CDF: one random number per row, not one per vocabulary entry as Gumbel-max
needs). Rows may be shared: output row n reads logits row rows[n] in place (PDD's first pass, k
candidates per window from one row). Elsewhere, or without Triton, the torch version runs. Both
draw from the same distribution, not the same numbers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

try:  # Triton ships with CUDA builds of torch; CPU builds lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

BLOCK = 2048  # vocabulary entries per iteration of a row's loop


def choose_tokens(logits: Tensor, rows: Tensor | None = None, sample: bool = False, k: int = 1,
                  temperature: float = 1.0, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(ids, probabilities), each (N, ...), from logits (M, ..., V) of any float dtype (M = N without rows).

    sample=False: the argmax. sample=True: a sample from softmax(logits / temperature), except that
    row 0 of every k rows (candidate 0 of each window, rows window-major) takes the argmax. The
    probability is the chosen token's under softmax(logits) (temperature 1), computed in fp32.
    rows (N,) int64: output row n reads logits[rows[n]] (equal canvas rows share their logits, never
    copied); the argmax is then taken once per logits row, a sample still once per output row.
    """
    if rows is not None and not sample:
        ids, probs = choose_tokens(logits)  # once per logits row
        return ids[rows], probs[rows]
    if logits.is_cuda and triton is not None:  # inverse-CDF sampling in the kernel, one program per output row
        return _choose_triton(logits, rows, sample, k, temperature, generator)
    if sample:
        return _sample_torch(logits, rows, k, temperature, generator)
    return _argmax_torch(logits)


def _argmax_torch(logits: Tensor) -> tuple[Tensor, Tensor]:
    top = logits.amax(-1, keepdim=True)  # (..., 1)
    pred = logits.argmax(-1)
    chosen = logits.gather(-1, pred[..., None])[..., 0]
    total = (logits - top).exp_().sum(-1, dtype=torch.float32)  # (...) fp32, >= 1
    return pred, torch.exp((chosen - top[..., 0]).float()) / total


def _sample_torch(logits: Tensor, rows: Tensor | None, k: int, temperature: float,
                  generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """`choose_tokens(sample=True)` off CUDA: inverse-CDF sampling, one uniform per output position
    searched in its logits row's cumulative distribution. Gumbel-max noise over every output row's
    vocabulary took ~1 s of a 10 s clip's first PDD step on a 2-core CPU (15 x 96 x 51,865
    uniforms). The same distribution, other numbers; shared rows (`rows`) or spelled-out equal rows
    give the same samples."""
    m, vocab = logits.shape[0], logits.shape[-1]
    flat = logits.reshape(m, -1, vocab).float()  # (M, R, V)
    rows = torch.arange(m, device=logits.device) if rows is None else rows
    n, r = rows.shape[0], flat.shape[1]
    index = rows[:, None] * r + torch.arange(r, device=rows.device)  # (N, R) rows of the (M*R, V) view
    cdf = (flat / max(temperature, 1e-6)).softmax(-1).view(-1, vocab).cumsum(-1)  # (M*R, V)
    u = torch.rand(n, r, device=logits.device, generator=generator) * cdf[index, -1]
    lo = torch.zeros(n, r, dtype=torch.long, device=logits.device)
    hi = torch.full_like(lo, vocab - 1)
    for _ in range(vocab.bit_length()):  # binary search: the first token whose cdf reaches u
        mid = (lo + hi) // 2
        right = cdf[index, mid] < u
        lo, hi = torch.where(right, mid + 1, lo), torch.where(right, hi, mid)
    first = (torch.arange(n, device=rows.device) % k == 0)[:, None]  # candidate 0 of each window
    pred = torch.where(first, flat.argmax(-1)[rows], lo)  # (N, R)
    top = flat.amax(-1)  # (M, R)
    total = (flat - top[..., None]).exp().sum(-1)
    prob = torch.exp(flat.view(-1, vocab)[index, pred] - top[rows]) / total[rows]
    return pred.view(n, *logits.shape[1:-1]), prob.view(n, *logits.shape[1:-1])


def _choose_triton(logits: Tensor, rows: Tensor | None, sample: bool, k: int, temperature: float,
                   generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """`choose_tokens` by `_choose_kernel`: logits (M, ..., V) read through `rows` (N,) in place."""
    table = _as_table(logits)  # (M, R, V), unit stride along V
    m, r, vocab = table.shape
    n = m if rows is None else rows.shape[0]
    ids = torch.empty(n * r, dtype=torch.long, device=logits.device)
    probs = torch.empty(n * r, dtype=torch.float32, device=logits.device)
    out_shape = (n, *logits.shape[1:-1])
    if n * r == 0:
        return ids.view(out_shape), probs.view(out_shape)
    seed = (torch.randint(0, 2**31 - 1, (1,), device=logits.device, generator=generator, dtype=torch.int64)
            if sample else torch.zeros(1, dtype=torch.int64, device=logits.device))  # no host sync
    row_map = ids if rows is None else rows.to(torch.int64).contiguous()  # unread without rows
    inv_temp = 1.0 / max(temperature, 1e-6)
    _choose_kernel[(n * r,)](table, row_map, table.stride(0), table.stride(1), n, r, vocab, seed, inv_temp,
                             max(k, 1), ids, probs, SAMPLE=sample, HAS_ROWS=rows is not None,
                             SCALED=sample and inv_temp != 1.0, BLOCK=BLOCK)
    return ids.view(out_shape), probs.view(out_shape)


def _as_table(logits: Tensor) -> Tensor:
    """logits (M, ..., V) as an (M, R, V) view the kernel can stride through (R: the middle dims'
    product), e.g. a padded head's [..., :V] slice; one contiguous copy only where no such view exists."""
    m, vocab = logits.shape[0], logits.shape[-1]
    r = math.prod(logits.shape[1:-1])
    if logits.stride(-1) == 1:
        try:
            return logits.view(m, r, vocab)
        except RuntimeError:  # middle dims that do not merge into one stride
            pass
    return logits.contiguous().view(m, r, vocab)


if triton is not None:
    @triton.jit
    def _choose_kernel(logits_ptr, rows_ptr, stride_m, stride_r, n_rows, n_pos, vocab, seed_ptr, inv_temp, k,
                       ids_ptr, probs_ptr, SAMPLE: tl.constexpr, HAS_ROWS: tl.constexpr, SCALED: tl.constexpr,
                       BLOCK: tl.constexpr):
        """One program per output (row n, position r), position-major so that the k candidates sharing
        a logits row read it together (L2 hits). Read 1: online softmax (max m, sum s of exp(x - m);
        SCALED: also sum st of exp(x inv_temp - m inv_temp)) and argmax. Read 2 (samples only): the
        first token whose running sum of exp(x inv_temp - m inv_temp) exceeds u st, u one Philox
        uniform for this output; stops there."""
        pid = tl.program_id(0)
        row = pid % n_rows  # output row: candidate row % k of its window
        pos = pid // n_rows
        out = row.to(tl.int64) * n_pos + pos  # flat output index, (N, R) row-major
        src = row.to(tl.int64)  # the logits row it reads
        if HAS_ROWS:
            src = tl.load(rows_ptr + row)
        base = logits_ptr + src * stride_m + pos.to(tl.int64) * stride_r
        m = tl.full([], float("-inf"), tl.float32)
        s = tl.full([], 0.0, tl.float32)
        mt = tl.full([], float("-inf"), tl.float32)  # max and sum of x * inv_temp (SCALED)
        st = tl.full([], 0.0, tl.float32)
        arg = tl.full([], 0, tl.int32)
        for start in range(0, vocab, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(base + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
            bmax = tl.max(x, 0)
            barg = tl.argmax(x, 0)
            new_m = tl.maximum(m, bmax)
            s = s * tl.exp(m - new_m) + tl.sum(tl.exp(x - new_m), 0)
            arg = tl.where(bmax > m, start + barg, arg)
            if SCALED:  # inv_temp > 0: max(x * inv_temp) = max(x) * inv_temp, exactly
                new_mt = new_m * inv_temp
                st = st * tl.exp(mt - new_mt) + tl.sum(tl.exp(x * inv_temp - new_mt), 0)
                mt = new_mt
            m = new_m
        pick = arg
        if SAMPLE:
            if not SCALED:
                mt = m
                st = s
            greedy = (row % k) == 0  # candidate 0 of its window
            u = tl.rand(tl.load(seed_ptr).to(tl.uint32), pid)  # one uniform in [0, 1] per output
            pick = _inverse_cdf(base, vocab, inv_temp, mt, u * st, arg, greedy, BLOCK)
        px = tl.load(base + pick).to(tl.float32)
        tl.store(ids_ptr + out, pick.to(tl.int64))
        tl.store(probs_ptr + out, tl.exp(px - m) / s)

    @triton.jit
    def _inverse_cdf(base, vocab, inv_temp, mt, target, arg, greedy, BLOCK: tl.constexpr):
        """The first token whose cumulative exp(x inv_temp - mt) exceeds `target`, read block by block
        until found; `arg` where `greedy`. A token of zero mass is never taken (not even past the vocabulary):
        if fp32 rounding keeps the running sum below the target to the end, the last token of
        non-zero mass is."""
        pick = tl.where(greedy, arg, -1)
        last = arg  # mass 1: exp(0)
        acc = tl.full([], 0.0, tl.float32)
        start = tl.full([], 0, tl.int32)
        while (pick < 0) & (start < vocab):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < vocab
            x = tl.load(base + cols, mask=inside, other=float("-inf")).to(tl.float32)
            p = tl.where(inside, tl.exp(x * inv_temp - mt), 0.0)
            hit = ((acc + tl.cumsum(p, 0)) > target) & (p > 0.0)
            first = tl.min(tl.where(hit, cols, vocab), 0)
            pick = tl.where(first < vocab, first, pick)
            last = tl.maximum(last, tl.max(tl.where(p > 0.0, cols, -1), 0))
            acc += tl.sum(p, 0)
            start += BLOCK
        return tl.where(pick < 0, last, pick)
