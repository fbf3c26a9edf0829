"""Tests for whisfusion_cli.transcribe: job discovery, long-file windows on real speech,
cross-file batching, the out-of-memory back-off and the event pipeline.

The long file is made here from the shared LibriSpeech clips, repeated to ~10 minutes with
0.5-3 s pauses of low noise between them, so the true clip and pause intervals are known.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from whisfusion_cli.asr import WindowResult
from whisfusion_cli.audio import load_audio
from whisfusion_cli.audio import write_wav
from whisfusion_cli.config import PRESETS, DecodingOptions
from whisfusion_cli.errors import AudioError, WhisfusionError
from whisfusion_cli.segment import SAMPLE_RATE, SegmentOptions, split_windows
from whisfusion_cli.transcribe import (
    FileDone,
    FileFailed,
    FileStarted,
    Job,
    Progress,
    TranscribeOptions,
    WindowsDone,
    collect_jobs,
    decode_with_backoff,
    transcribe_files,
)
from whisfusion_cli.transcript import SubtitleOptions, Word

SR = SAMPLE_RATE
LONG_S = 600.0  # the long file's length, at least
FRAME = 320  # samples: 20 ms energy frames for the checks below


def _frame_db(audio: np.ndarray) -> np.ndarray:
    """(F,) RMS level in dBFS of consecutive 20 ms frames."""
    n = len(audio) // FRAME * FRAME
    mean_sq = np.mean(np.square(audio[:n].reshape(-1, FRAME), dtype=np.float64), axis=1)
    return 10.0 * np.log10(np.maximum(mean_sq, 1e-20))


@pytest.fixture(scope="module")
def clip_audio(real_clips) -> list[np.ndarray]:
    return [load_audio(path) for path, _ in real_clips]


@pytest.fixture(scope="module")
def long_file(clip_audio, tmp_path_factory) -> tuple[Path, np.ndarray, list[tuple[float, float]],
                                                     list[tuple[float, float]]]:
    """(wav path, audio as written, clip intervals, pause intervals), intervals in seconds."""
    rng = np.random.default_rng(0)
    parts: list[np.ndarray] = []
    clips: list[tuple[float, float]] = []
    pauses: list[tuple[float, float]] = []
    n = 0
    while n < LONG_S * SR:
        for audio in clip_audio:
            gap = round(rng.uniform(0.5, 3.0) * SR)
            parts.append(rng.normal(0.0, 3e-4, gap).astype(np.float32))  # about -70 dBFS
            pauses.append((n / SR, (n + gap) / SR))
            n += gap
            parts.append(audio)
            clips.append((n / SR, (n + len(audio)) / SR))
            n += len(audio)
    path = write_wav(tmp_path_factory.mktemp("long") / "long.wav", np.concatenate(parts))
    return path, load_audio(path), clips, pauses


def test_long_real_speech_windows_cut_in_pauses_and_cover_every_clip(long_file) -> None:
    _, audio, clips, pauses = long_file
    assert len(audio) / SR >= LONG_S
    windows = split_windows(audio)
    assert len(windows) >= LONG_S / 30
    assert all(0 < w.duration <= 30.0 + 1e-6 for w in windows)
    assert all(a.end <= b.start + 1e-9 for a, b in itertools.pairwise(windows))
    speech_db = np.percentile(_frame_db(audio), 95)
    for cut in sorted({t for w in windows for t in (w.start, w.end)}):
        around = audio[max(0, round(cut * SR) - 800): round(cut * SR) + 800]  # the 100 ms around the cut
        level = 10 * np.log10(max(np.mean(np.square(around, dtype=np.float64)), 1e-20))
        in_pause = any(a <= cut <= b for a, b in pauses)
        assert in_pause or level < speech_db - 25, f"cut at {cut:.2f} s: {level - speech_db:.1f} dB re speech"
    for start, end in clips:  # each clip's speech, first to last loud frame, lies inside the windows
        db = _frame_db(audio[round(start * SR): round(end * SR)])
        loud = np.flatnonzero(db > np.percentile(db, 95) - 30)
        s, e = start + loud[0] * FRAME / SR, start + (loud[-1] + 1) * FRAME / SR
        covered = sum(max(0.0, min(e, w.end) - max(s, w.start)) for w in windows)
        assert covered >= e - s - 1e-3, f"clip at {start:.1f} s: {covered:.2f} of {e - s:.2f} s covered"
    for a, b in pauses:  # a pause longer than max_gap_s is never inside a window
        if b - a > SegmentOptions().max_gap_s + 0.2:
            assert not any(w.start < (a + b) / 2 < w.end for w in windows)


def _count_batches(model, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wraps the model's decode_windows to record each call's number of windows."""
    calls: list[int] = []
    decode = model.decode_windows
    monkeypatch.setattr(model, "decode_windows", lambda ws, opts=None: calls.append(len(ws)) or decode(ws,
                                                                                                       opts))
    return calls


