"""Subtitle cue layout: line wrapping, where to cut, and cues built from timed words.

Torch-free and stdlib-only (the CLI imports it at start-up through transcript.py). It knows no
result types: words come in as anything with `word`, `start` and `end` (transcript.Word), cues go
out as `Cue`s, and transcript.py turns them into numbered Segments. With word timestamps a cue's
times are its first and last word's (openai-whisper's word-level subtitles, whose line-width and
line-count options these follow); without them transcript.py shares a segment's time out by
character count using the same wrapping and cut rules.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .errors import ConfigError

SENTENCE_END = (".", "?", "!", "…")
CLAUSE_END = (",", ";", ":")
CLOSERS = "\"')]}»”’"  # stripped before looking for the punctuation a word ends with
# A punctuation cut is taken only if it keeps this share of the longest cue that would fit,
# so "Yes. And then ..." does not flash "Yes." alone for a fraction of a second.
MIN_CUT_FRACTION = 0.3


@dataclass(frozen=True)
class SubtitleOptions:
    """How srt/vtt cues are laid out.

    Attributes:
        max_line_width: characters per line (a single longer word gets a line of its own).
        max_line_count: lines per cue.
        max_cue_seconds: longest cue, in seconds.
        max_silence_s: with word timestamps, no cue spans a silence this long between two words.
        pause_s: with word timestamps, a silence this long is a preferred place to cut, and a
            sentence end followed by one always ends a cue.
        highlight_words: with word timestamps, karaoke cues: each word underlined (<u>...</u>)
            from its start to its end in a copy of its cue (openai-whisper's --highlight_words).
    """

    max_line_width: int = 42
    max_line_count: int = 2
    max_cue_seconds: float = 7.0
    max_silence_s: float = 1.0
    pause_s: float = 0.4
    highlight_words: bool = False

    def __post_init__(self) -> None:
        if self.max_line_width < 1 or self.max_line_count < 1 or not self.max_cue_seconds > 0:
            raise ConfigError(
                f"subtitle limits must be positive, got max_line_width={self.max_line_width}, "
                f"max_line_count={self.max_line_count}, max_cue_seconds={self.max_cue_seconds}"
            )
        if not self.max_silence_s > 0 or self.pause_s < 0:
            raise ConfigError("subtitle max_silence_s must be positive and pause_s >= 0")


DEFAULT_SUBTITLES = SubtitleOptions()


class TimedWord(Protocol):
    """A word with times in seconds (transcript.Word)."""

    @property
    def word(self) -> str: ...
    @property
    def start(self) -> float: ...
    @property
    def end(self) -> float: ...


@dataclass(frozen=True)
class Cue:
    """One subtitle: its times in seconds, its text (lines joined by "\\n") and, built from timed
    words, those words (one per whitespace-separated token of the text)."""

    start: float
    end: float
    text: str
    words: tuple[TimedWord, ...] = ()


def wrap(words: list[str], width: int) -> list[str]:
    """Greedily wraps words into lines of at most `width` chars; a longer word gets its own line."""
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def ends_with(word: str, marks: tuple[str, ...]) -> bool:
    """Whether `word` ends with one of `marks`, ignoring closing quotes and brackets."""
    return word.rstrip(CLOSERS).endswith(marks)


def char_offsets(words: list[str]) -> list[int]:
    """offsets[k]: where word k starts in " ".join(words); offsets[-1]: the total length plus one."""
    offsets = [0]
    for word in words:
        offsets.append(offsets[-1] + len(word) + 1)
    return offsets


def longest_fit(n_words: int, i: int, fits: Callable[[int, int], bool]) -> int:
    """The largest j > i such that fits(i, j) (at least i + 1: one word always goes)."""
    j = i + 1
    while j < n_words and fits(i, j + 1):
        j += 1
    return j


def punctuation_cut(words: list[str], offsets: list[int], i: int, j: int) -> int | None:
    """The latest cut k in (i, j] after sentence punctuation, else after a comma, keeping at least
    MIN_CUT_FRACTION of words[i:j]'s characters; None if there is none."""
    shortest = offsets[i] + MIN_CUT_FRACTION * (offsets[j] - offsets[i])
    for marks in (SENTENCE_END, CLAUSE_END):
        for k in range(j, i, -1):
            if offsets[k] < shortest:
                break
            if ends_with(words[k - 1], marks):
                return k
    return None


def text_cues(text: str, seg_start: float, seg_end: float, options: SubtitleOptions = DEFAULT_SUBTITLES
              ) -> list[Cue]:
    """Splits the text of a segment without word timestamps into cues, its time [seg_start, seg_end]
    shared out by character count: cuts prefer a sentence end, then a comma, else the longest
    text that fits."""
    words = text.split()
    if not words:
        return []
    # offsets[-1] is the total length plus one, so each cue owns the space after its last word
    # and the segment's time is covered exactly.
    offsets = char_offsets(words)
    n_chars = offsets[-1]
    span = max(seg_end - seg_start, 0.0)
    max_chars = options.max_cue_seconds * n_chars / span if span > 0 else math.inf

    def fits(i: int, j: int) -> bool:
        short = offsets[j] - offsets[i] <= max_chars
        return short and len(wrap(words[i:j], options.max_line_width)) <= options.max_line_count

    def boundary(k: int) -> float:
        # the segment's own ends exactly; cuts inside it on the millisecond grid of srt/vtt
        if k == 0 or k == len(words):
            return seg_start + (span if k else 0.0)
        cut = round(seg_start + span * offsets[k] / n_chars, 3)
        return min(max(cut, seg_start), seg_start + span)

    cues: list[Cue] = []
    i = 0
    while i < len(words):
        j = longest_fit(len(words), i, fits)
        j = j if j == len(words) else punctuation_cut(words, offsets, i, j) or j
        start = boundary(i)
        # A sparse window (one word over 20 s) would still give a long cue: cap its duration.
        end = min(boundary(j), start + options.max_cue_seconds)
        cues.append(Cue(start, end, "\n".join(wrap(words[i:j], options.max_line_width))))
        i = j
    return cues


def _word_cut(texts: list[str], offsets: list[int], gaps: list[float], i: int, j: int,
              options: SubtitleOptions) -> int:
    """Where the cue texts[i:j] (the longest that fits) ends: after a sentence end, else at the
    longest pause of at least `pause_s`, else after a comma, else at j.

    gaps[k]: the silence before word k (gaps[0] = 0)."""
    shortest = offsets[i] + MIN_CUT_FRACTION * (offsets[j] - offsets[i])
    sentence = [k for k in range(i + 1, j + 1)
                if offsets[k] >= shortest and ends_with(texts[k - 1], SENTENCE_END)]
    if sentence:
        return sentence[-1]
    pauses = [k for k in range(i + 1, j) if offsets[k] >= shortest and gaps[k] >= options.pause_s]
    if pauses:
        return max(pauses, key=lambda k: (gaps[k], k))
    return punctuation_cut(texts, offsets, i, j) or j


def _runs(texts: list[str], gaps: list[float], options: SubtitleOptions) -> list[tuple[int, int]]:
    """Spans [a, b) no cue may cross: split at silences of max_silence_s, and after a sentence end
    followed by a pause of pause_s."""
    bounds = [0]
    for k in range(1, len(texts)):
        sentence_pause = gaps[k] >= options.pause_s and ends_with(texts[k - 1], SENTENCE_END)
        if gaps[k] >= options.max_silence_s or sentence_pause:
            bounds.append(k)
    bounds.append(len(texts))
    return list(itertools.pairwise(bounds))


def word_cues(words: Sequence[TimedWord], options: SubtitleOptions = DEFAULT_SUBTITLES,
              not_before: float = 0.0) -> list[Cue]:
    """Cues built from timed words, in order and not overlapping.

    Each cue is at most `max_line_count` lines of at most `max_line_width` characters (a longer
    single word excepted) and lasts at most `max_cue_seconds`; none spans a silence of
    `max_silence_s` or more between words. Its times are its first word's start and last word's
    end (clipped to the duration limit, and to start no earlier than the cue before it ends).

    Args:
        words: the words in time order; blank ones are skipped.
        options: the layout limits.
        not_before: the end of the cue before these words, if any.
    """
    timed = [w for w in words if w.word.strip()]
    texts = [w.word.strip() for w in timed]
    gaps = [0.0] + [max(b.start - a.end, 0.0) for a, b in itertools.pairwise(timed)]
    offsets = char_offsets(texts)

    def fits(i: int, j: int) -> bool:
        short = timed[j - 1].end - timed[i].start <= options.max_cue_seconds
        return short and len(wrap(texts[i:j], options.max_line_width)) <= options.max_line_count

    cues: list[Cue] = []
    last_end = not_before
    for a, b in _runs(texts, gaps, options):
        i = a
        while i < b:
            j = longest_fit(b, i, fits)
            k = j if j == b else _word_cut(texts, offsets, gaps, i, j, options)
            start = max(timed[i].start, last_end)
            end = max(min(timed[k - 1].end, start + options.max_cue_seconds), start)
            cues.append(Cue(start, end, "\n".join(wrap(texts[i:k], options.max_line_width)), tuple(timed[i:k])))
            last_end, i = end, k
    return cues


def sentence_spans(words: Sequence[TimedWord], max_silence_s: float = 1.0) -> list[tuple[int, int]]:
    """Index spans [i, j) of `words` that make sentence- or phrase-sized segments: cut after
    sentence punctuation and at silences of `max_silence_s` or more between words."""
    bounds = [0]
    for k in range(1, len(words)):
        pause = words[k].start - words[k - 1].end
        if ends_with(words[k - 1].word.strip(), SENTENCE_END) or pause >= max_silence_s:
            bounds.append(k)
    bounds.append(len(words))
    return [(i, j) for i, j in itertools.pairwise(bounds) if j > i]


def karaoke(start: float, end: float, text: str, words: Sequence[TimedWord]) -> list[Cue]:
    """One word cue's karaoke copies (openai-whisper's `highlight_words`): for each word, its text
    with that word in <u>...</u> from the word's start to its end, the plain text in the gaps; times
    kept within [start, end] and in order. `text`: the cue's text, already escaped for its format;
    its whitespace-separated tokens are the words (else the cue is returned plain)."""
    pieces = re.split(r"(\s+)", text)  # tokens at even indices, the whitespace between at odd ones
    tokens = pieces[::2]
    if len(tokens) != len(words) or not words:
        return [Cue(start, end, text)]
    out: list[Cue] = []
    last = start
    for j, word in enumerate(words):
        a = min(max(word.start, last), end)
        b = min(max(word.end, a), end)
        if a > last:
            out.append(Cue(last, a, text))
        if b > a:
            marked = list(pieces)
            marked[2 * j] = f"<u>{tokens[j]}</u>"
            out.append(Cue(a, b, "".join(marked)))
            last = b
    if end > last:
        out.append(Cue(last, end, text))
    return out
