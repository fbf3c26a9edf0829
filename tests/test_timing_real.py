"""Acceptance (issue #20): word times on real speech whose boundaries are known.

The 4 shared LibriSpeech clips joined with 1.0, 0.6 and 2.0 s of room noise between them
(benchmarks/word_timing.py's librispeech-joined set): each clip's speech onset and offset are marked
on the clean clip alone (10 ms frames against its own noise floor, not the aligner's rule), and the
stretches between clips are known silences. There are no per-word reference times for real speech
here, so the errors measured are the clip onsets' and offsets'. With pink noise 10 dB below the
speech only `--vad silero` finds the silences (the energy rule's onsets are then openai-whisper's,
~0.35 s early: benchmarks/results/word_timing_cpu.json).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from whisfusion_cli.audio import load_audio
from whisfusion_cli.segment import SegmentOptions

MAX_MEDIAN_ERR_S = 0.15


@pytest.fixture(scope="module")
def bundled():
    from whisfusion_cli.asr import load_model
    from whisfusion_cli.cli import default_model

    return load_model(default_model(), device="cpu")


@pytest.fixture(scope="module")
def joined(real_clips, benchmark_script):
    wt = benchmark_script("word_timing")
    clips = [(ref, load_audio(path)) for path, ref in real_clips]
    rng = np.random.default_rng(0)
    clean = wt.join_clips("librispeech-joined", clips, (1.0, 0.6, 2.0), rng)
    return wt, {"clean": clean, "pink10": wt.with_noise(clean, "pink", 10.0, rng)}


@pytest.mark.slow
@pytest.mark.parametrize(("preset", "vad", "noise"), [
    ("fast", "energy", "clean"), ("accurate", "energy", "clean"),
    ("fast", "silero", "clean"), ("fast", "silero", "pink10"),  # the energy rule finds no silence in noise
])
def test_clip_onsets_offsets_and_silences_on_joined_librispeech(preset, vad, noise, bundled, joined,
                                                                 one_thread) -> None:
    wt, files = joined
    if vad == "silero":
        pytest.importorskip("silero_vad")
    f = files[noise]
    t = bundled.transcribe(f.audio, preset=preset, word_timestamps=True, segment_options=SegmentOptions(vad=vad))
    words = [(w.word, w.start, w.end) for s in t.segments for w in s.words]
    assert "stew" in t.text.lower() and "no longer" in t.text.lower()  # these clips, whatever the preset drops
    starts, ends = wt.clip_errors(words, f.spans)
    assert len(starts) == 4 and len(f.silences) == 3
    assert np.median(np.abs(starts)) <= MAX_MEDIAN_ERR_S, f"onset errors {np.round(starts, 3)}"
    assert np.median(np.abs(ends)) <= MAX_MEDIAN_ERR_S, f"offset errors {np.round(ends, 3)}"
    assert wt.in_silence(words, f.silences) == 0, "a word lies inside a known silence"
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(words))
