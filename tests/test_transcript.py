"""Tests for whisfusion_cli.transcript: result types, subtitle cues, writers and atomic writes.

Golden files: tests/golden/transcript.{txt,srt,vtt,json,tsv} hold the output for `_golden()`.
After an intended format change, regenerate them with

    WHISFUSION_REGEN_GOLDEN=1 python -m pytest tests/test_transcript.py

and review the diff before committing.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import string
import sys
from pathlib import Path
from typing import Any

import pytest
import srt
import webvtt

from whisfusion_cli import transcript as tr
from whisfusion_cli.transcript import (
    FORMATS,
    Segment,
    Transcript,
    format_json,
    format_srt,
    format_tsv,
    format_txt,
    format_vtt,
    output_paths,
    parse_formats,
    subtitle_cues,
    write_atomic,
    write_transcript,
)

GOLDEN_DIR = Path(__file__).parent / "golden"
REGEN = os.environ.get("WHISFUSION_REGEN_GOLDEN") == "1"
MAX_CHARS, MAX_LINES, MAX_CUE_S = 42, 2, 7.0


def _golden() -> Transcript:
    """Long text to split, punctuation, unicode words, a gap, a blank segment, a sparse window."""
    return Transcript(
        segments=(
            Segment(
                0,
                0.0,
                14.2,
                " Good evening and welcome to the show. Tonight we talk about naïve forecasting, "
                "the weather in Zürich, and why the café on the corner never opens before noon!",
                0.91,
            ),
            Segment(1, 14.2, 16.0, " Does anyone know?", 0.87),
            # after a 5.5 s gap; a tab and VTT-reserved characters
            Segment(
                2,
                21.5,
                29.75,
                " After the break, R&D explains the\tnew model <beta> in more detail than anyone"
                " asked for, really.",
            ),
            Segment(3, 29.75, 30.5, "   "),
            Segment(4, 31.0, 52.0, " Thanks.", 0.5),  # one word over 21 s: the cue is capped at 7 s
        ),
        duration=53.25,
        language="en",
        model="whisfusion-small",
        preset="fast",
        timings={"encode_s": 0.12345, "decode_s": 0.5, "write_s": 0.0016},
    )


EMPTY = Transcript(segments=(), duration=0.0)
N_GOLDEN_CUES = 7  # 3 + 1 + 2 + 0 + 1; changes only with the cue rules


def _words(text: str) -> list[str]:
    return text.split()


def _vtt_seconds(stamp: str) -> float:
    hours, minutes, seconds = stamp.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _check_cues(cues: list[tuple[float, float, str]], t: Transcript) -> None:
    """Asserts the subtitle rules on (start, end, text) cues parsed back from a file."""
    segments = [s for s in t.segments if s.text.strip()]
    previous_end = 0.0
    for start, end, text in cues:
        assert previous_end <= start <= end, (start, end)
        assert end - start <= MAX_CUE_S + 1e-9
        assert any(s.start - 1e-9 <= start and end <= s.end + 1e-9 for s in segments), (start, end)
        lines = text.split("\n")
        assert 1 <= len(lines) <= MAX_LINES
        assert all(0 < len(line) <= MAX_CHARS for line in lines), lines
        previous_end = end
    # no text lost, added or reordered
    assert [w for _, _, text in cues for w in text.split()] == _words(t.text)


# -- golden files ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_golden(fmt: str, tmp_path: Path) -> None:
    written = write_transcript(_golden(), tmp_path / "clip", [fmt])
    assert written == [tmp_path / f"clip.{fmt}"]
    data = written[0].read_bytes()
    golden = GOLDEN_DIR / f"transcript.{fmt}"
    if REGEN:
        golden.parent.mkdir(exist_ok=True)
        golden.write_bytes(data)
    assert data == golden.read_bytes(), f"{fmt} output changed; see the module docstring to regenerate"


def test_golden_srt_parses() -> None:
    subs = list(srt.parse((GOLDEN_DIR / "transcript.srt").read_text(encoding="utf-8")))
    assert len(subs) == N_GOLDEN_CUES
    assert [s.index for s in subs] == list(range(1, N_GOLDEN_CUES + 1))
    cues = [(s.start.total_seconds(), s.end.total_seconds(), s.content) for s in subs]
    _check_cues(cues, _golden())
    assert cues[0] == (0.0, pytest.approx(3.415), "Good evening and welcome to the show.")
    assert cues[-1] == (31.0, 38.0, "Thanks.")  # sparse window capped at 7 s
    assert cues[4][0] == 21.5  # the cue after the gap starts with its segment


def test_golden_vtt_parses() -> None:
    text = (GOLDEN_DIR / "transcript.vtt").read_text(encoding="utf-8")
    captions = webvtt.from_buffer(io.StringIO(text)).captions
    assert len(captions) == N_GOLDEN_CUES
    unescaped = [c.text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") for c in captions]
    cues = [(_vtt_seconds(c.start), _vtt_seconds(c.end), u) for c, u in zip(captions, unescaped)]
    _check_cues(cues, _golden())
    assert "R&amp;D" in text and "&lt;beta&gt;" in text and "<beta>" not in text


def test_golden_cues_prefer_punctuation() -> None:
    texts = [c.text.replace("\n", " ") for c in subtitle_cues(_golden())]
    assert texts[0].endswith("show.")
    assert texts[1].endswith("Zürich,")  # no sentence end in reach: the last comma
    assert texts[2].endswith("noon!")


# -- subtitle cues -----------------------------------------------------------------------------


def test_cue_times_proportional_to_characters() -> None:
    first, second = "aaaa bbbb cccc dddd eeee ffff gggg hhhh.", "iiii jjjj kkkk llll mmmm"
    t = Transcript((Segment(0, 10.0, 16.0, f"{first} {second}"),), 16.0)
    cues = subtitle_cues(t, max_chars_per_line=42, max_lines=1)
    assert [c.text for c in cues] == [first, second]
    # the first cue owns its text and the space after it: 41 of 66 chars
    assert cues[0].start == 10.0 and cues[0].end == pytest.approx(10.0 + 6.0 * 41 / 66, abs=1e-3)
    assert cues[1].start == cues[0].end and cues[1].end == 16.0


def test_cue_cut_prefers_sentence_end_then_comma() -> None:
    text = "one two three, four five. six seven, eight nine ten eleven twelve"
    cues = subtitle_cues(Transcript((Segment(0, 0.0, 6.0, text),), 6.0), max_chars_per_line=40, max_lines=1)
    assert cues[0].text == "one two three, four five."
    assert cues[1].text.startswith("six seven,")


def test_cue_cut_skips_punctuation_that_leaves_a_tiny_cue() -> None:
    text = "Yes. and then a long stretch of words without any punctuation at all in it"
    cues = subtitle_cues(Transcript((Segment(0, 0.0, 6.0, text),), 6.0), max_chars_per_line=42, max_lines=1)
    assert cues[0].text != "Yes."
    assert len(cues[0].text) > 30


def test_cue_duration_limit_splits_short_text() -> None:
    t = Transcript((Segment(0, 0.0, 20.0, "slow speech with only a few words"),), 20.0)
    cues = subtitle_cues(t)
    assert len(cues) >= 3  # the text fits on one line, but 20 s does not fit in one cue
    assert all(c.end - c.start <= MAX_CUE_S for c in cues)
    assert cues[-1].end == 20.0


def test_long_word_gets_its_own_line() -> None:
    word = "x" * 50
    cues = subtitle_cues(Transcript((Segment(0, 0.0, 3.0, f"a {word} b"),), 3.0))
    assert [c.text for c in cues] == [f"a\n{word}", "b"]


def test_cues_numbered_and_carry_confidence() -> None:
    cues = subtitle_cues(_golden())
    assert [c.id for c in cues] == list(range(1, len(cues) + 1))
    assert [c.confidence for c in cues] == [0.91, 0.91, 0.91, 0.87, None, None, 0.5]


@pytest.mark.parametrize("seed", range(20))
def test_cue_rules_hold_on_random_text(seed: int) -> None:
    rng = random.Random(seed)
    width, n_lines, max_s = rng.choice([(42, 2, 7.0), (20, 1, 3.0), (32, 3, 5.0)])
    segments, start = [], 0.0
    for i in range(rng.randint(1, 6)):
        words = [
            "".join(rng.choices(string.ascii_lowercase + "éüß", k=rng.randint(1, 12)))
            + rng.choice(["", "", "", ",", ".", "?", "!", '."'])
            for _ in range(rng.randint(0, 80))
        ]
        if rng.random() < 0.1:
            words.append("y" * (width + 5))
        end = start + rng.uniform(0.0, 30.0)
        segments.append(Segment(i, start, end, " ".join(words)))
        start = end + rng.choice([0.0, rng.uniform(0.0, 5.0)])
    t = Transcript(tuple(segments), start)
    cues = iter(subtitle_cues(t, width, n_lines, max_s))
    previous_end = 0.0
    for seg in segments:
        words = seg.text.split()
        while words:  # the cues of this segment, in order, consume exactly its words
            cue = next(cues)
            assert previous_end <= cue.start <= cue.end <= max(seg.end, seg.start)
            assert seg.start <= cue.start and cue.end - cue.start <= max_s
            lines = cue.text.split("\n")
            assert len(lines) <= n_lines
            assert all(len(line) <= width or " " not in line for line in lines)
            cue_words = cue.text.split()
            assert words[: len(cue_words)] == cue_words
            words = words[len(cue_words) :]
            previous_end = cue.end
    assert next(cues, None) is None


@pytest.mark.parametrize(
    "kwargs", [{"max_chars_per_line": 0}, {"max_lines": 0}, {"max_cue_s": 0.0}, {"max_cue_s": float("nan")}]
)
def test_subtitle_limits_must_be_positive(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="positive"):
        subtitle_cues(_golden(), **kwargs)


# -- single formats ----------------------------------------------------------------------------


def test_transcript_text_and_tuple_segments() -> None:
    segments = [Segment(0, 0.0, 1.0, " a "), Segment(1, 1.0, 2.0, "  "), Segment(2, 2.0, 3.0, "b ")]
    t = Transcript(segments, 3.0)  # type: ignore[arg-type]  # a list is accepted and stored as a tuple
    assert isinstance(t.segments, tuple)
    assert t.text == "a b"
    with pytest.raises(AttributeError):
        t.duration = 1.0  # type: ignore[misc]


def test_json_schema_round_trip() -> None:
    t = _golden()
    data = json.loads(format_json(t))
    assert list(data) == ["text", "segments", "language", "model", "preset", "duration", "timings"]
    assert data["text"] == t.text and data["language"] == "en" and data["model"] == "whisfusion-small"
    assert data["preset"] == "fast" and data["duration"] == 53.25
    assert data["timings"] == {"encode_s": 0.123, "decode_s": 0.5, "write_s": 0.002}
    assert len(data["segments"]) == len(t.segments)
    for item, seg in zip(data["segments"], t.segments):
        optional = {"confidence"} if seg.confidence is not None else set()
        assert set(item) == {"id", "start", "end", "text"} | optional
        assert isinstance(item["id"], int) and isinstance(item["text"], str)
        assert isinstance(item["start"], float) and isinstance(item["end"], float)
        assert Segment(**item) == seg  # round-trips: floats here already have <= 3 decimals
    assert "naïve" in format_json(t)  # ensure_ascii=False


def test_parse_json_reads_back_what_format_json_wrote() -> None:
    words = (tr.Word(" Hi", 1.0, 1.25, 0.9), tr.Word(" there.", 1.25, 1.5, 0.8))
    t = Transcript((Segment(0, 1.0, 1.5, "Hi there.", 0.85, words), Segment(1, 2.0, 3.0, "", None)), 3.0,
                   model="m", preset=None, timings={"load_s": 0.25}, run_key="abc")
    assert tr.parse_json(format_json(t)) == t and json.loads(format_json(t))["run_key"] == "abc"
    assert tr.parse_json(format_json(_golden())).segments == _golden().segments
    for bad in ("not json", "[]", '{"segments": [{"id": 0}]}'):
        with pytest.raises(ValueError):
            tr.parse_json(bad)


def test_json_rounds_and_nulls_non_finite() -> None:
    t = Transcript((Segment(0, 1.23456, 2.0004, "x", float("nan")),), 2.5, preset=None)
    data = json.loads(format_json(t))
    assert data["segments"][0] == {"id": 0, "start": 1.235, "end": 2.0, "text": "x", "confidence": None}
    assert data["preset"] is None


def test_tsv_milliseconds_and_whitespace() -> None:
    t = Transcript((Segment(0, 1.2345, 2.0, "a\tb\nc"), Segment(1, -0.5, 0.1, "neg")), 2.0)
    assert format_tsv(t) == "start\tend\ttext\n1234\t2000\ta b c\n0\t100\tneg\n"
    rows = [line.split("\t") for line in format_tsv(_golden()).splitlines()]
    assert rows[0] == ["start", "end", "text"] and all(len(r) == 3 for r in rows)


def test_txt_one_segment_per_line() -> None:
    lines = format_txt(_golden()).split("\n")
    assert lines[:2] == [_golden().segments[0].text.strip(), "Does anyone know?"]
    assert lines[-1] == "" and len(lines) == 5  # 4 non-blank segments, trailing newline


def test_timestamps_hours_rounding_and_negative() -> None:
    t = Transcript((Segment(0, -0.2, 0.0004, "a"), Segment(1, 3725.4996, 3726.0, "b")), 3726.0)
    assert "00:00:00,000 --> 00:00:00,000\na\n" in format_srt(t)
    assert "01:02:05,500 --> 01:02:06,000\nb\n" in format_srt(t)
    assert "01:02:05.500 --> 01:02:06.000\nb\n" in format_vtt(t)


def test_empty_transcript_every_format() -> None:
    assert format_txt(EMPTY) == ""
    assert format_srt(EMPTY) == ""
    assert format_vtt(EMPTY) == "WEBVTT\n\n"
    assert format_tsv(EMPTY) == "start\tend\ttext\n"
    data = json.loads(format_json(EMPTY))
    assert data["text"] == "" and data["segments"] == [] and data["timings"] == {}
    assert list(srt.parse(format_srt(EMPTY))) == []
    assert webvtt.from_buffer(io.StringIO(format_vtt(EMPTY))).captions == []
    blank = Transcript((Segment(0, 0.0, 1.0, "  "),), 1.0)
    assert subtitle_cues(blank) == [] and format_srt(blank) == "" and format_txt(blank) == ""


def test_write_transcript_empty_every_format(tmp_path: Path) -> None:
    paths = write_transcript(EMPTY, tmp_path / "sub" / "clip", "all")
    assert [p.name for p in paths] == [f"clip.{fmt}" for fmt in FORMATS]
    assert paths[0].read_text() == "" and paths[2].read_text() == "WEBVTT\n\n"


# -- formats and paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("txt,srt", ("txt", "srt")),
        (" SRT , txt,srt,", ("srt", "txt")),
        ("all", FORMATS),
        ("json,all", FORMATS),
        ("tsv", ("tsv",)),
    ],
)
def test_parse_formats(spec: str, expected: tuple[str, ...]) -> None:
    assert parse_formats(spec) == expected


@pytest.mark.parametrize(
    ("spec", "bad"),
    [("txt,docx", "'docx'"), ("srt,vt", "'vt'"), ("", "no output format"), (" , ", "no output")],
)
def test_parse_formats_errors(spec: str, bad: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_formats(spec)
    message = str(info.value)
    assert bad in message and "\n" not in message
    assert "srt" in message  # lists the choices


def test_output_paths_append_suffix() -> None:
    assert output_paths(Path("/out/a/talk.v2"), ["srt", "json"]) == {
        "srt": Path("/out/a/talk.v2.srt"),
        "json": Path("/out/a/talk.v2.json"),
    }
    assert list(output_paths(Path("clip"), "all")) == list(FORMATS)
    with pytest.raises(ValueError, match="'pdf'"):
        output_paths(Path("clip"), ["txt", "pdf"])


def test_write_transcript_unknown_format_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_transcript(_golden(), tmp_path / "clip", ["txt", "mp3"])
    assert list(tmp_path.iterdir()) == []


# -- atomic writes -----------------------------------------------------------------------------


def test_write_atomic_creates_parents_and_keeps_bytes(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.txt"
    write_atomic(target, "x\ny\r\nnaïve\n")
    assert target.read_bytes() == "x\ny\r\nnaïve\n".encode()
    assert os.listdir(target.parent) == ["out.txt"]


def test_write_atomic_overwrites_existing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.srt"
    target.write_text("old content that is longer than the new one")
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        # at the moment of the swap the target still holds the old content, complete
        assert Path(dst).read_text() == "old content that is longer than the new one"
        replaced.append((Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(tr.os, "replace", spy_replace)
    write_atomic(target, "new")
    assert target.read_text() == "new"
    assert len(replaced) == 1 and replaced[0][1] == "out.srt" and replaced[0][0] != "out.srt"
    assert os.listdir(tmp_path) == ["out.srt"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_write_atomic_uses_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644


class _FailingFile:
    """Wraps a text file: writes the first half of the text, then fails like a full disk."""

    def __init__(self, inner: io.TextIOWrapper) -> None:
        self.inner = inner

    def __enter__(self) -> _FailingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.close()

    def write(self, text: str) -> int:
        self.inner.write(text[: len(text) // 2])
        self.inner.flush()
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("existing", [None, "old complete content\n"])
def test_write_atomic_failure_midway_leaves_no_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: str | None
) -> None:
    target = tmp_path / "clip.json"
    if existing is not None:
        target.write_text(existing)
    real_fdopen = os.fdopen
    monkeypatch.setattr(tr.os, "fdopen", lambda *a, **k: _FailingFile(real_fdopen(*a, **k)))
    with pytest.raises(OSError, match="No space"):
        write_atomic(target, format_json(_golden()))
    if existing is None:
        assert os.listdir(tmp_path) == []
    else:
        assert os.listdir(tmp_path) == ["clip.json"] and target.read_text() == existing


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_write_atomic_failure_late_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    target = tmp_path / "clip.txt"
    target.write_text("old")

    def boom(*args: object) -> None:
        raise KeyboardInterrupt if step == "replace" else OSError(5, "I/O error")

    monkeypatch.setattr(tr.os, step, boom)
    with pytest.raises(KeyboardInterrupt if step == "replace" else OSError):
        write_atomic(target, "new")
    assert os.listdir(tmp_path) == ["clip.txt"] and target.read_text() == "old"


# -- module hygiene ----------------------------------------------------------------------------


def test_module_imports_only_stdlib() -> None:
    source = Path(tr.__file__).read_text(encoding="utf-8")
    imported = re.findall(r"^(?:from|import) +(\w+)", source, flags=re.MULTILINE)
    assert imported and set(imported) <= set(sys.stdlib_module_names) | {"__future__"}, imported
    assert "print(" not in source
