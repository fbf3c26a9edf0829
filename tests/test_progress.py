"""Tests for whisfusion_cli.progress and the progress transcribe_files reports: audio seconds of
every file, advancing window by window, reaching the total; durations probed, or learnt late."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

from whisfusion_cli import transcribe
from whisfusion_cli.asr import WindowResult
from whisfusion_cli.audio import load_audio
from whisfusion_cli.bench import write_wav
from whisfusion_cli.progress import AudioClock, Progress, window_spans
from whisfusion_cli.segment import SAMPLE_RATE as SR
from whisfusion_cli.segment import Window, split_windows
from whisfusion_cli.transcribe import FileStarted, Job, TranscribeOptions, transcribe_files


def speech(path: Path, n_windows: int, seed: int = 0) -> Path:
    """A wav of `n_windows` chirps of 1.5 s, each followed by 2.5 s of silence: one window each."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(1.5 * SR)) / SR
    parts = []
    for i in range(n_windows):
        parts.append((0.3 * np.sin(2 * np.pi * (200 + 400 * t + 40 * i) * t)
                      + 0.05 * rng.standard_normal(len(t))).astype(np.float32))
        parts.append(np.zeros(int(2.5 * SR), np.float32))
    return write_wav(path, np.concatenate(parts))


class EchoModel:
    """An ASRModel stand-in: a window's text is its length in samples and the decoding's k."""

    engine, name = "pdd", "echo"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def options(self):
        from whisfusion_cli.config import DecodingOptions

        return DecodingOptions()

    def batch_size(self, options, max_window_s: float) -> int:
        return 16

    def decode_windows(self, windows, options=None) -> list[WindowResult]:
        self.calls.append(len(windows))
        k = (options or self.options()).k
        return [WindowResult(f"{len(w)}/{k}", 0.5, n_tokens=1) for w in windows]


def test_window_spans_run_from_the_previous_end_and_add_up_to_the_duration() -> None:
    windows = [Window(0.5, 2.0), Window(3.0, 4.0), Window(6.0, 9.0)]
    assert window_spans(windows, 10.0) == pytest.approx([2.0, 2.0, 6.0])
    assert window_spans([], 10.0) == []


def test_eta_is_the_time_left_at_the_rate_of_audio_decoded_now() -> None:
    assert Progress(0.0, 100.0, elapsed_s=5.0).eta_s is None  # nothing decoded yet: no rate
    assert Progress(20.0, 100.0, elapsed_s=10.0).eta_s == pytest.approx(40.0)  # 2 audio s per s, 80 s left
    kept = Progress(30.0, 100.0, resumed_s=10.0, elapsed_s=10.0)  # the kept 10 s are not the rate's
    assert kept.eta_s == pytest.approx(35.0)
    assert Progress(30.0, 30.0, resumed_s=30.0, elapsed_s=1.0).eta_s is None


def _done(value: float | None) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def test_the_total_takes_probed_durations_then_exact_ones_and_drops_failures() -> None:
    seen: list[Progress] = []
    clock = AudioClock({"a": _done(10.0), "b": Future(), "c": _done(None)}, seen.append)
    clock.report()
    assert seen[-1].total_s == 10.0  # b still probing, c unknown
    clock.exact("b", 5.0)
    clock.exact("c", 2.5)
    assert clock.progress().total_s == 17.5
    clock.exact("a", None)  # failed to decode
    assert clock.progress().total_s == 7.5


def _files(tmp_path: Path) -> list[Job]:
    paths = [speech(tmp_path / "a.wav", 5), speech(tmp_path / "b.wav", 3, seed=1),
             write_wav(tmp_path / "silent.wav", np.zeros(2 * SR, np.float32))]
    return [Job(p, tmp_path / "out" / p.stem) for p in paths]


def test_progress_is_audio_seconds_of_every_file_window_by_window(tmp_path) -> None:
    jobs = _files(tmp_path)
    durations = [len(load_audio(j.source)) / SR for j in jobs]
    seen: list[Progress] = []
    events = list(transcribe_files(EchoModel(), jobs, TranscribeOptions(batch_size=2), seen.append))  # type: ignore
    assert seen[-1].done_s == pytest.approx(sum(durations)) == seen[-1].total_s
    assert all(p.done_s <= p.total_s + 1e-9 for p in seen)
    assert all(a.done_s <= b.done_s and a.elapsed_s <= b.elapsed_s for a, b in zip(seen, seen[1:]))
    first = next(e for e in events if isinstance(e, FileStarted))
    windows = split_windows(load_audio(first.job.source))
    inside = [p.done_s for p in seen if 0 < p.done_s < durations[0] - 1e-9]  # a.wav half done, ...
    assert len(set(inside)) >= len(windows) // 2  # ... advancing batch by batch, in audio seconds
    assert seen[-1].eta_s == pytest.approx(0.0, abs=1e-6)


def test_durations_not_known_yet_grow_the_total(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(transcribe, "media_duration", lambda path: None)  # nothing probed: learnt on decoding
    jobs = _files(tmp_path)
    durations = [len(load_audio(j.source)) / SR for j in jobs]
    seen: list[Progress] = []
    totals = []
    for event in transcribe_files(EchoModel(), jobs, TranscribeOptions(batch_size=2), seen.append):  # type: ignore
        if isinstance(event, FileStarted):
            totals.append(seen[-1].total_s if seen else 0.0)  # the total before this file's duration is known
    assert totals == pytest.approx([0.0, durations[0], durations[0] + durations[1]])
    assert seen[-1].done_s == pytest.approx(sum(durations)) == seen[-1].total_s
