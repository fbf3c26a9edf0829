"""The token each canvas position takes and its probability, from the decoder's logits, in one read.

Every PDD pass ends here: per position, the argmax (or, on the first pass, a sample)
and that token's probability under the softmax. With a 51,865-token vocabulary the logits are
the biggest tensor of a pass (15 candidates x 208 positions: 320 MB of bf16), and the plain torch
version reads them five to eight times (max, argmax, subtract, exp, sum; noise, log, log, add on the
first pass). On CUDA one Triton kernel does it in a single pass with an online softmax (running
max and rescaled sum, Milakov & Gimelshein 2018) and Philox noise drawn in registers; elsewhere,
or without Triton, the torch version runs. Both draw from the same distribution, not the same
numbers.
"""

from __future__ import annotations

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
    rows (N,): output row n reads logits[rows[n]] (equal canvas rows share their logits); the argmax
    is then taken once per logits row, a sample still once per output row.
    """
    if rows is not None and not sample:
        ids, probs = choose_tokens(logits)  # once per logits row
        return ids[rows], probs[rows]
    if logits.is_cuda and triton is not None:  # Gumbel-max in the kernel, one row each
        return _choose_triton(logits if rows is None else logits[rows], sample, k, temperature, generator)
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


def _choose_triton(logits: Tensor, sample: bool, k: int, temperature: float,
                   generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    shape, vocab = logits.shape[:-1], logits.shape[-1]
    table = logits.reshape(-1, vocab) if logits.stride(-1) == 1 and _rows_uniform(logits) else None
    if table is None:  # a layout the kernel cannot stride through: one contiguous copy
        table = logits.contiguous().view(-1, vocab)
    n = table.shape[0]
    ids = torch.empty(n, dtype=torch.long, device=logits.device)
    probs = torch.empty(n, dtype=torch.float32, device=logits.device)
    seed = (torch.randint(0, 2**31 - 1, (1,), device=logits.device, generator=generator, dtype=torch.int64)
            if sample else torch.zeros(1, dtype=torch.int64, device=logits.device))  # no host sync
    per_candidate = n // max(shape[0], 1) if len(shape) else 1  # rows of one candidate (its positions)
    _choose_kernel[(n,)](table, table.stride(0), vocab, seed, 1.0 / max(temperature, 1e-6), max(k, 1),
                         per_candidate, ids, probs, SAMPLE=sample, BLOCK=BLOCK)
    return ids.view(shape), probs.view(shape)


def _rows_uniform(logits: Tensor) -> bool:
    """True if every leading dimension steps by whole rows: (..., V) viewable as (rows, V) by striding."""
    try:
        logits.view(-1, logits.shape[-1])
        return True
    except RuntimeError:
        return False


if triton is not None:
    @triton.jit
    def _choose_kernel(logits_ptr, row_stride, vocab, seed_ptr, inv_temp, k, per_candidate, ids_ptr, probs_ptr,
                       SAMPLE: tl.constexpr, BLOCK: tl.constexpr):
        """One program per row: online softmax (max m, sum s of exp(x - m)), argmax, Gumbel-max sample."""
        row = tl.program_id(0)
        base = logits_ptr + row.to(tl.int64) * row_stride
        seed = tl.load(seed_ptr).to(tl.uint32) + row.to(tl.uint32)
        greedy = ((row // per_candidate) % k) == 0  # candidate 0 of its window
        m = tl.full([], float("-inf"), tl.float32)
        s = tl.full([], 0.0, tl.float32)
        arg = tl.full([], 0, tl.int32)
        best_g = tl.full([], float("-inf"), tl.float32)
        best_i = tl.full([], 0, tl.int32)
        best_x = tl.full([], float("-inf"), tl.float32)
        for start in range(0, vocab, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < vocab
            x = tl.load(base + cols, mask=inside, other=float("-inf")).to(tl.float32)
            bmax = tl.max(x, 0)
            barg = tl.argmax(x, 0)
            new_m = tl.maximum(m, bmax)
            s = s * tl.exp(m - new_m) + tl.sum(tl.exp(x - new_m), 0)
            arg = tl.where(bmax > m, start + barg, arg)
            m = new_m
            if SAMPLE:
                u = tl.minimum(tl.maximum(tl.rand(seed, cols), 1e-20), 1.0 - 1e-7)
                g = tl.where(inside, x * inv_temp - tl.log(-tl.log(u)), float("-inf"))
                gmax = tl.max(g, 0)
                garg = tl.argmax(g, 0)
                gx = tl.sum(tl.where(cols == start + garg, x, 0.0), 0)
                take = gmax > best_g
                best_i = tl.where(take, start + garg, best_i)
                best_x = tl.where(take, gx, best_x)
                best_g = tl.maximum(best_g, gmax)
        if SAMPLE:
            pick = tl.where(greedy, arg, best_i)
            px = tl.where(greedy, m, best_x)
        else:
            pick = arg
            px = m
        tl.store(ids_ptr + row, pick.to(tl.int64))
        tl.store(probs_ptr + row, tl.exp(px - m) / s)
