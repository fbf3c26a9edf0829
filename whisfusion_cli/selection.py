"""Turning PDD's k candidate transcripts of a window into one: pick one, or let them vote.

PDD ends with k candidates; the paper keeps the one with the highest mean token confidence
(DecodingOptions.select = "confidence", done in `decoding.pdd`). The candidates are samples of what
the model believes, so two rules that use all of them do better (bundled model, `accurate`, the same
candidates scored each way; `recipes/synthetic/results/cpu_select_rules.json`):
- "consensus": the candidate whose words differ least from the others' (minimum Bayes risk under
  word edit distance);
- "vote": ROVER (Fiscus, 1997) on top of it: every candidate is aligned word by word to the consensus
  one, each of its words becomes the word most candidates put there (or nothing, if most put
  nothing), and a word more than half of them insert is inserted. Words are compared blind to case
  and punctuation; the output keeps the candidates' written form.
"""

from __future__ import annotations

import re
from collections import Counter

INSERT_SHARE = 0.4  # an inserted word needs more than this share of the candidates (chosen on val: 0.4 / 0.5 / 0.6)


def _key(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def consensus(texts: list[str] | tuple[str, ...], confidence: list[float]) -> int:
    """Index of the candidate whose words differ least, in total, from the other candidates' (minimum
    Bayes risk under word edit distance, the candidates as samples); ties go to the more confident."""
    from rapidfuzz.distance import Levenshtein  # jiwer's edit-distance engine

    texts = list(texts)
    distinct = list(dict.fromkeys(texts))  # candidates mostly converge: each pair's distance once
    words = [re.findall(r"[\w']+", t.lower()) for t in distinct]
    count = [texts.count(t) for t in distinct]
    risk = [0] * len(distinct)
    for i in range(len(distinct)):
        for j in range(i + 1, len(distinct)):
            d = Levenshtein.distance(words[i], words[j])
            risk[i] += count[j] * d
            risk[j] += count[i] * d
    by_text = dict(zip(distinct, risk))
    return min(range(len(texts)), key=lambda i: (by_text[texts[i]], -confidence[i]))


def _words(text: str) -> list[tuple[str, str]]:
    """(key, written form) per word; punctuation standing alone joins the word before it."""
    out: list[tuple[str, str]] = []
    for token in text.split():
        key = _key(token)
        if key or not out:
            out.append((key, token))
        else:
            out[-1] = (out[-1][0], f"{out[-1][1]} {token}")
    return out


def vote(texts: list[str] | tuple[str, ...], confidence: list[float], center: int | None = None) -> str:
    """The k candidates' word-level vote (ROVER) around their consensus candidate; see the module doc.
    `center`: that candidate's index, if the caller has it already."""
    from rapidfuzz.distance import Levenshtein

    texts = list(texts)
    skeleton = _words(texts[consensus(texts, confidence) if center is None else center])
    keys = [k for k, _ in skeleton]
    slots: list[Counter] = [Counter() for _ in skeleton]  # key (None: nothing) -> votes
    inserts: list[Counter] = [Counter() for _ in range(len(skeleton) + 1)]  # before skeleton word g
    written = {k: form for k, form in reversed(skeleton)}  # a word's written form: the consensus one's first
    for text, n in Counter(texts).items():
        words = _words(text)
        for key, form in words:
            written.setdefault(key, form)
        for op in Levenshtein.opcodes(keys, [k for k, _ in words]):
            if op.tag in ("equal", "replace"):
                for i, j in zip(range(op.src_start, op.src_end), range(op.dest_start, op.dest_end)):
                    slots[i][words[j][0]] += n
            elif op.tag == "delete":
                for i in range(op.src_start, op.src_end):
                    slots[i][None] += n
            else:
                for j in range(op.dest_start, op.dest_end):
                    inserts[op.src_start][words[j][0]] += n
    out: list[str] = []
    for g in range(len(skeleton) + 1):
        out += [written[k] for k, c in inserts[g].items() if c > INSERT_SHARE * len(texts)]
        if g < len(skeleton):
            best = max(slots[g].items(), key=lambda kc: (kc[1], kc[0] == keys[g]))[0]
            if best is not None:
                out.append(skeleton[g][1] if best == keys[g] else written[best])
    return " ".join(out)


def choose(texts: list[tuple[str, ...]], scores: list[list[float]], best: list[int], select: str,
           ar_scores: list[list[float]] | None = None) -> tuple[list[int], list[str]]:
    """Each window's chosen candidate and its text by `select`: "confidence" keeps `best` (PDD's most
    confident), "rescore" the AR decoder's likeliest (`ar_scores`, ties to the more confident),
    "consensus" the one closest to the others, "vote" the word-by-word vote around it.

    texts: per window its k candidate texts; scores: their mean token confidences."""
    if select == "rescore":
        best = [max(range(len(s)), key=lambda j: (a[j], s[j])) for a, s in zip(ar_scores or [], scores)]
    elif select in ("consensus", "vote"):  # the consensus is also the vote's center
        best = [consensus(t, s) for t, s in zip(texts, scores)]
    return best, [vote(t, s, b) if select == "vote" else t[b] for t, s, b in zip(texts, scores, best)]
