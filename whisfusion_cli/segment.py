"""Splits 16 kHz mono audio into windows of at most 30 s whose boundaries fall in pauses.

Whisper's encoder sees a fixed 30 s window, so long files must be cut, and a cut through a
word costs that word. This module finds speech with a frame-energy detector and packs
consecutive speech regions into windows, cutting only in silence (or, for a pause-free
stretch longer than a window, at its quietest spot).

Why an energy detector rather than a neural VAD (Silero, pyannote, WebRTC):
  * no model download and no extra dependency: numpy only, torch-free at import;
  * deterministic: the same samples always give the same windows (tests can pin them);
  * fast: one vectorised pass, ~20 ms of CPU for ten minutes of audio;
  * good enough for *windowing*: the windows only need to avoid cutting words and to skip
    long silences; the decoder sees the whole window as context and is what decides which
    sounds are words. pydub's `silence.detect_silence` does the same dBFS thresholding but
    loops in Python over an `AudioSegment` (int16 conversion of the whole file first).

The energy rule's blind spot is steady noise: 40 dB below the loud level is quieter than any
background at a usable SNR, so noise or music makes everything "speech" (and noise alone gets
a window the decoder writes words for). `SegmentOptions(vad="silero")` (`--vad silero`, vad.py)
asks Silero VAD instead; benchmarks/results/vad_cpu.json compares the two.

The threshold is relative to the file's loud reference level (the 95th percentile of frame
levels above an absolute floor), so quiet recordings segment like loud ones, while the
absolute floor keeps a silent or near-silent file from producing any window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import ConfigError

# audio.py imports torch at module level, so importing SAMPLE_RATE from it would break this
# module's torch-free import; the value is pinned here and a test asserts they agree.
SAMPLE_RATE = 16000  # Hz

_POWER_FLOOR = 1e-20  # mean-square floor: an all-zero frame reads -200 dB, with no log(0) warning
_REFERENCE_PERCENTILE = 95.0  # the file's "loud" level, robust to a few clicks
_SMOOTH_S = 0.1  # s: energy smoothing before choosing a forced cut, so a dip beats a single quiet frame
_EPS = 1e-9  # s: tolerance for float comparisons of times


@dataclass(frozen=True)
class SegmentOptions:
    """How audio is split into windows.

    Attributes:
        max_window_s: hard cap on a window's length, in seconds (Whisper's 30 s context).
        frame_ms: length of an energy frame, in milliseconds.
        threshold_db: frames quieter than (reference level + this) are silence, where the
            reference is the 95th percentile of frame levels above `abs_floor_db`.
        abs_floor_db: frames below this dBFS are always silence, so silence gives no windows.
        min_silence_s: a pause shorter than this does not split speech; speech runs closer
            than this are merged into one region.
        min_speech_s: speech regions shorter than this (clicks, blips) are dropped.
        pad_s: context kept on each side of a speech region, clipped at the midpoint of the
            pause to its neighbour and at the file's bounds.
        max_gap_s: a pause longer than this is never inside a window.
        vad: what finds the speech: "energy" (the frame-energy rule above) or "silero" (Silero VAD,
            vad.py: the same min_silence_s, min_speech_s and pad_s; the threshold fields unused).
    """

    max_window_s: float = 30.0
    frame_ms: float = 20.0
    threshold_db: float = -40.0
    abs_floor_db: float = -60.0
    min_silence_s: float = 0.3
    min_speech_s: float = 0.1
    pad_s: float = 0.2
    max_gap_s: float = 2.0
    vad: Literal["energy", "silero"] = "energy"

    def __post_init__(self) -> None:
        if self.vad not in ("energy", "silero"):
            raise ConfigError(f"segment: vad must be 'energy' or 'silero', got {self.vad!r}")
        if self.frame_ms <= 0 or self.max_window_s <= 0:
            raise ConfigError("segment: frame_ms and max_window_s must be positive")
        if self.max_window_s * 1000.0 < 2 * self.frame_ms:
            raise ConfigError("segment: max_window_s must span at least two energy frames")
        if min(self.min_silence_s, self.min_speech_s, self.pad_s, self.max_gap_s) < 0:
            raise ConfigError("segment: min_silence_s, min_speech_s, pad_s and max_gap_s must be >= 0")

    @property
    def frame_length(self) -> int:
        """Samples in one energy frame (320 for 20 ms at 16 kHz)."""
        return max(1, round(self.frame_ms * SAMPLE_RATE / 1000.0))

    @property
    def frame_s(self) -> float:
        """Seconds in one energy frame, exact in samples."""
        return self.frame_length / SAMPLE_RATE


@dataclass(frozen=True)
class Window:
    """A span of the file, in seconds from its start, that the model transcribes as one input.

    Attributes:
        start: first instant of the window, in seconds.
        end: last instant of the window, in seconds (exclusive).
    """

    start: float
    end: float

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.end - self.start

    def slice(self, audio: np.ndarray) -> np.ndarray:
        """Returns the window's samples of `audio` (a view, not a copy).

        Times are rounded to the nearest sample, so float error never drops a sample.

        Args:
            audio: the whole file's samples at SAMPLE_RATE, shape (N,).
        """
        return audio[round(self.start * SAMPLE_RATE) : round(self.end * SAMPLE_RATE)]


def _frame_db(audio: np.ndarray, frame_length: int) -> np.ndarray:
    """Per-frame RMS level in dBFS (the last, partial frame averages only its own samples).

    Args:
        audio: mono samples, shape (N,).
        frame_length: samples per frame.

    Returns:
        Levels in dB, shape (ceil(N / frame_length),); an all-zero frame reads -200 dB.
    """
    n_samples = len(audio)
    n_full = n_samples // frame_length
    full = audio[: n_full * frame_length].reshape(n_full, frame_length)  # (F, L)
    mean_sq = np.mean(np.square(full, dtype=np.float64), axis=1)  # (F,)
    tail = audio[n_full * frame_length :]
    if len(tail):
        mean_sq = np.append(mean_sq, np.mean(np.square(tail, dtype=np.float64)))
    return 10.0 * np.log10(np.maximum(mean_sq, _POWER_FLOOR))


def _speech_mask(db: np.ndarray, options: SegmentOptions) -> np.ndarray:
    """Frames louder than the relative threshold and the absolute floor, shape (F,) bool."""
    audible = db > options.abs_floor_db
    if not audible.any():
        return audible
    reference = np.percentile(db[audible], _REFERENCE_PERCENTILE)
    return db > max(reference + options.threshold_db, options.abs_floor_db)


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (exclusive) frame indices of the True runs of `mask`, each shape (K,)."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _raw_regions(db: np.ndarray, options: SegmentOptions) -> tuple[np.ndarray, np.ndarray]:
    """Speech regions in frames before padding: loud runs, merged across short pauses, blips dropped.

    Returns:
        Start and end (exclusive) frame indices, each shape (K,), sorted and disjoint.
    """
    starts, ends = _runs(_speech_mask(db, options))
    if len(starts) > 1:
        long_pause = (starts[1:] - ends[:-1]) * options.frame_s >= options.min_silence_s - _EPS  # (K-1,)
        starts = starts[np.concatenate(([True], long_pause))]
        ends = ends[np.concatenate((long_pause, [True]))]
    keep = (ends - starts) * options.frame_s >= options.min_speech_s - _EPS
    return starts[keep], ends[keep]


def _pad(starts_s: np.ndarray, ends_s: np.ndarray, pad_s: float, duration: float) -> np.ndarray:
    """Widens regions by `pad_s`, clipped at the midpoint of each pause and at the file's bounds.

    Returns:
        Padded regions in seconds, shape (K, 2), still sorted and non-overlapping.
    """
    lo, hi = starts_s - pad_s, ends_s + pad_s
    if len(starts_s) > 1:
        middle = (ends_s[:-1] + starts_s[1:]) / 2.0  # (K-1,) the middle of each pause
        hi[:-1] = np.minimum(hi[:-1], middle)
        lo[1:] = np.maximum(lo[1:], middle)
    return np.stack((np.clip(lo, 0.0, duration), np.clip(hi, 0.0, duration)), axis=1)


def _detect(audio: np.ndarray, options: SegmentOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs the detector once for both public functions.

    Returns:
        (db, raw, padded): frame levels, shape (F,); unpadded speech regions in seconds,
        shape (K, 2); padded speech regions in seconds, shape (K, 2).
    """
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"segment: expected mono audio of shape (N,), got shape {audio.shape}")
    duration = len(audio) / SAMPLE_RATE
    db = _frame_db(audio, options.frame_length)
    if options.vad == "silero":
        from . import vad  # torch, on demand

        found = vad.speech_regions(audio, options.min_silence_s, options.min_speech_s)
        raw = np.array(found, dtype=np.float64).reshape(-1, 2)
    else:
        starts, ends = _raw_regions(db, options)
        raw = np.stack((starts * options.frame_s, np.minimum(ends * options.frame_s, duration)), axis=1)
    return db, raw, _pad(raw[:, 0], raw[:, 1], options.pad_s, duration)


