"""Verification passes in fixed shapes, replayed as CUDA graphs (the GPU path of `Rescorer.verify`).

An eager pass (Rescorer.read) builds its rows, left-padded caches and masks anew each
time: ~200 small kernels and a host sync per HEAD_SPAN, so on a GPU a pass costs its launches
(H200, whisper-base: 4.6 ms for one window), not its math. Here every pass has one shape per
(windows W, width T): W windows x SLOTS hypothesis rows, each reading T inputs after its cached
prefix, whose keys/values live in one preallocated cache (2 x layers, R = W x SLOTS, H, C_MAX, Dh)
at their text positions (no padding: a query sees the keys at positions up to its own). A pass
first gives each row its window's winner's cache (one gather), writes its T new keys/values at
positions cached..cached+T, and leaves per position the log p of the next input, the AR's choice
and its log p: one (3, R, T) tensor, one host sync per pass. The acceptance rule is the eager
one's (`_Draft.advance`), so the texts are the same. A row reads at most T inputs; when all pass
and the row goes on, the next pass reads on (rare: T grows with the longest unread rest, to the
widest of WIDTHS that POSITION_BUDGET allows). When the open windows fit a smaller W, they move to
that shape. The rescoring pass (`scores`, at most SLOTS candidates per window) uses the same graphs.
H200, one window: 4.0 ms eager, 0.97 ms replayed (benchmarks/bench_verify.py). Without graphs (CPU,
tests) the same pass runs eagerly.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from . import verification
from .fastpath import warm_up
from .whisper import KVCache, MultiHeadAttention, tied_head

if TYPE_CHECKING:
    from .rescoring import Rescorer

SLOTS = 2 + verification.RESYNC_TRIES  # hypotheses per window after a rejection (verification.resync)
MAX_WINDOWS = 16  # windows per fixed shape; more are verified in groups
WIDTHS = (16, 32, 64, 128)  # T: inputs a row reads per pass
POSITION_BUDGET = 8192  # R x T per pass at most (the fp32 logits: 8192 x 51,865 x 4 B = 1.7 GB)
MAX_SHAPES = 4  # window counts whose buffers and graphs are kept (least recently used evicted)


@dataclass
class _Buffers:
    """Static tensors of W windows: the graphs' inputs and outputs, read and written in place."""

    cache: Tensor  # (2 x layers, R, H, C_MAX, Dh): keys, values per block
    cross: list[KVCache]  # per block, the windows' audio keys/values (W, H, S, Dh)
    inputs: Tensor  # (3, R, T_MAX) long: tokens, next inputs (targets), 1 where end-of-text is barred
    rows: Tensor  # (2, R) long: cached length, the slot whose cache the row takes first
    stats: Tensor  # (3, R, T_MAX) float: log p of the target, the AR's choice, its log p
    graphs: dict[int, torch.cuda.CUDAGraph]  # T -> graph


