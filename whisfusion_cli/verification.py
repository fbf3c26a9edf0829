"""Speculative verification's bookkeeping: what a teacher-forced pass read, the rows it reads, and
one window's draft as the AR decoder accepts it pass by pass (`rescoring.Rescorer.verify` and
`verify_graphs.FixedVerifier` both drive `Draft`), with the margins, resynchronisation and loop test
they share. No model here: the AR decoder's passes are `rescoring.py`'s, their CUDA graphs
`verify_graphs.py`'s.
"""

from __future__ import annotations

import difflib
import math
import zlib
from dataclasses import dataclass, field

import torch

from .whisper import KVCache

MAX_NEW_TOKENS = 224  # Whisper's sample_len: a verified text is never longer
MAX_COMPRESSION = 2.4  # Whisper's compression-ratio threshold: a verified text above it is a loop
# ("all the way all the way ..." on a child's 3 s clip: 223 inserted words), and the draft is kept
RESYNC_SPAN = 16  # after a rejection, the draft is searched this far either way for the AR decoder's choice
RESYNC_TRIES = 3  # and the rest read after that many of its nearest occurrences
EPS = 1e-6  # probabilities are clipped to [EPS, 1 - EPS] before their log-odds are taken


@dataclass(frozen=True)
class Reading:
    """What one teacher-forced pass says about one sequence, per target position read (its tokens from
    the row's start on, then end-of-text), and the keys/values of the inputs it read."""

    token_logprob: list[float]  # log p of the sequence's own token
    best: list[int]  # the AR decoder's own choice
    best_logprob: list[float]  # its log p
    kv: list[KVCache] | None = None  # per block, (H, T_new, Dh) each: the row's new inputs

    @property
    def total(self) -> float:
        return sum(self.token_logprob)


@dataclass
class Row:
    """One sequence to read: `seq` (ids, no prompt or end-of-text) of window `window`, whose inputs the
    decoder has read up to `start` tokens of it already (`past`: their keys/values per block, (H, C, Dh)
    each, with the prompt; None: nothing read, the prompt is read too)."""

    window: int
    seq: list[int]
    start: int = 0
    past: list[KVCache] | None = None
    margins: list[float] | None = None  # per position read, seq[start:] on: the log margin its token may fall
    # short of the AR's choice by (past them, end-of-text included: the pass's log ratio)


@dataclass
class Draft:
    """One window's verification: the draft, the accepted prefix, the keys/values of what it has read,
    and the hypotheses for the rest (the draft from each of `starts` on)."""

    draft: list[int]
    accepted: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=lambda: [0])
    past: list[KVCache] | None = None
    result: list[int] | None = None
    cached: int = 0  # inputs read behind the accepted prefix (the prompt's included)
    margins: list[float] | None = None  # per draft token (Rescorer.verify)
    reach: int = 0  # draft tokens before this one are behind the prefix (accepted or passed over)
    limit: int = MAX_NEW_TOKENS  # the verified text's most tokens

    @classmethod
    def of(cls, draft: list[int], margins: list[float] | None = None, limit: int = MAX_NEW_TOKENS) -> Draft:
        """A window's verification before its first pass (at most `limit` and MAX_NEW_TOKENS tokens;
        empty: final at once)."""
        limit = min(limit, MAX_NEW_TOKENS)
        return cls(draft[:limit], result=None if draft else [], margins=margins, limit=limit)

    @classmethod
    def each(cls, drafts: list[list[int]], margins: list[list[float]] | None,
             limits: list[int] | None = None) -> list[Draft]:
        """`of` for every window's draft, with its margins and limit if any (`Rescorer.verify`'s arguments)."""
        n = len(drafts)
        return [cls.of(d, m, x) for d, m, x in zip(drafts, margins or [None] * n, limits or [MAX_NEW_TOKENS] * n)]

    def row(self, w: int, h: int) -> Row:
        """Hypothesis h (the draft from h on, after the accepted prefix) as window w's row to read. Draft
        tokens read again behind `reach` (the AR decoder wrote a token the draft had further back) have no
        margin: their probability was for their first place, and a trusted replay could loop."""
        margins = None if self.margins is None else [0.0] * max(0, self.reach - h) + self.margins[max(h, self.reach):]
        return Row(w, self.accepted + self.draft[h:], len(self.accepted), self.past, margins)

    def advance(self, tries: list[tuple[Row, Reading]], log_ratio: float, eot: int, n_prompt: int) -> tuple[int, int]:
        """Keeps the hypothesis the AR decoder accepts furthest; corrects its first rejected token.

        A reading may stop short of the row's end with every token passed (a fixed-shape pass reads at most
        its width): the prefix grows by it and that hypothesis goes on. Returns the winner's index in `tries`
        and how many of its new inputs are now behind the prefix (their keys/values to keep; 0 once final),
        also added to `self.cached`."""
        start = len(self.accepted)
        lead = n_prompt - 1 if self.cached == 0 else 0  # inputs before the first predicting one
        runs = [(accepted_run(reading.token_logprob, reading.best_logprob, log_ratio, row.margins), i)
                for i, (row, reading) in enumerate(tries)]
        run, i = max(runs, key=lambda x: x[0])  # the first of equals: the plainest guess
        (row, reading), h = tries[i], self.starts[i]
        self.reach = max(self.reach, h + run)
        seq = row.seq + [eot]
        j = start + run
        if j == len(seq):  # every token passed, end-of-text included
            self.result = seq[:-1]
            return i, 0
        if j >= self.limit:
            self.result = seq[: self.limit]
            return i, 0
        if run == len(reading.token_logprob):  # all it read passed, the rest unread: go on from there
            self.accepted, self.starts = seq[:j], [h + run]
            self.cached += lead + run  # the input predicting seq[j - 1] included; seq[j - 1] is the next
            return i, lead + run
        choice = reading.best[run]
        if choice == eot:
            self.result = seq[:j]
            return i, 0
        self.accepted = seq[:j] + [choice]
        if j + 1 >= self.limit:
            self.result = self.accepted
            return i, 0
        self.starts = resync(self.draft, h + run, choice)
        self.cached += lead + run + 1  # new inputs now behind the prefix
        return i, lead + run + 1

    def keep(self, new: list[KVCache]) -> None:
        """Appends the winner's kept keys/values (per block, (H, n, Dh) views of a pass's cache) to `past`."""
        self.past = [(k.clone(), v.clone()) for k, v in new] if self.past is None else \
            [(torch.cat([pk, k], 1), torch.cat([pv, v], 1)) for (pk, pv), (k, v) in zip(self.past, new)]


