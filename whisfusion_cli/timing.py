"""Word timestamps: Whisper's AR decoder reads the final text once, its alignment heads say when.

After openai-whisper's `timing.py` (Radford et al., 2022; the cross-attention + DTW method of
"Whisper word timestamps", openai/whisper#869): the text decoder reads the window's transcript
teacher-forced in one causal pass over its encoder states; the cross-attention of the heads
that follow the audio best (openai-whisper's `_ALIGNMENT_HEADS`, copied below) is softmaxed over
the window's audio frames, standardised per head and frame over tokens, median-filtered along
time (width 7) and averaged over heads; dynamic time warping over (tokens x frames, 20 ms
each) gives each token the frame where it starts, and the tokens are grouped into words
(space-prefixed BPE pieces start a word; punctuation attaches to its neighbour). A word's
probability is the mean of the decoder's probabilities of its tokens. Then, beyond openai-whisper,
no word may cross a silence of the window (segment.py's energy rule, or Silero VAD), and the word
edges next to one move onto it (`keep_out_of_silence`); benchmarks/word_timing.py measures both.

The decoder is Whisper's own (WhisperASR) or the rescorer shipped beside a whisfusion model, so
the text aligned may come from any decoder, PDD's included.
"""

from __future__ import annotations

import base64
import gzip
import itertools
import math
import string
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .config import WhisperTextConfig
from .segment import SegmentOptions, speech_regions
from .transcript import Word
from .vad import non_speech
from .whisper import MultiHeadAttention, WhisperTextDecoder

SAMPLE_RATE = 16000  # Hz (audio.py's)
N_SAMPLES_PER_STATE = 320  # audio samples per encoder state (20 ms: hop 160, conv stride 2)
TOKENS_PER_SECOND = SAMPLE_RATE // N_SAMPLES_PER_STATE  # 50 encoder states per second
MEDIAN_FILTER_WIDTH = 7  # frames, openai-whisper's medfilt_width
MAX_WORD_S = 0.7  # a sentence mark's "word" is cut to twice min(this, the median word), as openai does
PREPEND_PUNCTUATIONS = "\"'“¿([{-"  # openai-whisper's defaults: these join the word after them
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"  # and these the word before them
SENTENCE_END_MARKS = ".。!！?？"
# Silences the energy detector finds in the window (segment.py, unpadded, >= 0.3 s and 30 dB below the
# window's loud level): no word may run across one. The DTW alone starts the first word after a pause
# ~0.4 s early (LibriSpeech joins: median 0.395 s) and stretches words over pauses without a bare
# sentence mark ('."' is one token), which openai-whisper's hack misses; its comment: "a better
# segmentation algorithm based on VAD should be able to replace this". -40 dB (the windowing
# threshold) counts LibriSpeech's room noise as speech.
SILENCE_OPTIONS = SegmentOptions(pad_s=0.0, min_silence_s=0.3, threshold_db=-30.0)
MAX_SNAP_S = 0.3  # a word edge moves to the silence next to it if that is at most this far (0.5 s also
# pulled LibriSpeech's "him." over a breath)

# openai-whisper whisper/__init__.py: base85 + gzip boolean masks (n_text_layer, n_text_head).
ALIGNMENT_HEADS = {
    "tiny.en": b"ABzY8J1N>@0{>%R00Bk>$p{7v037`oCl~+#00",
    "tiny": b"ABzY8bu8Lr0{>%RKn9Fp%m@SkK7Kt=7ytkO",
    "base.en": b"ABzY8;40c<0{>%RzzG;p*o+Vo09|#PsxSZm00",
    "base": b"ABzY8KQ!870{>%RzyTQH3`Q^yNP!>##QT-<FaQ7m",
}
_BY_SHAPE = {(4, 6, False): "tiny.en", (4, 6, True): "tiny", (6, 8, False): "base.en", (6, 8, True): "base"}


