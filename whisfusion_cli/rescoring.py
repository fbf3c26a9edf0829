"""Whisper's own autoregressive decoder reading PDD's candidates: rescoring and verified drafts.

A whisper-mdm model keeps Whisper's token embedding frozen (`stream_train.py`), so Whisper's
autoregressive text decoder can sit beside it for the price of its blocks (whisper-base: 25 M
parameters, 48 MB in fp16), the embedding shared. It was trained on 680 k hours of real speech;
PDD's decoder has heard only synthetic voices. It reads text in parallel (teacher forcing: one
causal pass scores every position of a given transcript), so it serves PDD in two ways:

- **Rescoring** (`DecodingOptions.select = "rescore"`): one pass over every window's distinct
  candidates gives log p_AR(candidate + end-of-text | audio); the most likely candidate wins.
- **Verification** (`DecodingOptions.verify = r`): speculative decoding with PDD as the drafter
  (Leviathan et al., 2023; Chen et al., 2023). One pass reads the draft; the first token whose
  probability is below r times that of the AR decoder's own choice there is replaced by that
  choice, and the draft's rest, realigned (the draft had substituted or dropped a token there) and
  resynchronised (it goes on after the nearest places where it has the AR's choice: it ran ahead or
  behind by one or more tokens), is read again in the next pass, all in one batch. When every token
  passes, the text is final. With r = 1 the result is Whisper's greedy transcript exactly (its argmax at every
  position), in (disagreements + 1) passes instead of one per token; r < 1 keeps the draft's
  token wherever the AR decoder finds it nearly as likely as its own.
- **Trusted verification** (`DecodingOptions.trust = λ`, with r < 1): a product of the two experts. The
  diffusion decoder gave each draft token a probability q; the token stays where log p_AR(token) +
  λ log q >= log p_AR(AR's choice) + λ log(1 - q) + log r, i.e. its margin below the AR's choice widens
  by λ log(q / (1 - q)) where the diffusion decoder was sure and narrows where it was not
  (`trusted_margins`). It heard the synthetic voices the AR decoder never did; the AR decoder knows
  real speech and English. Draft tokens read a second time (behind a rejection) get no margin.

Each window's keys and values of the accepted prefix are kept across passes, so a pass reads only
the draft's unverified rest (rows left-padded to one cached length, one batch for all windows).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import DecodingOptions, WhisfusionConfig, WhisperMDMConfig
from .verification import Draft, Reading, Row, accepted_run, log_of, looped, trusted_margins
from .whisper import KVCache, WhisperTextDecoder, tied_head

LOGITS_BUDGET = 1 << 28  # bytes of fp32 logits one chunk of rows may hold (256 MB)
USE_GRAPHS = True  # verification on CUDA in fixed shapes replayed as CUDA graphs (verify_graphs.py)
HEAD_SPAN = 16  # verification computes the output head this many positions at a time, only for rows
# not yet rejected: a draft's first disagreement ends what a pass can use (~3 tokens in on average),
# and the 51,865-way head was most of a pass's work


class Rescorer(nn.Module):
    """Whisper's AR text decoder over a shared, frozen token embedding.

    Args:
        decoder: the AR decoder; its own `embed_tokens` is replaced by `embedding`.
        embedding: the diffusion decoder's embedding (rows past the AR vocabulary, [MASK], unused).
        prompt: <|startoftranscript|><|en|><|transcribe|><|notimestamps|>.
        eot: end-of-text; ids from it upwards (specials, timestamps) are never chosen, except eot.
    """

    def __init__(self, decoder: WhisperTextDecoder, embedding: nn.Embedding, prompt: list[int], eot: int):
        super().__init__()
        del decoder._modules["embed_tokens"]
        object.__setattr__(decoder, "embed_tokens", embedding)  # shared, not a parameter of this module
        self.decoder, self.prompt, self.eot = decoder, list(prompt), eot
        self.fixed = None  # verify_graphs.FixedVerifier, made on the first CUDA verification

    @classmethod
    def beside(cls, cfg: WhisfusionConfig, decoder: nn.Module) -> Rescorer | None:
        """The AR decoder (initialised as nn.Module does; load weights into `.decoder`) that a model of
        `cfg` ships (config `rescorer`) over its whisper-mdm `decoder`'s embedding; None if it ships none."""
        if cfg.rescorer is None or not isinstance(cfg.decoder, WhisperMDMConfig):
            return None
        return cls(WhisperTextDecoder(cfg.rescorer), decoder.embed_tokens, list(cfg.decoder.prefix), cfg.eos_id)

    def cross_kv(self, xa: Tensor) -> list[KVCache]:
        """Per block, keys and values of B windows' encoder states (B, 1500, C): once per batch."""
        return self.decoder.cross_kv(xa)

    def _fixed(self, cross_kv: list[KVCache]):  # -> verify_graphs.FixedVerifier | None
        """The fixed-shape reader: `self.fixed` if set, made on CUDA (graphs) when USE_GRAPHS, else None."""
        if self.fixed is None and cross_kv[0][0].is_cuda and USE_GRAPHS:
            from .verify_graphs import FixedVerifier

            self.fixed = FixedVerifier(self, graphs=True)
        if self.fixed is not None and self.fixed.use_graphs and not USE_GRAPHS:
            return None  # graphs switched off (benchmarks' eager path)
        return self.fixed

    @torch.inference_mode()
    def read(self, cross_kv: list[KVCache], rows: list[Row], keep_kv: bool = False,
             log_ratio: float | None = None) -> list[Reading]:
        """One teacher-forced pass over the rows, batched in chunks that keep the logits within LOGITS_BUDGET.

        log_ratio: stop reading a row at its first rejected token (log p < best log p + log_ratio), that
        token included; the head runs HEAD_SPAN positions at a time, for the rows still open."""
        longest = len(self.prompt) + max(len(r.seq) - r.start for r in rows) + 1
        step = max(1, LOGITS_BUDGET // (longest * self.decoder.config.n_vocab * 4))
        return [x for i in range(0, len(rows), step)
                for x in self._read_rows(cross_kv, rows[i: i + step], keep_kv, log_ratio)]

    def _read_rows(self, cross_kv: list[KVCache], rows: list[Row], keep_kv: bool,
                   log_ratio: float | None) -> list[Reading]:
        """Each row's new inputs after its past (`_forward`), then the head's statistics at every position
        its reading covers, seq[start:] + end-of-text: all at once, or with `log_ratio` HEAD_SPAN positions
        at a time for the rows not yet rejected."""
        h, target, first, spans, kv = self._forward(cross_kv, rows, keep_kv)
        width = h.shape[1]
        stats: list[list[list]] = [[[], [], []] for _ in rows]  # per row: token log p, best, best log p
        step = width if log_ratio is None else HEAD_SPAN
        open_rows = list(range(len(rows)))
        for a in range(0, width, step):
            open_rows = [i for i in open_rows if spans[i][1] > a]
            if not open_rows:
                break
            block = self._head_stats(h, target, open_rows, a, min(width, a + step), first)
            for i, (lp, best, best_lp) in zip(open_rows, block):
                lo, hi = max(spans[i][0] - a, 0), min(spans[i][1] - a, len(lp))
                for x, part in zip(stats[i], (lp[lo:hi], best[lo:hi], best_lp[lo:hi])):
                    x += part
                run = len(stats[i][0]) if log_ratio is None else \
                    accepted_run(stats[i][0], stats[i][2], log_ratio, rows[i].margins)
                if run < len(stats[i][0]):  # a row's first rejection ends its reading, that token included
                    stats[i] = [x[: run + 1] for x in stats[i]]
                    spans[i] = (spans[i][0], 0)
        return [Reading(*stat, kv[i] if keep_kv else None) for i, stat in enumerate(stats)]

    def _forward(self, cross_kv: list[KVCache], rows: list[Row], keep_kv: bool) -> tuple[
            Tensor, Tensor, list[int], list[tuple[int, int]], list[list[KVCache]]]:
        """One causal pass over each row's new inputs (the prompt if nothing is read yet, its last read
        token, then seq[start:]) after its past, left-padded to one length C.

        Returns the final-norm states (n, T, C), each position's next input (n, T), the position that
        predicts each row's seq[0] (if read), each row's span of positions to read, and with `keep_kv`
        each row's keys/values of its new inputs."""
        p, eot, dev = len(self.prompt), self.eot, cross_kv[0][0].device
        inputs = [(self.prompt if r.past is None else [r.seq[r.start - 1] if r.start else self.prompt[-1]])
                  + r.seq[r.start:] for r in rows]
        lead = [p - 1 if r.past is None else 0 for r in rows]  # inputs before the first predicting one
        cached = [0 if r.past is None else r.past[0][0].shape[1] for r in rows]
        n, width, c = len(rows), max(map(len, inputs)), max(cached)
        tokens = torch.tensor([x + [eot] * (width - len(x)) for x in inputs], device=dev)  # (n, T)
        past_len, steps = torch.tensor(cached, device=dev)[:, None], torch.arange(width, device=dev)  # (n, 1), (T,)
        positions = past_len + steps  # (n, T)
        keys = torch.arange(c + width, device=dev)
        visible = (keys >= c - past_len)[:, None, :] & (keys <= c + steps[:, None])  # (n, T, C + T): own past, causal
        cache = self.decoder.new_cache(n, c + width)
        for i, j in _runs(rows):  # rows i..j-1 share one past (a window's hypotheses): one copy each, left-padded
            for (k, v), (pk, pv) in zip(cache, rows[i].past or []):
                k[i:j, :, c - cached[i]: c], v[i:j, :, c - cached[i]: c] = pk, pv
        pick = torch.tensor([r.window for r in rows], device=dev)
        ckv = [(k[pick], v[pick]) for k, v in cross_kv]
        h = self.decoder(tokens, ckv, cache, c, positions.clamp(max=self.decoder.config.n_text_ctx - 1),
                         visible[:, None], head=False)  # (n, T, C)
        target = torch.cat([tokens[:, 1:], tokens.new_full((n, 1), eot)], 1)  # (n, T): the next input
        first = [lead[i] - r.start for i, r in enumerate(rows)]
        spans = [(lead[i], lead[i] + len(r.seq) - r.start + 1) for i, r in enumerate(rows)]
        kv = [[(k[i, :, c: c + len(x)], v[i, :, c: c + len(x)]) for k, v in cache] for i, x in enumerate(inputs)] \
            if keep_kv else []
        return h, target, first, spans, kv

    def _head_stats(self, h: Tensor, target: Tensor, idx: list[int], a: int, b: int,
                    first: list[int]) -> list[tuple[list[float], list[int], list[float]]]:
        """At positions a..b of rows idx: log p of the next input, the AR's choice and its log p."""
        eot, dec = self.eot, self.decoder
        logits = tied_head(dec, h[idx, a:b], dec.embed_tokens.weight, dec.config.n_vocab).float()  # (m, b-a, V)
        logits[..., eot + 1:] = -math.inf  # specials and timestamps are never text
        for j, i in enumerate(idx):
            if a <= first[i] < b:
                logits[j, first[i] - a, eot] = -math.inf  # no empty text (Whisper's suppress_blank, as `greedy`)
        logprobs = logits.log_softmax(-1)
        token_lp = logprobs.gather(-1, target[idx, a:b, None])[..., 0].tolist()
        best_lp, best = (t.tolist() for t in logprobs.max(-1))
        return list(zip(token_lp, best, best_lp))

    def scores(self, cross_kv: list[KVCache], candidates: list[list[list[int]]]) -> list[list[float]]:
        """log p_AR(candidate + end-of-text) of every window's candidates (id lists), in one pass."""
        fixed = self._fixed(cross_kv)
        out = fixed.scores(cross_kv, candidates) if fixed is not None else None
        if out is not None:
            return out
        rows = [Row(w, c) for w, cands in enumerate(candidates) for c in cands]
        readings = self.read(cross_kv, rows) if rows else []
        out: list[list[float]] = [[] for _ in candidates]
        for r, reading in zip(rows, readings):
            out[r.window].append(reading.total)
        return out

    def verify(self, cross_kv: list[KVCache], drafts: list[list[int]], ratio: float = 1.0,
               margins: list[list[float]] | None = None, limits: list[int] | None = None
               ) -> tuple[list[list[int]], int]:
        """The drafts (one id list per window) as the AR decoder accepts them, and the passes made.

        A draft token is kept where p_AR(token) >= ratio * p_AR(AR's choice); see the module doc. `margins`
        (per window, per draft token): log p_AR(token) - log p_AR(AR's choice) may go down to this instead. Each
        pass reads only what follows the accepted prefix: its keys and values are kept per window. An
        empty draft stays empty: PDD heard no speech there, where Whisper's decoder, which never ends a
        transcript before its first token, would write something. On CUDA the passes run in fixed shapes
        as CUDA graphs (`verify_graphs.FixedVerifier`, the same texts); `self.fixed` set elsewhere uses it too.
        `limits` (per window): the most tokens its text may have (the canvas its audio allows), so a
        looping AR decoder stops there (MAX_NEW_TOKENS without).
        """
        fixed = self._fixed(cross_kv)
        if fixed is not None:
            return fixed.verify(cross_kv, drafts, ratio, margins, limits)
        log_ratio = log_of(ratio)
        states, passes = Draft.each(drafts, margins, limits), 0
        while any(s.result is None for s in states):
            rows = [s.row(w, h) for w, s in enumerate(states) if s.result is None for h in s.starts]
            readings = self.read(cross_kv, rows, keep_kv=True, log_ratio=log_ratio)
            passes += 1
            by_window: dict[int, list[tuple[Row, Reading]]] = {}
            for row, reading in zip(rows, readings):
                by_window.setdefault(row.window, []).append((row, reading))
            for w, tries in by_window.items():
                state = states[w]
                i, kept = state.advance(tries, log_ratio, self.eot, len(self.prompt))
                if kept:
                    state.keep([(k[:, :kept], v[:, :kept]) for k, v in tries[i][1].kv or []])
        return [s.result or [] for s in states], passes


    def rescored(self, cross_kv: list[KVCache], tokenizer, texts: list[tuple[str, ...]]) -> list[list[float]]:
        """log p_AR(text + end-of-text | audio) of every window's candidate texts, each distinct one read once."""
        distinct = [list(dict.fromkeys(t)) for t in texts]
        ids = [tokenizer.encode_transcripts(d) for d in distinct]
        by_text = [dict(zip(d, s)) for d, s in zip(distinct, self.scores(cross_kv, ids))]
        return [[m[x] for x in t] for m, t in zip(by_text, texts)]

    def verify_texts(self, cross_kv: list[KVCache], tokenizer, chosen: list[str], ids: list[list[int]],
                     probs: list[list[float]], options: DecodingOptions, limits: list[int] | None = None
                     ) -> tuple[list[str], list[int], int]:
        """The chosen texts verified (`verify`, ratio options.verify), trusting the draft's confident tokens
        by options.trust (`trusted_margins`, from the chosen candidate's `ids` and their `probs`); a text
        the AR decoder looped in keeps its draft (`looped`). Returns the texts, their token counts, passes."""
        drafts, margins = tokenizer.encode_transcripts(chosen), None
        if options.trust and options.verify < 1:  # at verify 1: Whisper's greedy text exactly
            margins = [trusted_margins(d, x, q, options.verify, options.trust) for d, x, q in zip(drafts, ids, probs)]
        verified, passes = self.verify(cross_kv, drafts, options.verify, margins, limits)
        verified = [d if looped(tokenizer.decode(v), c) else v for v, d, c in zip(verified, drafts, chosen)]
        return [tokenizer.decode(x) for x in verified], [len(x) for x in verified], passes

def _runs(rows: list[Row]) -> list[tuple[int, int]]:
    """(i, j): maximal runs of consecutive rows with the same past (the same object)."""
    edges = [i for i in range(1, len(rows)) if rows[i].past is not rows[i - 1].past]
    return list(zip([0] + edges, edges + [len(rows)]))