def resync(draft: list[int], d: int, choice: int) -> list[int]:
    """Where the draft may go on after the AR decoder wrote `choice` in place of draft[d] (d = len(draft):
    its end): after d (a substituted token), at d (a dropped one), or after the RESYNC_TRIES places nearest
    d, within RESYNC_SPAN, where the draft has `choice` (it ran that many tokens ahead or behind)."""
    near = sorted((m for m in range(max(0, d - RESYNC_SPAN), min(len(draft), d + RESYNC_SPAN + 1))
                   if draft[m] == choice), key=lambda m: abs(m - d))[:RESYNC_TRIES]
    return list(dict.fromkeys([min(d + 1, len(draft)), d] + [m + 1 for m in near]))


def trusted_margins(draft: list[int], source: list[int], probs: list[float], ratio: float, trust: float) -> list[float]:
    """Per token of `draft`, the log margin below the AR decoder's choice that verification lets it fall
    (`Rescorer.verify`'s margins): log ratio - trust x log(q / (1 - q)), at most 0, where q is the
    diffusion decoder's probability for it (`probs` of its candidate's ids `source`, matched to the
    draft's ids; 0.5, neutral, where the re-encoded text differs)."""
    q = [0.5] * len(draft)
    for a, b, n in difflib.SequenceMatcher(None, draft, source, autojunk=False).get_matching_blocks():
        q[a: a + n] = probs[b: b + n]
    base = log_of(ratio)
    return [min(0.0, base - trust * math.log(max(x, EPS) / max(1.0 - x, EPS))) for x in q]


def compression_ratio(text: str) -> float:
    """len(text) / len(zlib(text)), as Whisper computes it: high for a text that repeats itself."""
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


def looped(verified: str, draft: str) -> bool:
    """Whether the AR decoder looped where the draft did not (Whisper's compression-ratio test): the
    verified text compresses past MAX_COMPRESSION, the draft does not."""
    return compression_ratio(verified) > MAX_COMPRESSION >= compression_ratio(draft)


def log_of(ratio: float) -> float:
    """The verification ratio r as the log-probability margin a draft token may fall short by."""
    return math.log(ratio) if ratio > 0 else -math.inf


def accepted_run(token_logprob: list[float], best_logprob: list[float], log_ratio: float,
                  margins: list[float] | None = None) -> int:
    """How many read positions pass, from the first: token log p >= best log p + its margin (`margins`
    where given, else log ratio)."""
    n, margins = 0, margins or []
    for lp, best in zip(token_logprob, best_logprob):
        if lp < best + (margins[n] if n < len(margins) else log_ratio):
            break
        n += 1
    return n
