"""Utterance texts for synthetic speech, cut from public-domain book text (stdlib + numpy only).

Input: `books.txt.xz` (one paragraph per line, books one after another) and the book line ranges
of its SOURCES.md table (`| 1 | title | ... | 1–2040 | ...`). Output: `Utterance`s of 1–60 words,
cased and punctuated as in the book, whose estimated durations (words / WORDS_PER_S) spread roughly
uniformly over 1–28 s: consecutive sentences are packed up to a per-utterance target drawn from
U(MIN_TARGET_S, MAX_TARGET_S); a sentence longer than its target is cut at a clause boundary
(, ; : —). Packing runs on across paragraph ends within a book, as an audiobook reader does.

Written form: what the model should emit. Letters are folded to ASCII (é -> e, æ -> ae), the em
dash is kept (the TTS input turns it into a pause, see voices.speakable), digits are kept because
every engine reads them aloud as numbers ("1810" is spoken as a year or a number; the label keeps
the digits). A sentence holding a character no engine speaks reliably ([ ] $ £ & / + = # @ ° ...)
or a file name (p30.jpg) is dropped, not rewritten, so audio and label always agree. `written`
then modernises what a transcriber would not write: a parenthetical aside becomes one between em
dashes (the TTS reads both as a pause; Whisper's normaliser deletes words in parentheses, so a
spoken aside in them would count as inserted words), "to-morrow"/"to-day"/"to-night" lose the hyphen.
"""

from __future__ import annotations

import lzma
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WORDS_PER_S = 2.5  # rough speaking rate of the TTS voices, for duration estimates
MIN_TARGET_S, MAX_TARGET_S = 1.0, 28.0  # packing targets are drawn uniformly from this range (s)
MAX_WORDS = 60  # hard cap on an utterance's words (~24 s at WORDS_PER_S)
HELDOUT_FRACTION = 0.02  # of the books, reserved for held-out text
NGRAM = 8  # words in the overlap test against evaluation transcripts

_FOLD = {"æ": "ae", "Æ": "Ae", "œ": "oe", "Œ": "Oe", "ß": "ss", "′": "'", "’": "'", "‘": "'", "“": '"', "”": '"'}
_ALLOWED = re.compile(r"[A-Za-z0-9 .,;:!?\"'()\-—]*")  # what the written form may hold
_FILENAME = re.compile(r"\w\.(?:jpe?g|png|gif|html?|txt)\b|www\.|https?:", re.IGNORECASE)
_ABBREV = {"mr", "mrs", "ms", "dr", "st", "messrs", "mme", "mlle", "capt", "col", "gen", "lt", "sgt", "rev",
           "hon", "esq", "jr", "sr", "prof", "vs", "no", "vol", "ch", "viz", "co", "gov", "mt", "ft", "etc",
           "i.e", "e.g", "ibid", "cf", "fig", "pp", "ed", "op"}
# a sentence ends at . ! ? (then closing quotes/brackets), before a space and an upper-case start
_SENT_END = re.compile(r"([.!?]+[\"')]*)\s+(?=[\"'(]*[A-Z0-9])")
_CLAUSE_END = re.compile(r"(?<=[,;:])\s+|\s+(?=—)")
_ARCHAIC = re.compile(r"\b([Tt])o-(morrow|day|night)\b")
_ASIDE = re.compile(r"\(([^()]*)\)")


@dataclass(frozen=True)
class Book:
    index: int  # 0-based, in file order
    title: str
    first_line: int  # 1-based line range in books.txt, inclusive
    last_line: int


@dataclass(frozen=True)
class Utterance:
    text: str
    book: int  # Book.index
    line: int  # 1-based line of books.txt where the utterance starts

    @property
    def n_words(self) -> int:
        return len(self.text.split())

    @property
    def est_seconds(self) -> float:
        return self.n_words / WORDS_PER_S


def read_lines(path: str | Path) -> list[str]:
    """The paragraphs of a books file (.xz or plain text), one per line."""
    path = Path(path)
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read().splitlines()


def read_book_ranges(sources_md: str | Path) -> list[Book]:
    """Books and their line ranges from the SOURCES.md table (rows whose cell reads `A–B`)."""
    books = []
    for row in Path(sources_md).read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        span = next((c for c in cells if re.fullmatch(r"\d+[–-]\d+", c)), None)
        if row.startswith("|") and span and cells[0].isdigit():
            a, b = (int(x) for x in re.split(r"[–-]", span))
            books.append(Book(len(books), cells[1], a, b))
    return books


def clean(text: str) -> str | None:
    """The written form of a sentence, or None when it holds something the TTS cannot speak."""
    for a, b in _FOLD.items():
        text = text.replace(a, b)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = re.sub(r"\s+", " ", text).strip()
    if not text or not _ALLOWED.fullmatch(text) or _FILENAME.search(text) or not re.search("[A-Za-z]", text):
        return None
    return text


def written(text: str) -> str:
    """An utterance's label as a modern transcript writes it (see the module doc); applied after packing
    and selection, so the choice of utterances is the same with or without it."""
    text = _ASIDE.sub(_dashed, _ARCHAIC.sub(r"\1o\2", text))
    return re.sub(r" +", " ", re.sub(r"[()]", "", text)).strip()  # a bracket whose pair a cut took: dropped


