"""Transcription result types and their writers: txt, srt, vtt, json and tsv, written atomically.

Torch-free on purpose (stdlib only): the CLI imports this module at start-up. The result types
follow faster-whisper (typed `Segment`s, not dicts); the json and tsv layouts mirror
openai-whisper's `utils.py` writers so existing tooling can read them.

Subtitle cues: a segment is a window of up to 30 s of text without word timestamps, so
`subtitle_cues` splits it into readable cues and shares the segment's time out proportionally
to character count.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "FORMATS", "Segment", "Transcript", "format_json", "format_srt", "format_tsv", "format_txt",
    "format_vtt", "output_paths", "parse_formats", "subtitle_cues", "write_atomic", "write_transcript",
]  # fmt: skip

FORMATS: tuple[str, ...] = ("txt", "srt", "vtt", "json", "tsv")

_SENTENCE_END = (".", "?", "!", "…")
_CLAUSE_END = (",", ";", ":")
_CLOSERS = "\"')]}»”’"  # stripped before looking for the punctuation a word ends with
# A punctuation cut is taken only if it keeps this share of the longest cue that would fit,
# so "Yes. And then ..." does not flash "Yes." alone for a fraction of a second.
_MIN_CUT_FRACTION = 0.3


@dataclass(frozen=True)
class Segment:
    """A span of transcribed speech (also used for the subtitle cues cut from it).

    Attributes:
        id: Position in the transcript (0-based for segments, 1-based for subtitle cues).
        start: Start time in seconds, absolute in the file.
        end: End time in seconds, absolute in the file.
        text: The transcribed text.
        confidence: Mean token confidence from the decoder, if it reports one.
    """

    id: int
    start: float
    end: float
    text: str
    confidence: float | None = None


@dataclass(frozen=True)
class Transcript:
    """The result of transcribing one file.

    Attributes:
        segments: The segments in time order (a list given here is stored as a tuple).
        duration: Seconds of audio in the file.
        language: Language code of the text.
        model: Model name or path.
        preset: Decoding preset name; None for the autoregressive baseline.
        timings: Stage timings in seconds, e.g. {"encode_s": ..., "decode_s": ...}.
    """

    segments: tuple[Segment, ...]
    duration: float
    language: str = "en"
    model: str = ""
    preset: str | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.segments))

    @property
    def text(self) -> str:
        """The segments' texts joined by single spaces, stripped (blank segments skipped)."""
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


def parse_formats(spec: str) -> tuple[str, ...]:
    """Parses a comma-separated format list such as "txt,srt" or "all".

    Case and surrounding spaces are ignored, duplicates are dropped, order is kept.

    Args:
        spec: Comma-separated format names, or "all" for every format in `FORMATS`.

    Returns:
        The validated formats.

    Raises:
        ConfigError: (a ValueError) naming the first unknown format, or if `spec` names none.
    """
    names = [name.strip().lower() for name in spec.split(",") if name.strip()]
    if not names:
        raise ConfigError(f"no output format given; choose from {', '.join(FORMATS)} or all")
    if "all" in names:
        return FORMATS
    for name in names:
        if name not in FORMATS:
            raise ConfigError(f"unknown output format {name!r}; choose from {', '.join(FORMATS)} or all")
    return tuple(dict.fromkeys(names))


def _wrap(words: list[str], width: int) -> list[str]:
    """Greedily wraps words into lines of at most `width` chars; a longer word gets its own line."""
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def _ends_with(word: str, marks: tuple[str, ...]) -> bool:
    """Whether `word` ends with one of `marks`, ignoring closing quotes and brackets."""
    return word.rstrip(_CLOSERS).endswith(marks)


def _longest_fit(
    words: list[str], offsets: list[int], i: int, max_chars: float, fits: Callable[[list[str]], bool]
) -> int:
    """The largest j > i such that words[i:j] fits a cue (at least i + 1: one word always goes).

    `max_chars` bounds the cue's share of the segment's characters (its trailing space
    included), i.e. its duration; `fits` checks the line wrapping.
    """
    j = i + 1
    while j < len(words) and offsets[j + 1] - offsets[i] <= max_chars and fits(words[i : j + 1]):
        j += 1
    return j


def _choose_cut(words: list[str], offsets: list[int], i: int, j: int) -> int:
    """Where to end the cue words[i:j]: after sentence punctuation, else a comma, else at j."""
    if j == len(words):
        return j
    shortest = offsets[i] + _MIN_CUT_FRACTION * (offsets[j] - offsets[i])
    for marks in (_SENTENCE_END, _CLAUSE_END):
        for k in range(j, i, -1):
            if offsets[k] < shortest:
                break
            if _ends_with(words[k - 1], marks):
                return k
    return j


