"""Transcription result types and their writers: txt, srt, vtt, json and tsv, written atomically.

Torch-free on purpose (stdlib only): the CLI imports this module at start-up. The result types
follow faster-whisper (typed `Segment`s, not dicts); the json and tsv layouts mirror
openai-whisper's `utils.py` writers so existing tooling can read them.

Subtitle cues (layout rules in cues.py): with word timestamps a cue's times are its words';
without them a segment is a window of up to 30 s of text, so `subtitle_cues` splits it into
readable cues and shares the segment's time out proportionally to character count.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .cues import DEFAULT_SUBTITLES, SubtitleOptions, karaoke, sentence_spans, text_cues, word_cues
from .errors import ConfigError

__all__ = [
    "FORMATS", "Segment", "SubtitleOptions", "Transcript", "Word", "format_json", "format_srt",
    "format_tsv", "format_txt", "format_vtt", "output_paths", "parse_formats", "parse_json", "subtitle_cues",
    "window_segments", "write_atomic", "write_transcript",
]  # fmt: skip

FORMATS: tuple[str, ...] = ("txt", "srt", "vtt", "json", "tsv")



@dataclass(frozen=True)
class Word:
    """One word with its times (openai-whisper's word timestamps).

    Attributes:
        word: The word as the decoder wrote it, with its leading space and attached punctuation.
        start: Start time in seconds, absolute in the file.
        end: End time in seconds, absolute in the file.
        probability: The decoder's mean probability of the word's tokens.
    """

    word: str
    start: float
    end: float
    probability: float


@dataclass(frozen=True)
class Segment:
    """A span of transcribed speech (also used for the subtitle cues cut from it).

    Attributes:
        id: Position in the transcript (0-based for segments, 1-based for subtitle cues).
        start: Start time in seconds, absolute in the file.
        end: End time in seconds, absolute in the file.
        text: The transcribed text.
        confidence: Mean token confidence from the decoder, if it reports one.
        words: The segment's words with their times, when word timestamps were asked for
            (a list given here is stored as a tuple).
    """

    id: int
    start: float
    end: float
    text: str
    confidence: float | None = None
    words: tuple[Word, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "words", tuple(self.words))


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
        run_key: What made it (model, options, media; see resume.py), so a later run can write
            other formats from its json instead of transcribing again; "" when unknown.
    """

    segments: tuple[Segment, ...]
    duration: float
    language: str = "en"
    model: str = ""
    preset: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    run_key: str = ""

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


def _transcript_cues(transcript: Transcript, options: SubtitleOptions) -> list[Segment]:
    """Cues (ids unset): from the words of runs of segments that have them, else from the text."""
    cues: list[Segment] = []
    run: list[Segment] = []  # consecutive segments with words: their cues may span segments
    for segment in (*transcript.segments, None):
        if segment is not None and segment.words:
            run.append(segment)
            continue
        if run:
            words = [w for s in run for w in s.words]
            confidence = run[0].confidence
            cues += [Segment(0, c.start, c.end, c.text, confidence, c.words)
                     for c in word_cues(words, options, cues[-1].end if cues else 0.0)]
            run = []
        if segment is not None:
            cues += [Segment(0, c.start, c.end, c.text, segment.confidence)
                     for c in text_cues(segment.text, segment.start, segment.end, options)]
    return cues


def subtitle_cues(
    transcript: Transcript, max_chars_per_line: int = 42, max_lines: int = 2, max_cue_s: float = 7.0,
    options: SubtitleOptions | None = None,
) -> list[Segment]:
    """Splits the transcript's segments into subtitle cues.

    Each cue lasts at most `max_cue_s` and its text wraps, at word boundaries, into at most
    `max_lines` lines of at most `max_chars_per_line` chars (a single longer word is allowed on
    a line of its own). Segments with word timestamps give cues whose times are their words'
    (see `cues.word_cues`: cut at sentence ends and pauses, never across a silence of
    `max_silence_s`). Without words, cuts prefer the end of a sentence (. ? !), then a comma
    (, ; :), else the longest text that fits, and times are shared out by character count within a
    segment. Either way cues are in time order and do not overlap. Blank segments give no cue.

    Args:
        transcript: The transcript to split.
        max_chars_per_line: Line width in characters.
        max_lines: Lines per cue.
        max_cue_s: Longest cue in seconds.
        options: All limits at once; when given, the three above are ignored.

    Returns:
        The cues as Segments numbered from 1, their text lines joined with "\\n", each carrying
        its segment's confidence.

    Raises:
        ConfigError: (a ValueError) if a limit is not positive.
    """
    if options is None:
        options = SubtitleOptions(max_chars_per_line, max_lines, max_cue_s)
    return [replace(cue, id=n) for n, cue in enumerate(_transcript_cues(transcript, options), start=1)]


def window_segments(first_id: int, start: float, end: float, text: str, confidence: float | None,
                    words: Sequence[Word] = (), max_silence_s: float = 1.0) -> list[Segment]:
    """The segments of one decoded window: the window itself without words; with words, one
    segment per sentence or phrase (cut at sentence ends and silences of `max_silence_s`), its
    times its first and last word's, its text its words'.

    Args:
        first_id: The id of the first segment.
        start, end: The window's times in seconds, absolute in the file.
        text: The window's text.
        confidence: The window's confidence, given to each of its segments.
        words: The window's words, times in seconds from the window's start.
    """
    if not words:
        return [Segment(first_id, start, end, text, confidence)]
    words = [replace(w, start=start + w.start, end=min(start + w.end, end)) for w in words]
    return [Segment(first_id + n, words[i].start, words[j - 1].end,
                    "".join(w.word for w in words[i:j]).strip(), confidence, tuple(words[i:j]))
            for n, (i, j) in enumerate(sentence_spans(words, max_silence_s))]


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


def _shown_cues(transcript: Transcript, options: SubtitleOptions,
                escape: Callable[[str], str]) -> list[tuple[float, float, str]]:
    """(start, end, escaped text) of each cue shown: `subtitle_cues`, or with options.highlight_words
    each word cue's karaoke copies (cues.karaoke)."""
    shown = []
    for cue in subtitle_cues(transcript, options=options):
        if options.highlight_words and cue.words:
            shown += [(k.start, k.end, k.text) for k in karaoke(cue.start, cue.end, escape(cue.text), cue.words)]
        else:
            shown.append((cue.start, cue.end, escape(cue.text)))
    return shown


def format_srt(transcript: Transcript, options: SubtitleOptions = DEFAULT_SUBTITLES) -> str:
    """SubRip subtitles from `subtitle_cues` (default limits unless given); "" for no cues."""
    return "".join(
        f"{n}\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n\n"
        for n, (start, end, text) in enumerate(_shown_cues(transcript, options, str), start=1)
    )


def _vtt_escape(text: str) -> str:
    """Escapes the characters WebVTT cue text reserves (& < >; this also rules out "-->")."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def format_vtt(transcript: Transcript, options: SubtitleOptions = DEFAULT_SUBTITLES) -> str:
    """WebVTT subtitles from the same cues as `format_srt`; "WEBVTT\\n\\n" for no cues."""
    cues = "".join(
        f"{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{text}\n\n"
        for start, end, text in _shown_cues(transcript, options, _vtt_escape)
    )
    return "WEBVTT\n\n" + cues


def _round(value: float | None) -> float | None:
    """Rounds to 3 decimals for json; None (json null) for None, NaN and infinities."""
    return round(value, 3) if value is not None and math.isfinite(value) else None


def format_json(transcript: Transcript) -> str:
    """JSON shaped like openai-whisper's result dict, floats rounded to 3 decimals.

    Keys: text, segments (id, start, end, text, confidence when the segment has one, and words:
    word, start, end, probability, when it has word timestamps), language, model, preset,
    duration, timings, and run_key when the transcript has one. Every segment is kept, blank
    ones included. Non-finite floats are written as null so the output stays valid JSON.
    `parse_json` reads it back.
    """
    segments: list[dict[str, Any]] = []
    for s in transcript.segments:
        item: dict[str, Any] = {"id": s.id, "start": _round(s.start), "end": _round(s.end), "text": s.text}
        if s.confidence is not None:
            item["confidence"] = _round(s.confidence)
        if s.words:
            item["words"] = [{"word": w.word, "start": _round(w.start), "end": _round(w.end),
                              "probability": _round(w.probability)} for w in s.words]
        segments.append(item)
    result = {
        "text": transcript.text,
        "segments": segments,
        "language": transcript.language,
        "model": transcript.model,
        "preset": transcript.preset,
        "duration": _round(transcript.duration),
        "timings": {name: _round(value) for name, value in transcript.timings.items()},
    } | ({"run_key": transcript.run_key} if transcript.run_key else {})
    return json.dumps(result, ensure_ascii=False, indent=2) + "\n"


def parse_json(text: str) -> Transcript:
    """The transcript `format_json` wrote (times to the millisecond, as written).

    Raises:
        ValueError: not JSON, or not in format_json's layout (also for missing keys and wrong types).
    """
    try:
        data = json.loads(text)
        segments = [Segment(s["id"], float(s["start"]), float(s["end"]), s["text"], s.get("confidence"),
                            [Word(w["word"], float(w["start"]), float(w["end"]), float(w["probability"]))
                             for w in s.get("words", ())]) for s in data["segments"]]
        return Transcript(segments, float(data["duration"]), data["language"], data["model"], data["preset"],
                          dict(data["timings"]), str(data.get("run_key", "")))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not a whisfusion transcript json ({type(e).__name__}: {e})") from None


def format_tsv(transcript: Transcript) -> str:
    """Tab-separated `start end text` rows, times in integer milliseconds (openai-whisper layout).

    Every segment gets a row, blank ones included; with word timestamps every word does instead
    (its text without the leading space). Tabs and newlines in text become spaces.
    """
    spans = [(s.start, s.end, s.text) for s in transcript.segments]
    if any(s.words for s in transcript.segments):
        spans = [(w.start, w.end, w.word) for s in transcript.segments for w in s.words]
    rows = [f"{max(round(a * 1000), 0)}\t{max(round(b * 1000), 0)}\t{_one_line(text)}\n"
            for a, b, text in spans]
    return "start\tend\ttext\n" + "".join(rows)


_FORMATTERS: dict[str, Callable[[Transcript, SubtitleOptions], str]] = {
    "srt": format_srt,
    "vtt": format_vtt,
}
_PLAIN: dict[str, Callable[[Transcript], str]] = {
    "txt": format_txt,
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


def write_transcript(transcript: Transcript, stem_path: Path, formats: str | Iterable[str],
                     subtitles: SubtitleOptions = DEFAULT_SUBTITLES) -> list[Path]:
    """Writes the transcript in each format next to `stem_path`, each file atomically.

    Args:
        transcript: The transcript to write.
        stem_path: Output path without extension (see `output_paths`).
        formats: Format names, or a spec string for `parse_formats`.
        subtitles: The srt/vtt cue layout.

    Returns:
        The paths written, in format order.

    Raises:
        ConfigError: (a ValueError) for an unknown format, before anything is written.
        OSError: If a file cannot be written; files written before it are kept.
    """
    paths = output_paths(stem_path, formats)
    for fmt, path in paths.items():
        text = _FORMATTERS[fmt](transcript, subtitles) if fmt in _FORMATTERS else _PLAIN[fmt](transcript)
        write_atomic(path, text)
    return list(paths.values())