def _dashed(m: re.Match) -> str:
    """A parenthetical aside between em dashes; none where punctuation, a dash, a quote or the text's edge
    already bounds it (a whole sentence in brackets stays a sentence)."""
    before, after, inner = m.string[: m.start()].rstrip(), m.string[m.end():].lstrip(), m[1].strip()
    lead = "— " if before and before[-1] not in ".!?\"'—" else ""
    trail = " —" if after and after[0] not in ",;:.!?\"'—" and inner[-1:] not in (".", "!", "?") else ""
    return lead + inner + trail


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of a paragraph; no split after an abbreviation (Mr.) or an initial (G. K.)."""
    out, start = [], 0
    for m in _SENT_END.finditer(paragraph):
        last_word = paragraph[start: m.start(1)].rsplit(None, 1)[-1:] or [""]
        stem = last_word[0].lstrip("\"'(").lower()
        if m.group(1).startswith(".") and (stem in _ABBREV or (len(stem) == 1 and stem.isalpha())):
            continue
        out.append(paragraph[start: m.end(1)].strip())
        start = m.end()
    out.append(paragraph[start:].strip())
    return [s for s in out if s]


def _clauses(sentence: str) -> list[str]:
    return [c for c in _CLAUSE_END.split(sentence) if c]


def _n(parts: list[str]) -> int:
    return sum(len(p.split()) for p in parts)


def book_sentences(lines: list[str], book: Book) -> Iterator[tuple[int, list[str]]]:
    """(line number, clauses) of each speakable sentence of a book, in reading order."""
    for line_no in range(book.first_line, book.last_line + 1):
        for sentence in split_sentences(lines[line_no - 1]):
            text = clean(sentence)
            if text:
                yield line_no, _clauses(text)


def pack(sentences: Iterable[tuple[int, list[str]]], book: int, rng: np.random.Generator) -> Iterator[Utterance]:
    """Packs consecutive sentences into utterances near a target length drawn per utterance.

    The target is U(MIN_TARGET_S, MAX_TARGET_S) * WORDS_PER_S words, capped at MAX_WORDS. A next
    sentence is taken while that brings the count closer to the target; a first sentence far over
    the target is cut after the clause that lands nearest it, and its rest starts the next one.
    """
    queue = list(sentences)[::-1]  # pop() from the end = reading order
    while queue:
        target = min(MAX_WORDS, max(1.0, rng.uniform(MIN_TARGET_S, MAX_TARGET_S) * WORDS_PER_S))
        taken: list[str] = []
        start_line = queue[-1][0]
        while queue:
            line_no, clauses = queue[-1]
            n, w = _n(taken), _n(clauses)
            if n + w <= target or (taken and n + w <= MAX_WORDS and n + w - target < target - n):
                taken += clauses
                queue.pop()
                continue
            if not taken:  # the first sentence overshoots: cut it at the clause nearest the target
                sums = np.cumsum([len(c.split()) for c in clauses])
                fits = sums <= MAX_WORDS
                k = int(np.argmin(np.where(fits, np.abs(sums - target), np.inf))) + 1 if fits[0] else 0
                taken = clauses[:k]  # k = 0: a single clause over the cap, dropped
                k = max(k, 1)
                if k < len(clauses):
                    queue[-1] = (line_no, clauses[k:])
                else:
                    queue.pop()
            break
        if taken:
            yield Utterance(" ".join(taken), book, start_line)


def normalise_words(text: str) -> list[str]:
    """Lower-cased words without punctuation (apostrophes dropped): the n-gram comparison form."""
    text = "".join(c for c in unicodedata.normalize("NFKD", text.lower()) if not unicodedata.combining(c))
    return re.sub(r"[^a-z0-9 ]+", " ", text.replace("'", "")).split()


def ngrams(words: list[str], n: int = NGRAM) -> set[str]:
    return {" ".join(words[i: i + n]) for i in range(len(words) - n + 1)}


def eval_ngrams(folders: Iterable[str | Path], n: int = NGRAM) -> set[str]:
    """All n-grams of the LibriSpeech-style `*.trans.txt` transcripts under the given folders."""
    grams: set[str] = set()
    for folder in folders:
        for trans in sorted(Path(folder).rglob("*.trans.txt")):
            for line in trans.read_text(encoding="utf-8").splitlines():
                grams |= ngrams(normalise_words(line.partition(" ")[2]), n)
    return grams


def overlaps(text: str, grams: set[str], n: int = NGRAM) -> bool:
    """True when the text shares an n-word run with the evaluation transcripts."""
    return bool(grams) and not grams.isdisjoint(ngrams(normalise_words(text), n))


def heldout_books(n_books: int, seed: int, fraction: float = HELDOUT_FRACTION) -> list[int]:
    """Indices of the books reserved for held-out text: a seeded choice of max(1, round(f * n))."""
    k = max(1, round(fraction * n_books))
    return sorted(int(i) for i in np.random.default_rng([seed, 0xB00C]).choice(n_books, k, replace=False))


def utterances(lines: list[str], books: list[Book], seed: int, grams: set[str] | None = None
               ) -> tuple[list[Utterance], int]:
    """All packed utterances of the given books (each book's packing seeded by (seed, book)),
    less those overlapping the evaluation n-grams; returns (utterances, number dropped)."""
    out, dropped = [], 0
    for book in books:
        rng = np.random.default_rng([seed, book.index])
        for utt in pack(book_sentences(lines, book), book.index, rng):
            if grams and overlaps(utt.text, grams):
                dropped += 1
            else:
                out.append(utt)
    return out, dropped
