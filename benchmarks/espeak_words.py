"""Synthetic speech whose every word's start and end are known: eSpeak NG reports them as it speaks.

libespeak-ng (the library behind the `espeak-ng` command, called here through ctypes: no Python
binding needed) synthesises into a callback that also receives its events: a WORD event per word
(its character offset in the text) and, with `espeakINITIALIZE_PHONEME_EVENTS`, a PHONEME event per
phoneme, each stamped with the output sample where it begins. A word's reference span runs from its
first phoneme to the next phoneme event (the next word's first, or a pause `_`, `_:`), less any
digital silence at either edge (a stop's closure before a pause-initial burst is silence, not speech).
Words eSpeak runs together ("from the" gets one WORD event and both words' phonemes) are marked unscored.
Checked on the waveform: pauses begin within 10 ms of their `_:` event and words end there.
"""

from __future__ import annotations

import ctypes
import itertools
import re
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000  # Hz: what the result is resampled to
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS, _INITIALIZE_DONT_EXIT = 0x0001, 0x8000
_EVENT_LIST_TERMINATED, _EVENT_WORD, _EVENT_PHONEME = 0, 1, 7
_POS_CHARACTER = 1
_RATE = 1  # espeak_PARAMETER espeakRATE: words per minute
_SILENT = 1e-4  # |sample| at or below this is eSpeak's digital silence
_EDGE_S = 0.005  # trim granularity
_LETTERS = re.compile(r"[\w']+")


class _Event(ctypes.Structure):
    """espeak_EVENT (speak_lib.h)."""

    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", ctypes.c_char * 8)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class RefWord:
    """A word of the text and when eSpeak said it, in seconds from the utterance's start."""

    word: str
    start: float
    end: float
    scored: bool = True  # False: eSpeak ran it together with the next word, so its span holds both


class Espeak:
    """One libespeak-ng instance (the library is process-global: make one)."""

    def __init__(self, library: str = "libespeak-ng.so.1"):
        self.lib = ctypes.CDLL(library)
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None,
                                               _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT)
        if self.rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.rate})")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, int]] = []  # (type, text_position, length, sample)
        self._callback = _CALLBACK(self._on_synth)  # kept alive: the library holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, wav, n_samples: int, events) -> int:
        if wav and n_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (n_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            e = events[i]
            self._events.append((e.type, e.text_position, e.length, e.sample))
            i += 1
        return 0

    def say(self, text: str, voice: str = "en-us", wpm: int = 175) -> tuple[np.ndarray, list[RefWord]]:
        """16 kHz float32 audio of `text` and its words' reference spans (seconds)."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"eSpeak NG has no voice {voice!r}")
        self.lib.espeak_SetParameter(_RATE, wpm, 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8")
        self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        raw = np.concatenate(self._chunks).astype(np.float32) / 32768.0 if self._chunks else np.zeros(0, np.float32)
        words = _word_spans(data, self._events, raw, self.rate)
        from scipy.signal import resample_poly  # only here: the rest of the benchmarks run without scipy

        audio = resample_poly(raw, SAMPLE_RATE, self.rate).astype(np.float32)
        return audio, words


def _word_spans(data: bytes, events: list[tuple[int, int, int, int]], raw: np.ndarray,
                rate: int) -> list[RefWord]:
    """Words (WORD events with text) spanning their phonemes: from the first PHONEME event at the
    word's text position to the next PHONEME event after its last; silent edges trimmed."""
    words = {pos: length for kind, pos, length, _ in events if kind == _EVENT_WORD and length > 0}
    phonemes = [(pos, sample) for kind, pos, _, sample in events if kind == _EVENT_PHONEME]
    phonemes.append((-1, len(raw)))  # the end of the audio closes the last word
    spans: dict[int, list[int]] = {}
    for (pos, sample), (_, following) in itertools.pairwise(phonemes):
        if pos in words:
            span = spans.setdefault(pos, [sample, following])
            span[1] = max(span[1], following)
    starts = sorted(words) + [len(data) + 1]
    out = []
    for pos, following in itertools.pairwise(starts):
        if pos not in spans:
            continue
        # eSpeak says some pairs as one word ("from the"): its phonemes then hold both
        alone = len(_LETTERS.findall(data[pos - 1: following - 1].decode("utf-8", "replace"))) <= 1
        a, b = _trim(raw, *spans[pos], rate)
        text = data[pos - 1: pos - 1 + words[pos]].decode("utf-8", "replace")  # text_position is 1-based
        out.append(RefWord(text, a / rate, b / rate, alone))
    return out


def _trim(raw: np.ndarray, a: int, b: int, rate: int) -> tuple[int, int]:
    """[a, b) less its leading and trailing digital silence (5 ms steps); unchanged if all silent."""
    step = max(1, int(_EDGE_S * rate))
    lo, hi = a, b
    while lo + step <= hi and np.max(np.abs(raw[lo: lo + step]), initial=0.0) <= _SILENT:
        lo += step
    while hi - step >= lo and np.max(np.abs(raw[hi - step: hi]), initial=0.0) <= _SILENT:
        hi -= step
    return (lo, hi) if hi > lo else (a, b)