def speech_regions(
    audio: np.ndarray, options: SegmentOptions = SegmentOptions()
) -> list[tuple[float, float]]:
    """Finds the speech in a file, padded with a little context.

    Args:
        audio: mono float samples at SAMPLE_RATE (16 kHz), shape (N,).
        options: detector settings.

    Returns:
        Sorted, non-overlapping (start, end) pairs in seconds within [0, N / SAMPLE_RATE];
        empty for empty or silent audio. A region may be longer than `max_window_s`.
    """
    _, _, padded = _detect(audio, options)
    return [(float(s), float(e)) for s, e in padded]


def _quietest_cut(db: np.ndarray, lo_s: float, hi_s: float, options: SegmentOptions) -> float:
    """The middle of the quietest dip among the frames lying wholly inside [lo_s, hi_s], in seconds.

    The levels are smoothed over ~0.1 s first so a sustained dip wins over one quiet frame; the
    dip is the run of frames around the quietest one that stay below halfway (in dB) between it
    and the span's median level, and the cut goes in its middle.
    """
    frame_s = options.frame_s
    first = int(np.ceil(lo_s / frame_s - _EPS))
    stop = min(int(np.floor(hi_s / frame_s + _EPS)), len(db))  # frames [first, stop)
    if stop <= first:
        return hi_s
    k = min(max(1, round(_SMOOTH_S / frame_s)) | 1, stop - first)  # odd ~0.1 s kernel, in frames
    levels = np.pad(db[first:stop], (k // 2, k - 1 - k // 2), mode="edge")
    smooth = np.convolve(levels, np.ones(k) / k, mode="valid")  # (stop - first,)
    quietest = int(np.argmin(smooth))
    near = smooth <= (smooth[quietest] + np.median(smooth)) / 2.0  # the dip: below halfway to typical
    run_lo, run_hi = quietest, quietest + 1  # the contiguous near-quietest run, [run_lo, run_hi)
    while run_lo > 0 and near[run_lo - 1]:
        run_lo -= 1
    while run_hi < len(near) and near[run_hi]:
        run_hi += 1
    return (first + (run_lo + run_hi) / 2.0) * frame_s


def _split_long(
    db: np.ndarray, start: float, end: float, options: SegmentOptions
) -> list[tuple[float, float]]:
    """Cuts one region into pieces of at most `max_window_s` at its quietest spots.

    Each cut is searched in the last half of the span a window may still cover, so pieces
    are at least half a window long (except possibly the last).
    """
    cap = options.max_window_s
    pieces: list[tuple[float, float]] = []
    while end - start > cap + _EPS:
        cut = _quietest_cut(db, start + 0.5 * cap, start + cap, options)
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def _pack(pieces: list[tuple[float, float, float]], options: SegmentOptions) -> list[Window]:
    """Greedily joins consecutive (start, end, pause_before) pieces into windows.

    A new window starts when the piece would stretch the current one past `max_window_s`,
    or when the pause before it is longer than `max_gap_s` (so that pause is skipped).
    """
    windows: list[Window] = []
    current: tuple[float, float] | None = None
    for start, end, pause in pieces:
        if current is not None and (
            pause > options.max_gap_s or end - current[0] > options.max_window_s + _EPS
        ):
            windows.append(Window(*current))
            current = None
        current = (start, end) if current is None else (current[0], end)
    if current is not None:
        windows.append(Window(*current))
    return windows


def split_windows(audio: np.ndarray, options: SegmentOptions = SegmentOptions()) -> list[Window]:
    """Splits a file into windows of at most `max_window_s` that cut at pauses.

    Speech regions are packed greedily in order; leading, trailing and long (> `max_gap_s`)
    silences are left out; a region longer than a window is cut at its quietest spots.

    Args:
        audio: mono float samples at SAMPLE_RATE (16 kHz), shape (N,).
        options: detector and packing settings.

    Returns:
        Sorted, non-overlapping windows, each at most `max_window_s` long and within
        [0, N / SAMPLE_RATE], whose union covers every speech region; [] for silence.
    """
    db, raw, padded = _detect(audio, options)
    pieces: list[tuple[float, float, float]] = []
    for i, (start, end) in enumerate(padded):
        pause = float(raw[i, 0] - raw[i - 1, 1]) if i else 0.0  # the real silence, not the padded gap
        for j, (piece_start, piece_end) in enumerate(_split_long(db, float(start), float(end), options)):
            pieces.append((piece_start, piece_end, pause if j == 0 else 0.0))
    return _pack(pieces, options)