def test_long_file_through_the_pipeline_keeps_windows_as_segments(long_file, tiny_model, tmp_path,
                                                                  monkeypatch) -> None:
    path, audio, _, _ = long_file
    calls = _count_batches(tiny_model, monkeypatch)
    job = Job(path, tmp_path / "long")
    events = list(transcribe_files(tiny_model, [job], TranscribeOptions(("json",), batch_size=16)))
    windows = split_windows(audio)
    assert calls == [16] * (len(windows) // 16) + ([len(windows) % 16] if len(windows) % 16 else [])
    assert isinstance(events[0], FileStarted) and events[0].duration == pytest.approx(len(audio) / SR)
    assert sum(e.seconds for e in events if isinstance(e, WindowsDone)) == pytest.approx(
        sum(w.duration for w in windows))
    assert isinstance(events[-1], FileDone) and events[-1].paths == (tmp_path / "long.json",)
    data = json.loads((tmp_path / "long.json").read_text())
    assert [(s["start"], s["end"]) for s in data["segments"]] == [
        (round(w.start, 3), round(w.end, 3)) for w in windows]
    assert [s["id"] for s in data["segments"]] == list(range(len(windows)))
    assert data["duration"] == pytest.approx(len(audio) / SR, abs=1e-3)
    assert data["preset"] == "balanced"  # the model's default preset, named


def test_collect_jobs_mirrors_folders_sorted_and_deduplicated(tmp_path: Path) -> None:
    src = tmp_path / "in"
    for name in ("b.mp3", "a.WAV", "sub/c.flac", "sub/deeper/d.mp4", "notes.txt", "sub/e.srt"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(b"x")
    out = tmp_path / "out"
    jobs = collect_jobs([src, src / "b.mp3", src / "sub" / "c.flac"], out)
    assert jobs == [Job(src / "a.WAV", out / "a"), Job(src / "b.mp3", out / "b"), Job(src / "sub/c.flac",
                    out / "sub/c"), Job(src / "sub/deeper/d.mp4", out / "sub/deeper/d")]
    assert collect_jobs([src / "b.mp3"]) == [Job(src / "b.mp3", src / "b")]  # beside the input
    with pytest.raises(AudioError, match="missing.wav: no such file or folder"):
        collect_jobs([src / "b.mp3", tmp_path / "missing.wav"])


def test_collect_jobs_gives_same_stem_files_distinct_outputs(tmp_path: Path) -> None:
    for name in ("a/clip.mp3", "a/clip.wav", "a/other.wav", "b/clip.mp3"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    jobs = collect_jobs([tmp_path / "a"], tmp_path / "out")
    assert [j.stem.name for j in jobs] == ["clip.mp3", "clip.wav", "other"]
    assert len({j.stem for j in jobs}) == 3
    with pytest.raises(WhisfusionError, match="same outputs"):  # one name from two folders into one -o
        collect_jobs([tmp_path / "a" / "clip.mp3", tmp_path / "b" / "clip.mp3"], tmp_path / "out")


def _jobs(real_clips, tmp_path: Path) -> list[Job]:
    return [Job(path, tmp_path / path.stem) for path, _ in real_clips]


def test_windows_of_several_files_share_one_batch(real_clips, clip_audio, tiny_model, tmp_path,
                                                 monkeypatch) -> None:
    assert all(len(split_windows(a)) == 1 for a in clip_audio)  # one window per clip
    calls = _count_batches(tiny_model, monkeypatch)
    events = list(transcribe_files(tiny_model, _jobs(real_clips, tmp_path), TranscribeOptions(batch_size=8)))
    assert calls == [4]
    done = [e for e in events if isinstance(e, FileDone)]
    assert [e.job.source for e in done] == [p for p, _ in real_clips]
    assert all(e.paths[0].read_text() == e.transcript.text + "\n" for e in done if e.transcript.text)
    calls.clear()
    jobs = _jobs(real_clips, tmp_path / "b")
    events = list(transcribe_files(tiny_model, jobs, TranscribeOptions(batch_size=3)))
    assert calls == [3, 1]
    assert sum(isinstance(e, FileDone) for e in events) == 4


class _EchoModel:
    """Stands in for an ASRModel: the text of a window is its length in samples."""

    engine, name = "pdd", "echo"

    def __init__(self, max_batch: int | None = None):
        self.max_batch = max_batch
        self.calls: list[int] = []

    def options(self) -> None:
        return None

    def batch_size(self, options, max_window_s: float) -> int:
        return 16

    def decode_windows(self, windows, options=None) -> list[WindowResult]:
        self.calls.append(len(windows))
        if self.max_batch is not None and len(windows) > self.max_batch:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return [WindowResult(str(len(w)), 1.0) for w in windows]


def test_backoff_halves_on_out_of_memory_and_keeps_order() -> None:
    windows = [np.zeros(n, np.float32) for n in (100, 200, 300, 400, 500, 600, 700)]
    model = _EchoModel(max_batch=2)
    results = decode_with_backoff(model, windows, None)  # type: ignore[arg-type]
    assert [r.text for r in results] == ["100", "200", "300", "400", "500", "600", "700"]
    assert model.calls == [7, 3, 1, 2, 4, 2, 2]  # 7 -> 3 + 4, 3 -> 1 + 2, 4 -> 2 + 2
    with pytest.raises(torch.cuda.OutOfMemoryError):
        decode_with_backoff(_EchoModel(max_batch=0), windows[:3], None)  # type: ignore[arg-type]


def test_pipeline_survives_out_of_memory_with_every_window_in_place(real_clips, clip_audio, tmp_path) -> None:
    model = _EchoModel(max_batch=2)
    jobs = _jobs(real_clips, tmp_path)
    events = list(transcribe_files(model, jobs, TranscribeOptions(batch_size=8)))  # type: ignore[arg-type]
    assert model.calls[0] == 4 and max(model.calls[1:]) <= 2
    done = {e.job.source: e.transcript for e in events if isinstance(e, FileDone)}
    for (path, _), audio in zip(real_clips, clip_audio):
        (window,) = split_windows(audio)
        assert done[path].text == str(len(window.slice(audio)))


def test_existing_outputs_are_skipped_unless_overwrite(real_clips, tmp_path) -> None:
    jobs = _jobs(real_clips[:2], tmp_path)
    options = TranscribeOptions(("txt", "json"))
    list(transcribe_files(_EchoModel(), jobs, options))  # type: ignore[arg-type]
    (tmp_path / f"{jobs[1].stem.name}.json").unlink()  # e.g. killed between its two outputs
    mtime = (tmp_path / f"{jobs[0].stem.name}.txt").stat().st_mtime_ns
    model = _EchoModel()
    events = list(transcribe_files(model, jobs, options))  # type: ignore[arg-type]
    assert [(type(e), e.job, e.skipped) for e in events if isinstance(e, FileDone)] == [
        (FileDone, jobs[0], True), (FileDone, jobs[1], False)]
    assert (tmp_path / f"{jobs[0].stem.name}.txt").stat().st_mtime_ns == mtime
    assert (tmp_path / f"{jobs[1].stem.name}.json").exists() and model.calls == [1]
    options = TranscribeOptions(("txt", "json"), overwrite=True)
    events = list(transcribe_files(_EchoModel(), jobs, options))  # type: ignore[arg-type]
    assert not any(isinstance(e, FileDone) and e.skipped for e in events)


def test_bad_file_fails_alone_and_silence_writes_empty_outputs(real_clips, tmp_path) -> None:
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(np.random.default_rng(0).bytes(4000))
    silent = write_wav(tmp_path / "silent.wav", np.zeros(3 * SR, np.float32))
    good = real_clips[2][0]
    jobs = [Job(bad, tmp_path / "out" / "bad"), Job(silent, tmp_path / "out" / "silent"),
            Job(good, tmp_path / "out" / "good")]
    events = list(transcribe_files(_EchoModel(), jobs, TranscribeOptions(("txt", "json"))))  # type: ignore
    (failed,) = [e for e in events if isinstance(e, FileFailed)]
    assert failed.job == jobs[0] and "bad.mp3" in failed.error and "\n" not in failed.error
    done = {e.job: e for e in events if isinstance(e, FileDone)}
    assert "no speech" in done[jobs[1]].warning and "wrote empty outputs" in done[jobs[1]].warning
    assert (tmp_path / "out" / "silent.txt").read_text() == ""
    assert json.loads((tmp_path / "out" / "silent.json").read_text())["segments"] == []
    assert done[jobs[2]].warning is None and (tmp_path / "out" / "good.txt").read_text().strip()
    assert not (tmp_path / "out" / "bad.txt").exists()
    events = list(transcribe_files(_EchoModel(), jobs[1:2], TranscribeOptions(write=False)))  # type: ignore
    assert events[-1].warning == "no speech found (silent or empty audio)"  # nothing written, none claimed


def test_json_names_the_preset_it_decoded_with(real_clips, tiny_model, tmp_path) -> None:
    job = [Job(real_clips[2][0], tmp_path / "a")]
    options = TranscribeOptions(("json",), decoding=PRESETS["fast"])
    list(transcribe_files(tiny_model, job, options))
    assert json.loads((tmp_path / "a.json").read_text())["preset"] == "fast"
    options = TranscribeOptions(("json",), overwrite=True, decoding=DecodingOptions.from_preset("fast", k=2))
    list(transcribe_files(tiny_model, job, options))
    assert json.loads((tmp_path / "a.json").read_text())["preset"] == "k=2,steps=3"


class _WordModel(_EchoModel):
    """Every window says "One two. Three" with words at fixed times from its start."""

    def decode_windows(self, windows, options=None, word_timestamps=False, vad="energy") -> list[WindowResult]:
        self.calls.append(len(windows))
        words = (Word(" One", 0.1, 0.3, 0.9), Word(" two.", 0.3, 0.6, 0.8), Word(" Three", 1.0, 1.4, 0.7))
        return [WindowResult("One two. Three", 0.8, words=words if word_timestamps else ()) for _ in windows]


def test_word_timestamps_give_sentence_segments_and_word_cues(real_clips, tmp_path) -> None:
    jobs = _jobs(real_clips[:1], tmp_path)
    options = TranscribeOptions(("json", "srt", "tsv"), word_timestamps=True,
                                subtitles=SubtitleOptions(max_line_width=10))
    (done,) = [e for e in transcribe_files(_WordModel(), jobs, options) if isinstance(e, FileDone)]  # type: ignore
    (window,) = split_windows(load_audio(real_clips[0][0]))
    segments = done.transcript.segments
    assert [s.text for s in segments] == ["One two.", "Three"] and [s.id for s in segments] == [0, 1]
    assert segments[0].start == pytest.approx(window.start + 0.1) and segments[1].end == pytest.approx(window.start + 1.4)
    data = json.loads((tmp_path / f"{jobs[0].stem.name}.json").read_text())
    assert [w["word"] for w in data["segments"][0]["words"]] == [" One", " two."]
    srt_text = (tmp_path / f"{jobs[0].stem.name}.srt").read_text()
    assert "One two." in srt_text and "Three" in srt_text  # cut at the sentence end before a pause
    assert len((tmp_path / f"{jobs[0].stem.name}.tsv").read_text().splitlines()) == 4  # header + 3 words
    plain = TranscribeOptions(("json",), overwrite=True)
    (done,) = [e for e in transcribe_files(_WordModel(), jobs, plain) if isinstance(e, FileDone)]  # type: ignore
    assert [s.text for s in done.transcript.segments] == ["One two. Three"] and not done.transcript.segments[0].words


def test_batch_size_none_is_sized_by_the_model(tmp_path: Path) -> None:
    """TranscribeOptions.batch_size None: the model says how many windows fit one batch."""
    class Sized(_EchoModel):
        def batch_size(self, options, max_window_s: float) -> int:
            return 2

    model = Sized()
    rng = np.random.default_rng(0)
    audio = np.concatenate([np.concatenate([0.3 * rng.standard_normal(SAMPLE_RATE).astype(np.float32),
                                            np.zeros(3 * SAMPLE_RATE, np.float32)]) for _ in range(5)])
    src = tmp_path / "five.wav"
    write_wav(src, audio)
    list(transcribe_files(model, [Job(src, tmp_path / "five")], TranscribeOptions(write=False)))  # type: ignore
    assert sum(model.calls) == 5 and max(model.calls) == 2
