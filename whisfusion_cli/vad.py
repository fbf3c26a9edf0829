"""Silero VAD, the optional neural voice-activity detector (`--vad silero`; segment.py's energy rule
is the other).

Silero VAD (Silero Team, 2021-24, github.com/snakers4/silero-vad, MIT): a 2 MB model that gives a
speech probability per 32 ms of 16 kHz audio; its `get_speech_timestamps` turns them into regions
(hysteresis at threshold and threshold - 0.15, short pauses bridged, short blips dropped). The
`silero-vad` wheel ships the TorchScript model, so nothing is downloaded; it needs only torch. This
module imports neither at module level (segment.py, which the CLI imports at start-up, calls it).
"""

from __future__ import annotations

import functools
import importlib.util
import threading
import warnings
from typing import Any

import numpy as np

from .errors import ConfigError

SAMPLE_RATE = 16000  # Hz (audio.py's; Silero also takes 8 kHz, which whisfusion never has)
THRESHOLD = 0.5  # speech probability (Silero's default)
_LOCK = threading.Lock()  # the TorchScript model keeps recurrent state between chunks


def silero_available() -> bool:
    """Whether the `silero-vad` package is installed."""
    return importlib.util.find_spec("silero_vad") is not None


@functools.cache
def _model() -> Any:
    if not silero_available():
        raise ConfigError("--vad silero needs the silero-vad package: pip install silero-vad")
    from silero_vad import load_silero_vad

    with warnings.catch_warnings():  # torch >= 2.9 deprecates torch.jit.load, which the wheel uses
        warnings.simplefilter("ignore", DeprecationWarning)
        return load_silero_vad()  # the wheel's TorchScript file, on the CPU


def speech_regions(audio: np.ndarray, min_silence_s: float = 0.3, min_speech_s: float = 0.1,
                   threshold: float = THRESHOLD) -> list[tuple[float, float]]:
    """Speech in 16 kHz mono audio (N,) by Silero VAD, unpadded: sorted disjoint (start, end) seconds.

    Args:
        min_silence_s: pauses shorter than this do not split speech.
        min_speech_s: shorter speech is dropped.
        threshold: speech probability above which a 32 ms chunk is speech.
    """
    import torch
    from silero_vad import get_speech_timestamps

    samples = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    if len(samples) == 0:
        return []
    with _LOCK, torch.inference_mode():
        stamps = get_speech_timestamps(samples, _model(), threshold=threshold, sampling_rate=SAMPLE_RATE,
                                       min_speech_duration_ms=round(min_speech_s * 1000),
                                       min_silence_duration_ms=round(min_silence_s * 1000), speech_pad_ms=0)
    return [(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in stamps]


def silences(audio: np.ndarray, min_silence_s: float = 0.3) -> list[tuple[float, float]]:
    """The window's non-speech by Silero VAD, in seconds: before, between and after its speech regions
    (timing.py's `find_silences`); [] if it finds no speech at all (nothing to keep words out of)."""
    return non_speech(speech_regions(audio, min_silence_s=min_silence_s), len(audio) / SAMPLE_RATE)


def non_speech(regions: list[tuple[float, float]], duration: float) -> list[tuple[float, float]]:
    """What sorted disjoint speech `regions` leave of [0, duration]: before, between and after them;
    [] for no speech at all (nothing to keep words out of). Either VAD's silences (timing.py's too)."""
    if not regions:
        return []
    edges = [0.0] + [t for region in regions for t in region] + [duration]
    return [(a, b) for a, b in zip(edges[::2], edges[1::2]) if b > a]
