"""Tests for whisfusion_cli.segment on synthetic speech-like audio built here with numpy.

"Utterances" are harmonic tones with a syllable-rate amplitude envelope and 20 ms ramps;
pauses are low noise. Ground-truth utterance intervals let the tests check that windows
cut only in pauses, cover all speech, respect the 30 s cap and skip long silences.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import whisfusion_cli.segment
from whisfusion_cli.errors import ConfigError
from whisfusion_cli.segment import SAMPLE_RATE, SegmentOptions, Window, speech_regions, split_windows

SR = SAMPLE_RATE
NOISE_STD = 3e-4  # about -70 dBFS background in the pauses
TOL = 0.021  # s: one 20 ms energy frame, plus float slack


def _utterance(rng: np.random.Generator, duration: float, amplitude: float = 0.3) -> np.ndarray:
    """A speech-like burst: 4 harmonics of a random f0, 3-5 Hz syllable envelope, 20 ms ramps."""
    n = round(duration * SR)
    t = np.arange(n, dtype=np.float32) / SR  # float32 halves the cost of 10 minutes of sines
    f0 = rng.uniform(100.0, 220.0)
    voice = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 5))
    syllables = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(3.0, 5.0) * t + rng.uniform(0, 2 * np.pi))
    ramp = np.ones(n, np.float32)
    n_ramp = min(round(0.02 * SR), n // 2)
    ramp[:n_ramp] = ramp[n - n_ramp :][::-1] = 0.5 - 0.5 * np.cos(np.pi * np.arange(n_ramp) / n_ramp)
    return amplitude * voice * syllables * ramp


def _compose(
    rng: np.random.Generator, parts: list[tuple[str, float]], noise_std: float = NOISE_STD
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Concatenates ("speech" | "pause", seconds) parts over background noise.

    Returns:
        The audio, shape (N,) float32, and the utterances' true (start, end) in seconds.
    """
    chunks, truth, t = [], [], 0.0
    for kind, duration in parts:
        n = round(duration * SR)
        if kind == "speech":
            chunks.append(_utterance(rng, n / SR))
            truth.append((t, t + n / SR))
        else:
            chunks.append(np.zeros(n))
        t += n / SR
    audio = np.concatenate(chunks) + noise_std * rng.standard_normal(sum(len(c) for c in chunks))
    return audio.astype(np.float32), truth


def _check_windows(windows: list[Window], audio: np.ndarray, max_window_s: float = 30.0) -> None:
    """Sorted, non-overlapping, within the file, each at most `max_window_s`."""
    duration = len(audio) / SR
    for w in windows:
        assert 0.0 <= w.start < w.end <= duration + 1e-9
        assert w.duration <= max_window_s + 1e-6
    for a, b in itertools.pairwise(windows):
        assert a.end <= b.start + 1e-9


def _covered(windows: list[Window], start: float, end: float) -> bool:
    """Whether [start, end] lies inside the union of the windows (touching windows join)."""
    reach = start
    for w in windows:
        if w.start <= reach + 1e-9 and w.end > reach:
            reach = w.end
    return reach >= end - 1e-9


def _level_db(audio: np.ndarray, t: float, half_s: float = 0.01) -> float:
    """RMS level in dBFS of the audio within `half_s` of time t."""
    lo, hi = max(0, round((t - half_s) * SR)), min(len(audio), round((t + half_s) * SR))
    return 10 * np.log10(np.mean(np.square(audio[lo:hi], dtype=np.float64)) + 1e-20)


@pytest.fixture(scope="module")
def long_file() -> tuple[np.ndarray, list[tuple[float, float]], list[tuple[float, float]]]:
    """Ten minutes of 2-12 s utterances separated by 0.3-3 s pauses, with 1 s of lead-in.

    Returns:
        (audio, utterances, pauses between utterances), times in seconds.
    """
    rng = np.random.default_rng(0)
    parts: list[tuple[str, float]] = [("pause", 1.0)]
    total = 1.0
    while total < 600.0 - 15.0:
        speech, pause = rng.uniform(2.0, 12.0), rng.uniform(0.3, 3.0)
        parts += [("speech", speech), ("pause", pause)]
        total += speech + pause
    parts.append(("pause", 600.0 - total))
    audio, truth = _compose(rng, parts)
    pauses = [(a[1], b[0]) for a, b in itertools.pairwise(truth)]
    return audio, truth, pauses