def alignment_heads(cfg: WhisperTextConfig) -> Tensor:
    """(n_text_layer, n_text_head) bool: the heads to align with, by the decoder's shape; a shape
    openai-whisper lists no heads for gets its default, every head of the upper half of the layers."""
    name = _BY_SHAPE.get((cfg.n_text_layer, cfg.n_text_head, cfg.is_multilingual))
    if name is None:
        mask = torch.zeros(cfg.n_text_layer, cfg.n_text_head, dtype=torch.bool)
        mask[cfg.n_text_layer // 2:] = True
        return mask
    array = np.frombuffer(gzip.decompress(base64.b85decode(ALIGNMENT_HEADS[name])), dtype=bool)
    return torch.from_numpy(array.copy()).reshape(cfg.n_text_layer, cfg.n_text_head)


def median_filter(x: Tensor, width: int) -> Tensor:
    """Median over a sliding window of `width` (odd) along the last dim, reflect-padded: x (A, T, F)."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    padded = F.pad(x, (pad, pad), mode="reflect")  # (A, T, F + 2 pad)
    return padded.unfold(-1, width, 1).sort(-1).values[..., pad]


def dtw(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest monotone path through a cost matrix x (N, M), steps (1,1), (1,0), (0,1).

    openai-whisper's `dtw_cpu` (same tie-breaking), vectorised over anti-diagonals: cell (i, j)
    needs only diagonals i + j - 1 and i + j - 2.

    Returns:
        The path's row and column indices, each (P,), both non-decreasing, from (0, 0) to (N-1, M-1).
    """
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf)
    cost[0, 0] = 0.0
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    for d in range(2, n + m + 1):
        i = np.arange(max(1, d - m), min(n, d - 1) + 1)  # the cells (i, d - i) of diagonal d
        j = d - i
        c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
        t = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        cost[i, j] = x[i - 1, j - 1] + np.choose(t, (c0, c1, c2))
        trace[i, j] = t
    trace[0, :], trace[:, 0] = 2, 1
    i, j, path = n, m, []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    rows, cols = np.array(path[::-1]).T
    return rows, cols


def group_words(tokens: list[int], decode: Callable[[list[int]], str],
                eot: int) -> list[tuple[str, list[int]]]:
    """Splits BPE ids into words (openai-whisper's `split_tokens_on_spaces`).

    Ids are first gathered into pieces that decode to whole characters (a multi-byte character
    may span ids); a piece starts a new word if it is special (>= eot), starts with a space, or
    is punctuation, else it joins the word before.

    Returns:
        (text, ids) per word, the text with its leading space.
    """
    pieces: list[tuple[str, list[int]]] = []
    current: list[int] = []
    for token in tokens:
        current.append(token)
        text = decode(current)
        if "\ufffd" not in text:
            pieces.append((text, current))
            current = []
    if current:
        pieces.append((decode(current), current))
    words: list[tuple[str, list[int]]] = []
    for text, ids in pieces:
        if ids[0] >= eot or text.startswith(" ") or text.strip() in string.punctuation or not words:
            words.append((text, list(ids)))
        else:
            words[-1] = (words[-1][0] + text, words[-1][1] + ids)
    return words


@dataclass
class _Timing:
    word: str
    start: float
    end: float
    probability: float


def _truncate_at_sentence_marks(words: list[_Timing]) -> None:
    """openai-whisper's hack: a sentence mark, or the word after one, may not be longer than twice
    the median word (at most MAX_WORD_S): the DTW often stretches them over the pause between."""
    durations = np.array([w.end - w.start for w in words])
    durations = durations[durations.nonzero()]
    if not len(durations):
        return
    max_duration = 2 * min(MAX_WORD_S, float(np.median(durations)))
    for prev, word in itertools.pairwise(words):
        if word.end - word.start > max_duration:
            if word.word in SENTENCE_END_MARKS:
                word.end = word.start + max_duration
            elif prev.word in SENTENCE_END_MARKS:
                word.start = word.end - max_duration


SilenceFinder = Callable[[np.ndarray], list[tuple[float, float]]]


def silences(audio: np.ndarray) -> list[tuple[float, float]]:
    """The window's silences in seconds: before its first speech, between speech regions, after its last."""
    return non_speech(speech_regions(audio, SILENCE_OPTIONS), len(audio) / SAMPLE_RATE)


