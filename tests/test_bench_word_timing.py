"""benchmarks/word_timing.py and espeak_words.py: the references the word-timing errors are measured against."""

from __future__ import annotations

import itertools
import shutil

import numpy as np
import pytest

from whisfusion_cli.audio import SAMPLE_RATE


def _tone(seconds: float, level: float = 0.1) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (level * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_speech_bounds_and_joined_clips_know_where_speech_is(benchmark_script) -> None:
    wt = benchmark_script("word_timing")
    rng = np.random.default_rng(0)
    floor = lambda s: (1e-3 * rng.standard_normal(round(s * SAMPLE_RATE))).astype(np.float32)
    clip = np.concatenate([floor(0.5), _tone(1.0) + floor(1.0), floor(0.3)])
    on, off = wt.speech_bounds(clip)
    assert on == pytest.approx(0.5, abs=0.02) and off == pytest.approx(1.5, abs=0.02)
    f = wt.join_clips("x", [("a", clip), ("b", clip)], [1.0], rng)
    assert len(f.audio) == 2 * len(clip) + SAMPLE_RATE
    (_, a0, a1), (_, b0, _) = f.spans
    assert b0 - a0 == pytest.approx(len(clip) / SAMPLE_RATE + 1.0)
    assert f.silences == [(a1, b0)]


def test_errors_and_words_in_silence(benchmark_script) -> None:
    wt = benchmark_script("word_timing")
    spans = [("one two", 0.5, 1.5), ("three", 3.0, 4.0)]
    words = [(" one", 0.4, 0.9), (" two", 0.9, 1.6), (" three", 3.1, 3.9)]
    starts, ends = wt.clip_errors(words, spans)
    assert np.allclose(starts, [-0.1, 0.1]) and np.allclose(ends, [0.1, -0.1])
    assert wt.in_silence(words, [(1.5, 3.0)]) == 0
    assert wt.in_silence(words + [(" stray", 2.0, 2.2)], [(1.5, 3.0)]) == 1
    assert wt.in_silence([(" long", 1.0, 1.65)], [(1.5, 3.0)]) == 1  # 0.15 s into it: more than its edge
    ref = [("One", 0.5, 0.9), ("", 0.9, 1.5), ("three", 3.0, 4.0)]  # "": a word not scored
    s, e = wt.word_errors([(" one,", 0.45, 0.9), (" too", 0.9, 1.5), (" Three.", 3.05, 4.1)], ref)
    assert np.allclose(s, [-0.05, 0.05]) and np.allclose(e, [0.0, 0.1])


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="eSpeak NG not installed")
def test_espeak_words_span_their_sound(benchmark_script) -> None:
    pytest.importorskip("scipy")  # espeak_words resamples with scipy.signal (a benchmark-only need)
    benchmark_script("word_timing")  # puts benchmarks/ on the path
    from espeak_words import Espeak

    audio, words = Espeak().say("Turnips and carrots. Please call Stella from the store.", "en-us", 175)
    assert [w.word for w in words if w.scored][:5] == ["Turnips", "and", "carrots", "Please", "call"]
    assert all(a.end <= b.start + 1e-9 and a.start < a.end for a, b in itertools.pairwise(words))
    pause = next(b.start - a.end for a, b in itertools.pairwise(words) if a.word == "carrots")
    assert pause >= 0.2  # the full stop's pause
    n = lambda t: round(t * SAMPLE_RATE)
    for w in words:  # sound inside each word, (near-)silence in the sentence pause
        assert np.max(np.abs(audio[n(w.start): n(w.end)])) > 0.01
    carrots = next(w for w in words if w.word == "carrots")
    assert np.max(np.abs(audio[n(carrots.end) + 160: n(carrots.end + pause) - 160])) < 0.01
    assert not next(w for w in words if w.word == "from").scored  # eSpeak says "from the" as one word