class FixedVerifier:
    """Verifies drafts like `rescorer.verify` (same texts), in fixed-shape passes; `graphs` captures them."""

    def __init__(self, rescorer: Rescorer, graphs: bool):
        self.rescorer, self.use_graphs = rescorer, graphs
        self.buffers: OrderedDict[tuple[int, ...], _Buffers] = OrderedDict()

    def verify(self, cross_kv: list[KVCache], drafts: list[list[int]], ratio: float = 1.0,
               margins: list[list[float]] | None = None, limits: list[int] | None = None
               ) -> tuple[list[list[int]], int]:
        """As Rescorer.verify: the accepted texts and the passes made (summed over groups of windows)."""
        texts, passes = [], 0
        for kv, group in _groups(cross_kv, verification.Draft.each(drafts, margins, limits)):
            t, n = self._verify(kv, group, verification.log_of(ratio))
            texts += t
            passes += n
        return texts, passes

    @torch.inference_mode()
    def scores(self, cross_kv: list[KVCache], candidates: list[list[list[int]]]) -> list[list[float]] | None:
        """As Rescorer.scores (log p_AR(candidate + end-of-text) per window's candidates), in one
        fixed-shape pass per group of windows; None where a window has more than SLOTS candidates or one is
        longer than a pass reads (the caller reads them eagerly)."""
        p, eot = len(self.rescorer.prompt), self.rescorer.eot
        if any(len(c) > SLOTS for c in candidates) or any(not c for c in candidates):
            return None
        out: list[list[float]] = []
        for kv, group in _groups(cross_kv, candidates):
            w_cap = _bucket(len(group))
            need = p + max(len(x) for c in group for x in c)
            if need > _t_max(w_cap):
                return None
            b = self._move(kv, list(range(len(group))), None, [])
            fulls = {w * SLOTS + slot: self.rescorer.prompt + c + [eot] for w, cands in enumerate(group)
                     for slot, c in enumerate(cands)}
            t = next(x for x in WIDTHS if x >= need)
            rows = torch.tensor([[0] * (w_cap * SLOTS), list(range(w_cap * SLOTS))])
            lp = self._run(b, self._inputs(w_cap, t, fulls, set(fulls)), rows, t)[0].tolist()
            out += [[sum(lp[w * SLOTS + slot][p - 1: p + len(c)]) for slot, c in enumerate(cands)]
                    for w, cands in enumerate(group)]
        return out

    @torch.inference_mode()
    def _verify(self, cross_kv: list[KVCache], states: list[verification.Draft], log_ratio: float) -> tuple[list[list[int]], int]:
        """Passes until every window is final; `live` maps the buffers' windows to the states'. When the open
        windows fit a smaller power of two, they move to that shape's buffers (their winners' caches and audio
        keys copied once): a batch's last long windows no longer pay for the finished ones' rows."""
        live = [w for w, s in enumerate(states) if s.result is None]
        if not live:
            return [[] for _ in states], 0
        b, winners, passes = self._move(cross_kv, live, None, []), [0] * len(live), 0
        while True:
            w_cap = _bucket(len(live))
            tries = {i: [self._row(states[w], h, w) for h in states[w].starts] for i, w in enumerate(live)
                     if states[w].result is None}
            need = max(len(full) - 1 for rows in tries.values() for _, full in rows)
            t = next(x for x in WIDTHS if x >= min(_t_max(w_cap), need))
            fulls = {i * SLOTS + slot: rows[min(slot, len(rows) - 1)][1] for i, rows in tries.items()
                     for slot in range(SLOTS)}
            fresh = {r for r in fulls if states[live[r // SLOTS]].cached == 0}
            cached, src = [0] * (w_cap * SLOTS), list(range(w_cap * SLOTS))
            for r in fulls:
                cached[r], src[r] = states[live[r // SLOTS]].cached, r // SLOTS * SLOTS + winners[r // SLOTS]
            stats = self._run(b, self._inputs(w_cap, t, fulls, fresh), torch.tensor([cached, src]), t).tolist()
            passes += 1
            for i, rows in tries.items():
                winners[i] = self._advance(states[live[i]], rows, [x[i * SLOTS: (i + 1) * SLOTS] for x in stats],
                                           t, log_ratio)
            still = [i for i, w in enumerate(live) if states[w].result is None]
            if not still:
                return [s.result or [] for s in states], passes
            if _bucket(len(still)) < w_cap:
                b = self._move(cross_kv, [live[i] for i in still], b, [i * SLOTS + winners[i] for i in still])
                live, winners = [live[i] for i in still], [0] * len(still)

    def _inputs(self, w_cap: int, t: int, fulls: dict[int, list[int]], fresh: set[int]) -> Tensor:
        """(3, R, t): each row's first t inputs of `fulls` (its inputs, end-of-text last), the next input at
        each, and end-of-text barred at the prompt's last position in `fresh` rows (Rescorer._head_stats: no
        empty text); rows without inputs read end-of-text."""
        n, eot, p = w_cap * SLOTS, self.rescorer.eot, len(self.rescorer.prompt)
        tokens, targets = [[eot] * t for _ in range(n)], [[eot] * t for _ in range(n)]
        for r, full in fulls.items():
            m = min(len(full), t + 1) - 1
            tokens[r][:m], targets[r][:m] = full[:m], full[1: m + 1]
        first, none = [int(j == p - 1) for j in range(t)], [0] * t
        return torch.tensor([tokens, targets, [first if r in fresh else none for r in range(n)]])

    def _advance(self, state: verification.Draft, rows: list[tuple[verification.Row, list[int]]],
                 stats: list[list[list[float]]], t: int, log_ratio: float) -> int:
        """One window's readings (stats: 3 x its SLOTS rows x t) -> state.advance; the winner's slot."""
        p = len(self.rescorer.prompt)
        lead = p - 1 if state.cached == 0 else 0
        read = []
        for i, (row, full) in enumerate(rows):
            end = min(len(full), t + 1) - 1  # the positions this pass read of the row
            lp, best, best_lp = (x[i][lead:end] for x in stats)
            read.append((row, verification.Reading(lp, [int(x) for x in best], best_lp)))
        return state.advance(read, log_ratio, self.rescorer.eot, p)[0]

    def _move(self, cross_kv: list[KVCache], windows: list[int], old: _Buffers | None, rows: list[int]) -> _Buffers:
        """The buffers for these windows (drafts' indices), their audio keys/values loaded; with `old`, each
        window's SLOTS rows take the cache of its row `rows[i]` there (its winner)."""
        b = self._buffers(cross_kv, len(windows))
        pick = torch.tensor(windows, device=b.cache.device)
        for (k, v), (sk, sv) in zip(cross_kv, b.cross):
            sk[: len(windows)], sv[: len(windows)] = k[pick], v[pick]
        if old is not None:
            src = torch.tensor([r for r in rows for _ in range(SLOTS)], device=b.cache.device)
            b.cache[:, : len(src)] = old.cache.index_select(1, src)
        return b

    def _row(self, state: verification.Draft, h: int, w: int) -> tuple[verification.Row, list[int]]:
        """Hypothesis h's row and its inputs from the last read one on, end-of-text appended (the last target)."""
        row, prompt = state.row(w, h), self.rescorer.prompt
        head = prompt if state.cached == 0 else [row.seq[row.start - 1] if row.start else prompt[-1]]
        return row, head + row.seq[row.start:] + [self.rescorer.eot]

    def _run(self, b: _Buffers, inputs: Tensor, rows: Tensor, t: int) -> Tensor:
        """One pass of width t over the buffers' rows -> stats (3, R, t) on the host."""
        b.inputs[:, :, :t].copy_(inputs)
        b.rows.copy_(rows)
        if not self.use_graphs:
            self._pass(b, t)
        else:
            if t not in b.graphs:
                b.graphs[t] = self._capture(b, t)
            b.graphs[t].replay()
        return b.stats[:, :, :t].cpu()

    def _capture(self, b: _Buffers, t: int) -> torch.cuda.CUDAGraph:
        saved = b.cache.clone()  # the warm-up passes write the cache: the rows' past must survive them
        warm_up(lambda: self._pass(b, t), b.cache.device)
        graph = torch.cuda.CUDAGraph()
        pool = next(iter(b.graphs.values())).pool() if b.graphs else None
        with torch.cuda.graph(graph, pool=pool):
            self._pass(b, t)
        b.cache.copy_(saved)
        return graph

    def _buffers(self, cross_kv: list[KVCache], n: int) -> _Buffers:
        """The static tensors for n windows (rounded up to a power of two) of these audio states' shape."""
        w_cap = _bucket(n)
        k = cross_kv[0][0]
        key = (w_cap, *k.shape[1:], k.dtype.itemsize, k.device.index or 0)
        b = self.buffers.pop(key, None)
        if b is None:
            while len(self.buffers) >= MAX_SHAPES:
                self.buffers.popitem(last=False)
            dec, r = self.rescorer.decoder, w_cap * SLOTS
            cfg = dec.config
            c_max = min(cfg.n_text_ctx, len(self.rescorer.prompt) + verification.MAX_NEW_TOKENS + WIDTHS[-1])
            dh, dev = cfg.n_text_state // cfg.n_text_head, k.device
            b = _Buffers(k.new_zeros(2 * cfg.n_text_layer, r, cfg.n_text_head, c_max, dh),
                         [(k.new_zeros(w_cap, *k.shape[1:]), k.new_zeros(w_cap, *k.shape[1:])) for _ in dec.layers],
                         torch.zeros(3, r, WIDTHS[-1], dtype=torch.long, device=dev),
                         torch.zeros(2, r, dtype=torch.long, device=dev),
                         torch.zeros(3, r, WIDTHS[-1], device=dev), {})
        self.buffers[key] = b
        return b

    def _pass(self, b: _Buffers, t: int) -> None:
        """The pass of width t: static inputs -> b.stats[:, :, :t]; no host sync, no allocation that depends on data."""
        dec, eot = self.rescorer.decoder, self.rescorer.eot
        cfg = dec.config
        tokens, target, no_eot = b.inputs[0, :, :t], b.inputs[1, :, :t], b.inputs[2, :, :t].bool()  # (R, t)
        cached, src = b.rows[0], b.rows[1]  # (R,)
        b.cache.copy_(b.cache.index_select(1, src))  # each row starts from its window's winner's past
        r, c_max = tokens.shape[0], b.cache.shape[3]
        pos = cached[:, None] + torch.arange(t, device=tokens.device)  # (R, t)
        x = dec.embed_tokens(tokens) + dec.embed_positions.weight[pos.clamp(max=cfg.n_text_ctx - 1)]
        mask = (torch.arange(c_max, device=tokens.device) <= pos[:, :, None])[:, None]  # (R, 1, t, C): causal
        at = pos.clamp(max=c_max - 1)[:, None, :, None].expand(r, cfg.n_text_head, t, b.cache.shape[4])
        for i, layer in enumerate(dec.layers):
            keys, values = b.cache[2 * i], b.cache[2 * i + 1]  # (R, H, C, Dh)
            h = layer.self_attn_layer_norm(x)
            k_new, v_new = layer.self_attn.project_kv(h)  # (R, H, t, Dh)
            keys.scatter_(2, at, k_new)
            values.scatter_(2, at, v_new)
            x = x + layer.self_attn.attend(h, keys, values, attn_mask=mask)
            x = x + _cross(layer.encoder_attn, layer.encoder_attn_layer_norm(x), *b.cross[i])
            x = x + layer.fc2(F.gelu(layer.fc1(layer.final_layer_norm(x))))
        logits = tied_head(dec, dec.layer_norm(x), dec.embed_tokens.weight, cfg.n_vocab).float()  # (R, t, V)
        logits[..., eot + 1:] = -math.inf  # specials and timestamps are never text
        logits[..., eot] = logits[..., eot].masked_fill(no_eot, -math.inf)
        lse = logits.logsumexp(-1)
        best_logit, best = logits.max(-1)
        b.stats[0, :, :t] = logits.gather(-1, target[..., None])[..., 0] - lse
        b.stats[1, :, :t] = best.float()
        b.stats[2, :, :t] = best_logit - lse


def _cross(attn: MultiHeadAttention, x: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Cross-attention of R = W x SLOTS rows (R, t, C) to their W windows' audio keys/values (W, H, S, Dh):
    a window's rows are one query sequence, so no window's states are copied per row."""
    q = attn.heads(attn.q_proj(x))  # (R, H, t, Dh)
    r, n_head, t, dh = q.shape
    w = k.shape[0]
    q = q.view(w, SLOTS, n_head, t, dh).transpose(1, 2).reshape(w, n_head, SLOTS * t, dh)
    y = F.scaled_dot_product_attention(q, k, v)  # (W, H, SLOTS x t, Dh)
    y = y.view(w, n_head, SLOTS, t, dh).transpose(1, 2).reshape(r, n_head, t, dh)
    return attn.out_proj(y.transpose(1, 2).flatten(2))  # (R, t, C)


def _groups(cross_kv: list[KVCache], items: list) -> list[tuple[list[KVCache], list]]:
    """The windows in groups of at most MAX_WINDOWS: (their audio keys/values, their items)."""
    return [([(k[a: a + MAX_WINDOWS], v[a: a + MAX_WINDOWS]) for k, v in cross_kv], items[a: a + MAX_WINDOWS])
            for a in range(0, len(items), MAX_WINDOWS)]


def _bucket(n: int) -> int:
    """Windows rounded up to a power of two: the shapes captured."""
    return 1 << max(0, n - 1).bit_length()


def _t_max(windows: int) -> int:
    """The widest pass for this many windows within POSITION_BUDGET (at least the narrowest width)."""
    fits = [t for t in WIDTHS if windows * SLOTS * t <= POSITION_BUDGET]
    return fits[-1] if fits else WIDTHS[0]