def union(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of two sets of (start, end) intervals, sorted and merged."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(a + b):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def silero_or_energy_silences(audio: np.ndarray) -> list[tuple[float, float]]:
    """Where either Silero VAD or the energy rule hears no speech: Silero finds the silences that noise
    or music fills (the energy rule then finds none), the energy rule keeps its sharper edges."""
    from .vad import silences as silero_silences

    return union(silences(audio), silero_silences(audio))


def silence_finder(vad: str) -> SilenceFinder:
    """The silences for segment.py's VAD named `vad`: "energy" (`silences`) or "silero"
    (`silero_or_energy_silences`)."""
    if vad == "silero":
        return silero_or_energy_silences
    if vad != "energy":
        raise ValueError(f"unknown vad {vad!r} (expected 'energy' or 'silero')")
    return silences


def keep_out_of_silence(words: list[_Timing], quiet: list[tuple[float, float]],
                        snap_to: list[tuple[float, float]] | None = None) -> list[_Timing]:
    """The words that are heard, their edges kept out of silence. A word wholly inside a silence of
    `quiet` is dropped: nobody speaks there, so the decoder made it up (a doubled "longer." the DTW
    put into the 2.8 s pause after the first), and its segment's text loses it too. Then it moves
    word edges that the DTW ran into a silence of `quiet` back to its side: a word across the
    silence's start ends there, one across its end starts there (whichever side holds more of the
    word). Then, for each speech stretch between two silences of `snap_to` (default `quiet`; the
    energy rule's, whose edges are sharp where Silero's lag), its last word ends where the silence
    after it starts and its first word starts where the one before it ends, if that is at most
    MAX_SNAP_S away: the speech there is that word's (the DTW ends sentence-final words early,
    LibriSpeech median 0.13 s)."""
    words = [w for w in words if not any(a <= w.start and w.end <= b for a, b in quiet)]
    for w in words:
        for a, b in quiet:
            if w.end <= a or w.start >= b:
                continue
            before, after = max(a - w.start, 0.0), max(w.end - b, 0.0)
            if before >= after:
                w.end = a
            else:
                w.start = b
    snap_to = quiet if snap_to is None else snap_to
    bounds = [0.0] + [t for q in snap_to for t in q] + [math.inf]
    for lo, hi in zip(bounds[::2], bounds[1::2]):  # the speech between two silences
        inside = [w for w in words if lo <= w.start and w.end <= hi]
        if not inside:
            continue
        first, last = inside[0], inside[-1]
        if lo > 0 and 0 < first.start - lo <= MAX_SNAP_S and not _in_any(lo, first.start, quiet):
            first.start = lo
        if hi < math.inf and 0 < hi - last.end <= MAX_SNAP_S and not _in_any(last.end, hi, quiet):
            last.end = hi
    return words


def _in_any(a: float, b: float, quiet: list[tuple[float, float]]) -> bool:
    """Whether (a, b) overlaps a silence of `quiet` (then a snap across it would enter the silence)."""
    return any(a < e and s < b for s, e in quiet)


def merge_punctuation(words: list[_Timing]) -> list[_Timing]:
    """Opening punctuation joins the next word, closing punctuation the word before (openai-whisper's
    `merge_punctuations`); the host keeps its times. Returns the words left."""
    host = len(words) - 1
    for i in range(len(words) - 2, -1, -1):  # prepended, right to left
        prev, nxt = words[i], words[host]
        if prev.word.startswith(" ") and prev.word.strip() and prev.word.strip() in PREPEND_PUNCTUATIONS:
            nxt.word, prev.word = prev.word + nxt.word, ""
        else:
            host = i
    host = 0
    for j in range(1, len(words)):  # appended, left to right
        prev, nxt = words[host], words[j]
        if prev.word and not prev.word.endswith(" ") and nxt.word and nxt.word in APPEND_PUNCTUATIONS:
            prev.word, nxt.word = prev.word + nxt.word, ""
        elif nxt.word:
            host = j
    return [w for w in words if w.word]


@contextmanager
def _keeping_cross_scores(decoder: WhisperTextDecoder) -> Iterator[list[MultiHeadAttention]]:
    """The decoder's cross-attentions, each keeping its logits in `.scores` for the duration."""
    attns = [layer.encoder_attn for layer in decoder.layers]
    for attn in attns:
        attn.keep_scores = True
    try:
        yield attns
    finally:
        for attn in attns:
            attn.keep_scores, attn.scores = False, None


def attention_matrix(decoder: WhisperTextDecoder, xa: Tensor, prompt: list[int], tokens: list[int], eot: int,
                     n_frames: int, heads: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """One teacher-forced pass of prompt + tokens + eot over one window's encoder states xa (1, S, C).

    Returns:
        The alignment matrix (N + 1, n_frames): for each input that predicts a text token or eot, the
        heads' normalised attention over the window's audio frames; and the decoder's probability of
        each text token, (N,).
    """
    ids = torch.tensor([prompt + tokens + [eot]], device=xa.device)  # (1, T)
    with _keeping_cross_scores(decoder) as attns:
        logits = decoder(ids, decoder.cross_kv(xa), decoder.new_cache(1, ids.shape[1]), 0)  # (1, T, V)
        pairs = heads.nonzero().tolist()
        qk = torch.stack([attns[layer].scores[0, head] for layer, head in pairs])  # (A, T, S)
    weights = qk[:, :, :n_frames].softmax(-1)  # over the audio frames only, not the window's padding
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)  # per head and frame
    weights = median_filter((weights - mean) / std, MEDIAN_FILTER_WIDTH)
    first = len(prompt) - 1  # the last prompt token predicts the first text token
    matrix = weights.mean(0)[first:-1]  # (N + 1, F)
    text_logits = logits[0, first: first + len(tokens), :eot].float()  # (N, eot): text tokens only
    probs = text_logits.softmax(-1).gather(1, ids[0, first + 1: first + 1 + len(tokens), None])[:, 0]
    return matrix.double().cpu().numpy(), probs.double().cpu().numpy()


def align_window(decoder: WhisperTextDecoder, xa: Tensor, prompt: list[int], tokens: list[int], eot: int,
                 audio: np.ndarray, heads: Tensor, decode: Callable[[list[int]], str],
                 find_silences: SilenceFinder | None = silences) -> list[Word]:
    """The words of one window's text (ids `tokens`, without prompt or eot) with times in seconds
    from the window's start, within [0, its duration]; [] for no text.

    xa: the window's encoder states (1, S, C); audio: its samples (N,); find_silences: where no word
    may be (None: openai-whisper's method alone)."""
    n_samples = len(audio)
    tokens = tokens[: decoder.config.n_text_ctx - len(prompt) - 1]
    if not tokens:
        return []
    n_frames = max(1, min(xa.shape[1], -(-n_samples // N_SAMPLES_PER_STATE)))
    matrix, token_probs = attention_matrix(decoder, xa, prompt, tokens, eot, n_frames, heads)
    text_idx, time_idx = dtw(-matrix)
    words = group_words(tokens + [eot], decode, eot)
    boundaries = np.pad(np.cumsum([len(ids) for _, ids in words[:-1]]), (1, 0))  # (W + 1,)
    jumps = np.pad(np.diff(text_idx), (1, 0), constant_values=1).astype(bool)  # the path enters a new row
    jump_times = time_idx[jumps] / TOKENS_PER_SECOND  # (N + 1,) when each row's token starts
    timings = [_Timing(text, float(jump_times[i]), float(jump_times[j]), float(np.mean(token_probs[i:j])))
               for (text, _), i, j in zip(words[:-1], boundaries[:-1], boundaries[1:])]
    _truncate_at_sentence_marks(timings)
    timings = merge_punctuation(timings)  # first: a word's own edge snaps, not its full stop's
    if find_silences is not None:
        quiet = find_silences(audio)  # edges snap onto the energy rule's silences only: Silero's lag the speech
        timings = keep_out_of_silence(timings, quiet, quiet if find_silences is silences else silences(audio))
    duration = n_samples / SAMPLE_RATE
    return [Word(t.word, min(t.start, duration), min(t.end, duration), t.probability) for t in timings]


@torch.inference_mode()
def word_timestamps(decoder: WhisperTextDecoder, xa: Tensor, prompt: list[int], eot: int,
                    tokens: list[list[int]], windows: Sequence[np.ndarray],
                    decode: Callable[[list[int]], str], find_silences: SilenceFinder | None = silences
                    ) -> list[list[Word]]:
    """Words with times (seconds from each window's start) for a batch of windows' texts.

    Args:
        decoder: Whisper's AR text decoder (WhisperASR's own, or a whisfusion model's rescorer).
        xa: the windows' encoder states (B, 1500, C).
        prompt: the decoder's start tokens, ending with <|notimestamps|>.
        eot: end-of-text id (ids from it up are specials).
        tokens: each window's text as ids, the way the decoder writes it (leading space).
        windows: each window's audio, (N,) at 16 kHz.
        decode: ids -> text, not stripped (a piece keeps its leading space).
        find_silences: a window's samples -> its silences in seconds, which no word may cross
            (`silences`: the energy rule); None: openai-whisper's method alone.
    """
    heads = alignment_heads(decoder.config)
    return [align_window(decoder, xa[b: b + 1], prompt, ids, eot, audio, heads, decode, find_silences)
            for b, (ids, audio) in enumerate(zip(tokens, windows))]
