"""Word timestamps (timing.py) and cues built from words (cues.py, transcript.py's writers)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import srt
import torch
import webvtt

from whisfusion_cli.config import WhisperTextConfig
from whisfusion_cli.cues import SubtitleOptions, karaoke, word_cues
from whisfusion_cli.timing import (
    MAX_SNAP_S,
    _Timing,
    alignment_heads,
    dtw,
    group_words,
    keep_out_of_silence,
    median_filter,
    merge_punctuation,
    silence_finder,
    silences,
    union,
    word_timestamps,
)
from whisfusion_cli.transcript import (
    Segment,
    Transcript,
    Word,
    format_json,
    format_srt,
    format_tsv,
    format_vtt,
    subtitle_cues,
    window_segments,
)
from whisfusion_cli.whisper import MultiHeadAttention, WhisperTextDecoder

# -- DTW and the attention matrix -------------------------------------------------------------


def test_dtw_on_diagonal_attention_gives_increasing_token_times() -> None:
    n_tokens, n_frames = 12, 300
    attention = np.zeros((n_tokens, n_frames))
    for i in range(n_tokens):  # token i is heard in frames [25 i, 25 i + 25)
        attention[i, 25 * i: 25 * i + 25] = 1.0
    attention += 0.01 * np.random.default_rng(0).random(attention.shape)
    rows, cols = dtw(-attention)
    assert rows[0] == 0 and cols[0] == 0 and rows[-1] == n_tokens - 1 and cols[-1] == n_frames - 1
    assert np.all(np.diff(rows) >= 0) and np.all(np.diff(cols) >= 0)
    assert np.all(np.diff(rows) + np.diff(cols) >= 1)  # each step moves
    jumps = np.pad(np.diff(rows), (1, 0), constant_values=1).astype(bool)
    starts = cols[jumps]  # the frame where each token's row is entered
    assert len(starts) == n_tokens and np.all(np.diff(starts) > 0)
    assert np.all(np.abs(starts - 25 * np.arange(n_tokens)) <= 1)


def test_dtw_matches_a_plain_loop() -> None:
    x = np.random.default_rng(1).random((7, 11))
    cost = np.full((8, 12), np.inf)
    cost[0, 0] = 0
    for i in range(1, 8):
        for j in range(1, 12):
            cost[i, j] = x[i - 1, j - 1] + min(cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1])
    rows, cols = dtw(x)
    assert x[rows, cols].sum() == pytest.approx(cost[-1, -1])


def test_median_filter_matches_numpy() -> None:
    x = torch.randn(2, 3, 40)
    got = median_filter(x, 7)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (3, 3)), mode="reflect")
    want = np.median(np.lib.stride_tricks.sliding_window_view(padded, 7, axis=-1), axis=-1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_alignment_heads_of_whisper_base() -> None:
    heads = alignment_heads(WhisperTextConfig())  # whisper-base's shape: 6 layers x 8 heads, multilingual
    assert heads.shape == (6, 8) and heads.dtype == torch.bool
    assert 0 < int(heads.sum()) < 48 and not heads[0].any()  # a few heads of the upper layers
    odd = alignment_heads(WhisperTextConfig(n_text_layer=3, n_text_head=2))
    assert odd.tolist() == [[False, False], [True, True], [True, True]]  # openai's default: upper half


def test_keep_scores_matches_sdpa() -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4).eval()
    x, xa = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
    k, v = attn.project_kv(xa)
    plain = attn.attend(x, k, v)
    attn.keep_scores = True
    kept = attn.attend(x, k, v)
    torch.testing.assert_close(kept, plain, rtol=1e-5, atol=1e-5)
    assert attn.scores is not None and attn.scores.shape == (2, 4, 5, 9)


# -- grouping BPE tokens into words --------------------------------------------------------------

_PIECES = {1: " Hello", 2: ",", 3: " wor", 4: "ld", 5: ".", 6: " \"", 7: "Qu", 8: "oted", 9: "\"", 10: " caf",
           11: "\xc3", 12: "\xa9", 99: "<|endoftext|>", 100: "<|startoftranscript|>", 103: "<|notimestamps|>"}


def _decode(ids: list[int]) -> str:
    # ids 11 + 12 are the two bytes of "é": alone each decodes to the replacement character
    text = "".join(_PIECES[i] for i in ids)
    return text.replace("\xc3\xa9", "é").replace("\xc3", "\ufffd").replace("\xa9", "\ufffd")


def test_group_words_starts_words_at_spaces_and_punctuation() -> None:
    words = group_words([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 99], _decode, eot=99)
    # as openai-whisper: ' "' starts a word and "Qu" (no space, not punctuation) joins it
    assert [w for w, _ in words] == [" Hello", ",", " world", ".", " \"Quoted", "\"", " café", "<|endoftext|>"]
    assert words[2][1] == [3, 4] and words[6][1] == [10, 11, 12]


def test_merge_punctuation_attaches_to_neighbours_and_keeps_host_times() -> None:
    texts = [" Hello", ",", " world", ".", " (", "aside", ")", " \"", " Quoted", "\""]
    timings = [_Timing(t, float(i), float(i) + 0.5, 0.9) for i, t in enumerate(texts)]
    merged = merge_punctuation(timings)
    assert [w.word for w in merged] == [" Hello,", " world.", " (aside)", ' " Quoted"']
    assert [(w.start, w.end) for w in merged] == [(0.0, 0.5), (2.0, 2.5), (5.0, 5.5), (8.0, 8.5)]


def test_silence_keeps_words_out_and_pulls_the_edges_next_to_it() -> None:
    words = [_Timing(" a", 0.5, 1.2, 0.9), _Timing(" b", 1.2, 1.8, 0.9), _Timing(" c", 2.9, 3.3, 0.9),
             _Timing(" d", 3.3, 3.6, 0.9), _Timing(" e", 5.5, 6.0, 0.9)]
    quiet = [(0.0, 0.7), (2.0, 3.0), (4.5, 5.0)]
    made_up = _Timing(" longer.", 2.2, 2.6, 0.5)  # wholly inside a silence: nobody said it there
    kept = keep_out_of_silence(words[:2] + [made_up] + words[2:], quiet)
    assert kept == words  # the same objects, in order, without it
    spans = [(w.start, w.end) for w in words]
    assert spans[0] == (0.7, 1.2)  # ran into the leading silence: starts where it ends
    assert spans[1] == (1.2, 2.0)  # ended 0.2 s before a silence: the speech up to it is this word's
    assert spans[2] == (3.0, 3.3)  # ran into the silence before it
    assert spans[3] == (3.3, 3.6)  # 0.9 s before the next silence: more than MAX_SNAP_S, left alone
    assert spans[4] == (5.5, 6.0)  # 0.5 s after its silence: left alone too
    assert MAX_SNAP_S < 0.5


def test_snapping_stops_at_any_silence_and_unions_merge() -> None:
    words = [_Timing(" a", 0.5, 1.0, 0.9), _Timing(" b", 1.5, 1.8, 0.9)]
    # the energy rule's silence starts 0.2 s after "a", but Silero's starts 0.1 s after it: no snap;
    # both end at 1.4, 0.1 s before "b": it snaps
    assert keep_out_of_silence(words, quiet=[(1.1, 1.4)], snap_to=[(1.2, 1.4)]) == words
    assert (words[0].end, words[1].start) == (1.0, 1.4)
    assert union([(0.0, 1.0), (3.0, 4.0)], [(0.5, 2.0), (5.0, 6.0)]) == [(0.0, 2.0), (3.0, 4.0), (5.0, 6.0)]


def test_silence_finder_names_the_vads() -> None:
    assert silence_finder("energy") is silences
    with pytest.raises(ValueError):
        silence_finder("webrtc")


def test_word_timestamps_on_random_decoder_are_ordered() -> None:
    torch.manual_seed(0)
    cfg = WhisperTextConfig(n_vocab=104, n_text_ctx=64, n_text_state=32, n_text_head=4, n_text_layer=2,
                            n_text_mlp=64)
    decoder = WhisperTextDecoder(cfg).eval()
    ids = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]  # ' Hello, world. "Quoted" café' in _PIECES
    (words,) = word_timestamps(decoder, torch.randn(1, 1500, 32), [100, 103], 99, [ids], [np.zeros(3 * 16000, np.float32)], _decode)
    assert [w.word for w in words] == [" Hello,", " world.", ' "Quoted"', " café"]
    assert all(0 <= w.start <= w.end <= 3.0 for w in words)
    assert all(a.end <= b.start + 1e-9 for a, b in itertools.pairwise(words))
    assert all(0 < w.probability <= 1 for w in words)
    assert all(not layer.encoder_attn.keep_scores for layer in decoder.layers)  # switched off again


# -- segments and cues from words ------------------------------------------------------------------


def _words(spec: list[tuple[str, float, float]]) -> list[Word]:
    return [Word(" " + text, start, end, 0.9) for text, start, end in spec]


def test_window_segments_are_sentences_with_word_times() -> None:
    words = _words([("Hi", 0.1, 0.4), ("there.", 0.4, 0.8), ("How", 1.0, 1.2), ("are", 1.2, 1.4),
                    ("you", 2.6, 2.9), ("today?", 2.9, 3.3)])
    segments = window_segments(5, 10.0, 14.0, "Hi there. How are you today?", 0.8, words)
    assert [s.id for s in segments] == [5, 6, 7]
    assert [s.text for s in segments] == ["Hi there.", "How are", "you today?"]  # sentence end; 1.2 s pause
    assert (segments[0].start, segments[0].end) == (10.1, 10.8) and segments[2].end == pytest.approx(13.3)
    assert segments[1].words[0].start == pytest.approx(11.0)  # window offset added
    assert window_segments(0, 1.0, 2.0, "x", None) == [Segment(0, 1.0, 2.0, "x", None)]


def _random_words(rng: random.Random, n: int) -> list[Word]:
    vocab = ["a", "the", "stew", "dinner,", "potatoes.", "extraordinarily", "why?", "mutton", "x" * 50, "I"]
    words, t = [], 0.0
    for _ in range(n):
        t += rng.choice([0.0, 0.0, 0.05, 0.3, 0.6, 1.0, 2.5])  # the silence before the word
        duration = rng.choice([0.1, 0.3, 0.6, 9.0 if rng.random() < 0.02 else 0.4])
        words.append(Word(" " + rng.choice(vocab), t, t + duration, 0.9))
        t += duration
    return words


def _check_word_cues(cues: list, words: list[Word], options: SubtitleOptions) -> None:
    texts = [w.word.strip() for w in words]
    k, previous_end = 0, 0.0
    for cue in cues:
        lines = cue.text.split("\n")
        assert len(lines) <= options.max_line_count
        assert all(len(line) <= options.max_line_width or " " not in line for line in lines)
        assert previous_end <= cue.start <= cue.end <= cue.start + options.max_cue_seconds + 1e-9
        cue_words = cue.text.split()
        assert texts[k: k + len(cue_words)] == cue_words  # every word once, in order
        group = words[k: k + len(cue_words)]
        assert all(b.start - a.end < options.max_silence_s for a, b in itertools.pairwise(group))
        assert cue.start >= group[0].start - 1e-9
        k, previous_end = k + len(cue_words), cue.end
    assert k == len(words)


@pytest.mark.parametrize("seed", range(30))
def test_word_cues_obey_width_lines_duration_pauses_order(seed: int) -> None:
    rng = random.Random(seed)
    words = _random_words(rng, rng.randint(1, 120))
    options = SubtitleOptions(max_line_width=rng.choice([16, 30, 42]), max_line_count=rng.choice([1, 2, 3]),
                              max_cue_seconds=rng.choice([2.0, 4.0, 7.0]))
    _check_word_cues(word_cues(words, options), words, options)


def test_word_cues_break_at_sentence_end_before_a_pause_and_at_silence() -> None:
    words = _words([("Yes,", 0.0, 0.3), ("he", 0.3, 0.5), ("said.", 0.5, 0.9), ("Then", 1.5, 1.8),
                    ("nothing", 1.8, 2.2), ("happened", 3.4, 3.9)])
    assert [c.text for c in word_cues(words)] == ["Yes, he said.", "Then nothing", "happened"]


def _word_transcript() -> Transcript:
    first = window_segments(0, 0.5, 9.0, "", 0.9, _words([
        ("He", 0.0, 0.3), ("hoped", 0.3, 0.7), ("there", 0.7, 0.9), ("would", 0.9, 1.1), ("be", 1.1, 1.2),
        ("stew", 1.2, 1.6), ("for", 1.6, 1.8), ("dinner,", 1.8, 2.3), ("turnips", 2.6, 3.1), ("and", 3.1, 3.3),
        ("carrots", 3.3, 3.8), ("and", 3.8, 4.0), ("bruised", 4.0, 4.5), ("potatoes.", 4.5, 5.2),
        ("Stuff", 6.4, 6.8), ("it", 6.8, 6.9), ("into", 6.9, 7.1), ("you", 7.1, 7.4)]))
    second = window_segments(len(first), 12.0, 14.0, "", 0.8, _words([("Later", 0.1, 0.5), ("<on>", 0.5, 0.9)]))
    return Transcript(first + second, duration=15.0)


def _vtt_seconds(stamp: str) -> float:
    hours, minutes, seconds = stamp.split(":")
    return 3600 * int(hours) + 60 * int(minutes) + float(seconds)


def test_srt_and_vtt_from_words_parse_and_agree(tmp_path: Path) -> None:
    t = _word_transcript()
    subs = list(srt.parse(format_srt(t)))
    path = tmp_path / "clip.vtt"
    path.write_text(format_vtt(t), encoding="utf-8")
    captions = webvtt.read(str(path)).captions
    cues = subtitle_cues(t)
    assert len(subs) == len(captions) == len(cues) >= 3
    for sub, cap, cue in zip(subs, captions, cues):
        assert sub.start.total_seconds() == pytest.approx(cue.start, abs=1e-3) == _vtt_seconds(cap.start)
        assert sub.end.total_seconds() == pytest.approx(cue.end, abs=1e-3) == _vtt_seconds(cap.end)
        assert sub.content == cue.text and cap.text.replace("&lt;", "<").replace("&gt;", ">") == cue.text
    assert subs[0].start.total_seconds() == pytest.approx(0.5)  # the first word's start, not the window's
    assert all(a.end <= b.start for a, b in itertools.pairwise(subs))
    assert any("potatoes." in s.content for s in subs)
    _check_word_cues(cues, [w for s in t.segments for w in s.words], SubtitleOptions())


def test_karaoke_underlines_each_word_in_turn() -> None:
    words = _words([("Hello", 1.0, 1.4), ("big", 1.6, 1.9), ("world.", 1.9, 2.5)])
    cues = karaoke(0.9, 2.5, "Hello big\nworld.", words)
    assert [(c.start, c.end) for c in cues] == [(0.9, 1.0), (1.0, 1.4), (1.4, 1.6), (1.6, 1.9), (1.9, 2.5)]
    assert [c.text for c in cues] == ["Hello big\nworld.", "<u>Hello</u> big\nworld.", "Hello big\nworld.",
                                      "Hello <u>big</u>\nworld.", "Hello big\n<u>world.</u>"]
    assert karaoke(0.0, 1.0, "two words", words[:1]) == [karaoke(0.0, 1.0, "two words", words[:1])[0]]  # plain


def test_highlighted_srt_and_vtt_parse_and_underline_every_word_once(tmp_path: Path) -> None:
    t = _word_transcript()
    options = SubtitleOptions(highlight_words=True)
    subs = list(srt.parse(format_srt(t, options)))
    path = tmp_path / "clip.vtt"
    path.write_text(format_vtt(t, options), encoding="utf-8")
    captions = webvtt.read(str(path)).captions
    words = [w.word.strip() for s in t.segments for w in s.words]
    for texts in ([s.content for s in subs], [c.raw_text for c in captions]):
        underlined = [x.split("<u>")[1].split("</u>")[0] for x in texts if "<u>" in x]
        assert [u.replace("&lt;", "<").replace("&gt;", ">") for u in underlined] == words
    assert all(a.end <= b.start for a, b in itertools.pairwise(subs))
    assert all(s.start < s.end for s in subs)
    assert "&lt;on&gt;" in format_vtt(t, options) and "<u>&lt;on&gt;</u>" in format_vtt(t, options)
    plain = subtitle_cues(t)
    assert subs[0].start.total_seconds() == pytest.approx(plain[0].start)
    assert subs[-1].end.total_seconds() == pytest.approx(plain[-1].end)


def test_json_and_tsv_with_words() -> None:
    t = _word_transcript()
    data = json.loads(format_json(t))
    seg = data["segments"][0]
    assert seg["text"] == "He hoped there would be stew for dinner, turnips and carrots and bruised potatoes."
    assert seg["words"][0] == {"word": " He", "start": 0.5, "end": 0.8, "probability": 0.9}
    assert seg["start"] == seg["words"][0]["start"] and seg["end"] == seg["words"][-1]["end"]
    rows = format_tsv(t).splitlines()
    assert rows[0] == "start\tend\ttext" and rows[1] == "500\t800\tHe"
    assert len(rows) == 1 + sum(len(s.words) for s in t.segments)


# -- real speech ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_word_times_on_joined_real_clips(weights_dir: Path, real_clips, one_thread) -> None:
    """Two LibriSpeech clips 2 s apart, one window: no word inside the silence, the second clip's
    first word within 0.3 s of where its speech starts (the clip opens with ~0.36 s of room noise:
    the onset is where the energy detector, 30 dB below the loud level, finds speech)."""
    from whisfusion_cli.asr import load_model
    from whisfusion_cli.audio import SAMPLE_RATE, load_audio
    from whisfusion_cli.segment import SegmentOptions, speech_regions

    a, b = (load_audio(path) for path, _ in real_clips[:2])
    audio = np.concatenate([a, np.zeros(2 * SAMPLE_RATE, np.float32), b])
    silence = (len(a) / SAMPLE_RATE, len(a) / SAMPLE_RATE + 2.0)
    onset = silence[1] + speech_regions(b, SegmentOptions(pad_s=0.0, threshold_db=-30.0))[0][0]
    model = load_model(weights_dir / "whisper-base", device="cpu")
    t = model.transcribe(audio, word_timestamps=True, segment_options=SegmentOptions(max_gap_s=5.0))
    words = [w for s in t.segments for w in s.words]
    assert "stew for dinner" in t.text.lower() and "stuff it into you" in t.text.lower()
    lo, hi = silence[0] + 0.2, silence[1] - 0.2
    assert not [w for w in words if w.end > lo and w.start < hi], "a word lies inside the silence"
    second = next(w for w in words if w.start >= silence[0])
    assert second.word.strip().strip('"').lower() == "stuff"
    assert abs(second.start - onset) <= 0.3
    assert all(x.start <= y.start for x, y in itertools.pairwise(words))