def test_silence_and_empty_give_no_windows() -> None:
    rng = np.random.default_rng(1)
    click = np.zeros(5 * SR, np.float32)
    click[2 * SR : 2 * SR + 480] = 0.5  # a 30 ms click: shorter than min_speech_s
    inputs = [
        np.zeros(0, np.float32),
        np.zeros(10 * SR, np.float32),
        (NOISE_STD * rng.standard_normal(10 * SR)).astype(np.float32),  # -70 dBFS: under the floor
        click,
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all-zero frames must not warn (log of 0, empty percentile)
        for audio in inputs:
            assert split_windows(audio) == []
            assert speech_regions(audio) == []


def test_leading_and_trailing_silence_are_skipped() -> None:
    audio, truth = _compose(np.random.default_rng(2), [("pause", 3.0), ("speech", 4.0), ("pause", 3.0)])
    pad = SegmentOptions().pad_s
    (window,) = split_windows(audio)
    assert window.start == pytest.approx(truth[0][0] - pad, abs=TOL)
    assert window.end == pytest.approx(truth[0][1] + pad, abs=TOL)
    assert speech_regions(audio) == [(window.start, window.end)]


def test_speech_regions_follow_utterances_and_merge_short_pauses() -> None:
    parts = [
        ("pause", 1.0),
        ("speech", 2.0),
        ("pause", 0.15),
        ("speech", 1.5),
        ("pause", 1.0),
        ("speech", 3.0),
    ]
    audio, truth = _compose(np.random.default_rng(3), parts + [("pause", 1.0)])
    regions = speech_regions(audio)
    # The 0.15 s pause (< min_silence_s) does not split; the 1 s pause does, padded 0.2 s each side.
    assert len(regions) == 2
    assert regions[0] == pytest.approx((truth[0][0] - 0.2, truth[1][1] + 0.2), abs=TOL)
    assert regions[1] == pytest.approx((truth[2][0] - 0.2, truth[2][1] + 0.2), abs=TOL)


def test_ten_minutes_cut_only_in_pauses(long_file) -> None:
    audio, truth, _ = long_file
    windows = split_windows(audio)
    _check_windows(windows, audio)
    assert 600 / 30 <= len(windows) < len(truth)  # utterances are packed, not one window each
    for w in windows:
        for boundary in (w.start, w.end):
            assert not any(a + TOL < boundary < b - TOL for a, b in truth), f"cut inside speech at {boundary}"
            assert _level_db(audio, boundary) < -60.0  # the cut sits in the -70 dBFS background
    for a, b in truth:
        assert _covered(windows, a, b), f"utterance {a:.2f}-{b:.2f} s not covered"


def test_long_pauses_are_never_inside_a_window(long_file) -> None:
    audio, _, pauses = long_file
    options = SegmentOptions()
    windows = split_windows(audio, options)
    long_pauses = [(a, b) for a, b in pauses if b - a > options.max_gap_s + 2 * TOL]
    assert len(long_pauses) > 10
    for a, b in long_pauses:
        inner = (a + options.pad_s + TOL, b - options.pad_s - TOL)  # what padding may not reach
        assert not any(w.start < inner[1] and w.end > inner[0] for w in windows), f"pause {a:.2f}-{b:.2f} s"


def test_long_silence_between_two_utterances_splits_them() -> None:
    parts = [("pause", 0.5), ("speech", 3.0), ("pause", 5.0), ("speech", 3.0), ("pause", 0.5)]
    audio, truth = _compose(np.random.default_rng(4), parts)
    windows = split_windows(audio)
    assert len(windows) == 2
    assert windows[0].end < truth[0][1] + 0.3 and windows[1].start > truth[1][0] - 0.3
    # With a larger max_gap_s the same pause is kept inside one window.
    (joined,) = split_windows(audio, SegmentOptions(max_gap_s=6.0))
    assert joined.start == windows[0].start and joined.end == windows[1].end


def test_pause_free_speech_is_cut_at_the_quietest_dips() -> None:
    rng = np.random.default_rng(5)
    audio = _utterance(rng, 75.0)
    dips = [(20.0, 20.15), (41.0, 41.15), (58.0, 58.15)]  # 150 ms: too short to count as pauses
    for a, b in dips:
        audio[round(a * SR) : round(b * SR)] *= 0.001  # -60 dB: down to the background noise
    audio[round(25.0 * SR) : round(25.15 * SR)] *= 0.1  # a shallower decoy dip in the same search span
    audio = (audio + NOISE_STD * rng.standard_normal(len(audio))).astype(np.float32)
    assert speech_regions(audio) == [(0.0, 75.0)]  # one region: nothing to cut at but the dips

    windows = split_windows(audio)
    _check_windows(windows, audio)
    assert len(windows) >= 3 and windows[0].start == 0.0 and windows[-1].end == 75.0
    cuts = [w.end for w in windows[:-1]]
    assert cuts == [w.start for w in windows[1:]]  # contiguous: no speech is dropped
    for cut in cuts:
        assert any(a < cut < b for a, b in dips), f"cut at {cut:.3f} s is not in a dip"
    assert cuts[0] == pytest.approx(20.075, abs=TOL)  # the middle of the deepest dip, not the decoy


def test_smaller_cap_is_respected(long_file) -> None:
    audio, truth, _ = long_file
    audio, truth = audio[: 120 * SR], [(a, b) for a, b in truth if b < 120.0]
    windows = split_windows(audio, SegmentOptions(max_window_s=5.0))
    _check_windows(windows, audio, max_window_s=5.0)
    for a, b in truth:
        assert _covered(windows, a, b)


def test_relative_threshold_makes_level_irrelevant() -> None:
    parts = [("pause", 1.0), ("speech", 5.0), ("pause", 2.5), ("speech", 4.0), ("pause", 1.0)]
    audio, _ = _compose(np.random.default_rng(6), parts)
    loud, quiet = split_windows(audio), split_windows(audio * np.float32(0.05))  # -26 dB
    assert len(loud) == len(quiet) == 2
    for a, b in zip(loud, quiet):
        assert a.start == pytest.approx(b.start, abs=TOL) and a.end == pytest.approx(b.end, abs=TOL)


def test_speech_in_audible_background_noise_is_found() -> None:
    parts = [("pause", 2.0), ("speech", 3.0), ("pause", 4.0), ("speech", 3.0), ("pause", 2.0)]
    audio, truth = _compose(np.random.default_rng(7), parts, noise_std=1.5e-3)  # -56 dBFS: above the floor
    windows = split_windows(audio)
    assert len(windows) == 2
    for w, (a, b) in zip(windows, truth):
        assert w.start == pytest.approx(a - 0.2, abs=TOL) and w.end == pytest.approx(b + 0.2, abs=TOL)


def test_window_slice_matches_duration(long_file) -> None:
    audio, _, _ = long_file
    for w in split_windows(audio):
        samples = w.slice(audio)
        assert abs(len(samples) - w.duration * SR) <= 1
        assert np.shares_memory(samples, audio)
    window = Window(1.0, 2.5)
    assert window.duration == 1.5 and len(window.slice(audio)) == round(1.5 * SR)


def test_options_are_frozen_and_validated() -> None:
    options = SegmentOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_window_s = 10.0  # type: ignore[misc]
    assert dataclasses.replace(options, max_window_s=10.0).max_window_s == 10.0
    with pytest.raises(ConfigError):
        SegmentOptions(max_window_s=0.0)
    with pytest.raises(ConfigError):
        SegmentOptions(pad_s=-1.0)
    with pytest.raises(ValueError):
        split_windows(np.zeros((2, SR), np.float32))


def test_import_is_torch_free_and_sample_rate_agrees() -> None:
    code = "import sys, whisfusion_cli.segment; assert 'torch' not in sys.modules, 'segment imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
    # audio.py imports torch (1.5 s), so its SAMPLE_RATE is read from the source instead.
    source = (Path(whisfusion_cli.segment.__file__).parent / "audio.py").read_text()
    rates = [
        ast.literal_eval(node.value)
        for node in ast.parse(source).body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SAMPLE_RATE" for t in node.targets)
    ]
    assert rates == [SAMPLE_RATE]