def _segment_cues(
    segment: Segment, max_chars_per_line: int, max_lines: int, max_cue_s: float
) -> list[Segment]:
    """Splits one segment into cues (ids unset) with times shared out by character count."""
    words = segment.text.split()
    if not words:
        return []
    # offsets[k]: where word k starts in " ".join(words); offsets[-1] is the total length plus one,
    # so each cue owns the space after its last word and the segment's time is covered exactly.
    offsets = [0]
    for word in words:
        offsets.append(offsets[-1] + len(word) + 1)
    n_chars = offsets[-1]
    span = max(segment.end - segment.start, 0.0)
    max_chars = max_cue_s * n_chars / span if span > 0 else math.inf

    def fits(cue_words: list[str]) -> bool:
        return len(_wrap(cue_words, max_chars_per_line)) <= max_lines

    def boundary(k: int) -> float:
        # the segment's own ends exactly; cuts inside it on the millisecond grid of srt/vtt
        if k == 0 or k == len(words):
            return segment.start + (span if k else 0.0)
        cut = round(segment.start + span * offsets[k] / n_chars, 3)
        return min(max(cut, segment.start), segment.start + span)

    cues: list[Segment] = []
    i = 0
    while i < len(words):
        j = _choose_cut(words, offsets, i, _longest_fit(words, offsets, i, max_chars, fits))
        start = boundary(i)
        # A sparse window (one word over 20 s) would still give a long cue: cap its duration.
        end = min(boundary(j), start + max_cue_s)
        text = "\n".join(_wrap(words[i:j], max_chars_per_line))
        cues.append(Segment(0, start, end, text, segment.confidence))
        i = j
    return cues


def subtitle_cues(
    transcript: Transcript, max_chars_per_line: int = 42, max_lines: int = 2, max_cue_s: float = 7.0
) -> list[Segment]:
    """Splits the transcript's segments into subtitle cues.

    Each cue lasts at most `max_cue_s` and its text wraps, at word boundaries, into at most
    `max_lines` lines of at most `max_chars_per_line` chars (a single longer word is allowed on
    a line of its own). Cuts prefer the end of a sentence (. ? !), then a comma (, ; :), else
    the longest text that fits. Times are shared out by character count within a segment, so
    cues are in time order, do not overlap and stay inside their segment. Blank segments give
    no cue.

    Args:
        transcript: The transcript to split.
        max_chars_per_line: Line width in characters.
        max_lines: Lines per cue.
        max_cue_s: Longest cue in seconds.

    Returns:
        The cues as Segments numbered from 1, their text lines joined with "\\n", each carrying
        its segment's confidence.

    Raises:
        ConfigError: (a ValueError) if a limit is not positive.
    """
    if max_chars_per_line < 1 or max_lines < 1 or not max_cue_s > 0:
        raise ConfigError(
            f"subtitle limits must be positive, got max_chars_per_line={max_chars_per_line}, "
            f"max_lines={max_lines}, max_cue_s={max_cue_s}"
        )
    cues = [
        cue
        for segment in transcript.segments
        for cue in _segment_cues(segment, max_chars_per_line, max_lines, max_cue_s)
    ]
    return [replace(cue, id=n) for n, cue in enumerate(cues, start=1)]


def _timestamp(seconds: float, decimal_marker: str) -> str:
    """Formats seconds as HH:MM:SS<marker>mmm, milliseconds rounded, negatives clamped to zero."""
    ms = max(round(seconds * 1000), 0)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal_marker}{ms:03d}"


def _one_line(text: str) -> str:
    """Collapses all whitespace runs (tabs and newlines included) into single spaces."""
    return " ".join(text.split())


def format_txt(transcript: Transcript) -> str:
    """Plain text: each non-blank segment on its own line; "" for a transcript with no text."""
    lines = [_one_line(s.text) for s in transcript.segments if s.text.strip()]
    return "".join(line + "\n" for line in lines)


def format_srt(transcript: Transcript) -> str:
    """SubRip subtitles from `subtitle_cues` with default limits; "" for no cues."""
    return "".join(
        f"{cue.id}\n{_timestamp(cue.start, ',')} --> {_timestamp(cue.end, ',')}\n{cue.text}\n\n"
        for cue in subtitle_cues(transcript)
    )


