"""vad.py (Silero VAD) and segment.py's `vad` choice; skipped where silero-vad is not installed."""

from __future__ import annotations

import numpy as np
import pytest

from whisfusion_cli.audio import SAMPLE_RATE, load_audio
from whisfusion_cli.errors import ConfigError
from whisfusion_cli.segment import SegmentOptions, speech_regions, split_windows

pytest.importorskip("silero_vad")


def test_white_noise_alone_has_no_speech_for_silero_and_all_speech_for_energy(one_thread) -> None:
    rng = np.random.default_rng(0)
    noise = (0.05 * rng.standard_normal(5 * SAMPLE_RATE)).astype(np.float32)
    assert split_windows(noise, SegmentOptions(vad="silero")) == []
    assert speech_regions(noise, SegmentOptions(pad_s=0.0)) == [(0.0, 5.0)]  # a loudness rule hears "speech"


def test_silero_finds_a_real_clip_in_noise(real_clips, one_thread) -> None:
    from whisfusion_cli import vad

    clip = load_audio(real_clips[1][0])  # "Stuff it into you, his belly counselled him." (3.3 s)
    pad = np.zeros(SAMPLE_RATE, np.float32)
    audio = np.concatenate([pad, clip, pad])
    audio += (0.01 * np.random.default_rng(1).standard_normal(len(audio))).astype(np.float32)
    regions = vad.speech_regions(audio)
    assert regions and regions[0][0] >= 1.2 and regions[-1][1] <= 1.0 + len(clip) / SAMPLE_RATE
    speech = sum(b - a for a, b in regions)
    assert speech >= 2.0  # the clip's ~2.7 s of speech, less its short pauses
    quiet = vad.silences(audio)
    assert quiet[0] == (0.0, regions[0][0]) and quiet[-1][1] == pytest.approx(len(audio) / SAMPLE_RATE)
    windows = split_windows(audio, SegmentOptions(vad="silero"))
    assert len(windows) == 1 and windows[0].start <= regions[0][0] and windows[0].end >= regions[-1][1]


def test_an_unknown_vad_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        SegmentOptions(vad="webrtc")  # type: ignore[arg-type]