def _vtt_escape(text: str) -> str:
    """Escapes the characters WebVTT cue text reserves (& < >; this also rules out "-->")."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def format_vtt(transcript: Transcript) -> str:
    """WebVTT subtitles from `subtitle_cues` with default limits; "WEBVTT\\n\\n" for no cues."""
    cues = "".join(
        f"{_timestamp(cue.start, '.')} --> {_timestamp(cue.end, '.')}\n{_vtt_escape(cue.text)}\n\n"
        for cue in subtitle_cues(transcript)
    )
    return "WEBVTT\n\n" + cues


def _round(value: float | None) -> float | None:
    """Rounds to 3 decimals for json; None (json null) for None, NaN and infinities."""
    return round(value, 3) if value is not None and math.isfinite(value) else None


def format_json(transcript: Transcript) -> str:
    """JSON shaped like openai-whisper's result dict, floats rounded to 3 decimals.

    Keys: text, segments (id, start, end, text, and confidence when the segment has one),
    language, model, preset, duration, timings. Every segment is kept, blank ones included.
    Non-finite floats are written as null so the output stays valid JSON.
    """
    segments: list[dict[str, Any]] = []
    for s in transcript.segments:
        item: dict[str, Any] = {"id": s.id, "start": _round(s.start), "end": _round(s.end), "text": s.text}
        if s.confidence is not None:
            item["confidence"] = _round(s.confidence)
        segments.append(item)
    result = {
        "text": transcript.text,
        "segments": segments,
        "language": transcript.language,
        "model": transcript.model,
        "preset": transcript.preset,
        "duration": _round(transcript.duration),
        "timings": {name: _round(value) for name, value in transcript.timings.items()},
    }
    return json.dumps(result, ensure_ascii=False, indent=2) + "\n"


def format_tsv(transcript: Transcript) -> str:
    """Tab-separated `start end text` rows, times in integer milliseconds (openai-whisper layout).

    Every segment gets a row, blank ones included; tabs and newlines in text become spaces.
    """
    rows = [
        f"{max(round(s.start * 1000), 0)}\t{max(round(s.end * 1000), 0)}\t{_one_line(s.text)}\n"
        for s in transcript.segments
    ]
    return "start\tend\ttext\n" + "".join(rows)


_FORMATTERS: dict[str, Callable[[Transcript], str]] = {
    "txt": format_txt,
    "srt": format_srt,
    "vtt": format_vtt,
    "json": format_json,
    "tsv": format_tsv,
}


def write_atomic(path: Path, text: str) -> None:
    """Writes UTF-8 text so that `path` holds either its old content or all of `text`.

    The text goes to a hidden temp file in the same directory (created with the usual umask
    permissions), is flushed to disk, then renamed over `path` with `os.replace`. On any failure
    the temp file is removed and `path` is untouched. Missing parent directories are created.
    Newlines are written as given (no platform translation).

    Args:
        path: The file to create or replace.
        text: Its new content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """Validates formats given as a spec string or an iterable of names; drops duplicates."""
    if isinstance(formats, str):
        return parse_formats(formats)
    names = tuple(dict.fromkeys(formats))
    for name in names:
        if name not in FORMATS:
            raise ConfigError(f"unknown output format {name!r}; choose from {', '.join(FORMATS)}")
    return names


def output_paths(stem_path: Path, formats: str | Iterable[str]) -> dict[str, Path]:
    """Maps each format to its output file: the stem path plus ".<format>".

    The suffix is appended, never substituted, so a stem like "talk.v2" keeps its dot.

    Args:
        stem_path: Output path without extension, e.g. Path("/out/a/clip").
        formats: Format names, or a spec string for `parse_formats`.

    Returns:
        E.g. {"srt": Path("/out/a/clip.srt"), ...}, in the order the formats were given.

    Raises:
        ConfigError: (a ValueError) for an unknown format.
    """
    stem_path = Path(stem_path)
    return {fmt: stem_path.with_name(f"{stem_path.name}.{fmt}") for fmt in _check_formats(formats)}


def write_transcript(transcript: Transcript, stem_path: Path, formats: str | Iterable[str]) -> list[Path]:
    """Writes the transcript in each format next to `stem_path`, each file atomically.

    Args:
        transcript: The transcript to write.
        stem_path: Output path without extension (see `output_paths`).
        formats: Format names, or a spec string for `parse_formats`.

    Returns:
        The paths written, in format order.

    Raises:
        ConfigError: (a ValueError) for an unknown format, before anything is written.
        OSError: If a file cannot be written; files written before it are kept.
    """
    paths = output_paths(stem_path, formats)
    for fmt, path in paths.items():
        write_atomic(path, _FORMATTERS[fmt](transcript))
    return list(paths.values())
