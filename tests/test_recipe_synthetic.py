"""recipes/synthetic: text selection, augmentation, and a tiny end-to-end synthesis run.

The end-to-end test needs espeak-ng or flite (Debian: `apt-get install espeak-ng flite`) and ffmpeg;
it skips with the reason when neither engine is installed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "synthetic"
sys.path.insert(0, str(RECIPE))

import augment
import texts

SR = augment.SAMPLE_RATE
BOOKS = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "books.txt.xz"

PARAGRAPHS = [
    '"My dear Mr. Bennet," said his lady to him one day, "have you heard that the park is let at last?"',
    ("Mr. Bennet replied that he had not. He could wait no longer. For a full hour he had paced up and "
     "down, waiting, but now he heard the voices of the travellers on the road below the old stone wall."),
    ("The morning was clear and cold; the river ran high after the rain, and the boats lay drawn up on "
     "the bank — every one of them painted a different colour, as the custom was in that valley. "
     "Nobody in the village could remember a spring so late, nor a summer so short, nor a harvest so poor."),
    "It was the 3rd of May when the letter came. She read it twice, folded it, and put it in her pocket.",
]


def _book_file(tmp: Path, n_books: int = 3, copies: int = 3) -> Path:
    """A tiny books file (one paragraph per line) with a SOURCES.md table of line ranges beside it."""
    lines, rows = [], []
    for b in range(n_books):
        first = len(lines) + 1
        lines += [p.replace("Bennet", f"Bennet{'x' * b}") for p in PARAGRAPHS * copies]
        rows.append(f"| {b + 1} | Book {b + 1} | Author | 1 | repo | `path` | {first}–{len(lines)} | 9 | 9 |")
    (tmp / "books.txt").write_text("\n".join(lines) + "\n")
    (tmp / "SOURCES.md").write_text("| # | title | author | PG # | repo | path | lines | paragraphs | bytes |\n"
                                    "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    return tmp / "books.txt"


# ---- texts -----------------------------------------------------------------------------------

def test_overlap_filter_drops_utterance_copied_from_eval_transcript(tmp_path, librispeech):
    trans = min(librispeech.glob("*/*/*/*.trans.txt"))
    ref = trans.read_text().splitlines()[0].partition(" ")[2]
    copied = ref.capitalize().replace(" ", ", ", 1) + "."  # cased and punctuated as a book would be
    (tmp_path / "evalset").mkdir()
    shutil.copy(trans, tmp_path / "evalset")
    grams = texts.eval_ngrams([tmp_path / "evalset"])
    assert texts.overlaps(copied, grams) and not texts.overlaps(PARAGRAPHS[2], grams)
    lines = PARAGRAPHS + [copied]
    books = [texts.Book(0, "t", 1, len(lines))]
    kept, dropped = texts.utterances(lines, books, seed=0, grams=grams)
    assert dropped >= 1
    assert not any(texts.overlaps(u.text, grams) for u in kept)
    everything, none_dropped = texts.utterances(lines, books, seed=0, grams=set())
    assert none_dropped == 0 and len(everything) > len(kept)


def test_heldout_books_are_a_deterministic_two_percent():
    a = texts.heldout_books(100, seed=0)
    assert a == texts.heldout_books(100, seed=0) and len(a) == 2 and all(0 <= i < 100 for i in a)
    assert any(texts.heldout_books(100, seed=s) != a for s in range(1, 5))
    assert len(texts.heldout_books(3, seed=0)) == 1


def test_clean_and_sentence_split():
    assert texts.clean("Caf\u00e9 \u00e6sthetics \u2014 fine.") == "Cafe aesthetics \u2014 fine."
    assert texts.clean("He paid $5 for it.") is None and texts.clean("See p30.jpg here.") is None
    assert texts.clean("It was 1810.") == "It was 1810."  # digits are spoken as numbers: kept
    assert texts.split_sentences('"Mr. Bennet came." She left. G. K. Chesterton wrote it.') == [
        '"Mr. Bennet came."', "She left.", "G. K. Chesterton wrote it."]


def test_written_form_unbrackets_asides_and_modernises_to_morrow():
    # Whisper's normaliser deletes words in parentheses: a spoken aside would count as inserted words
    assert texts.written("in her passion (which, at last, made her judge) the unease.") == \
        "in her passion \u2014 which, at last, made her judge \u2014 the unease."
    assert texts.written("people (it was his trade), and (He was tired.) She left.") == \
        "people \u2014 it was his trade, and \u2014 He was tired. She left."
    assert texts.written('"(Never!)" he said; see you to-morrow, To-night.') == '"Never!" he said; see you tomorrow, Tonight.'
    assert texts.written("plain \u2014 dashes . . . stay, as does a cut (aside") == "plain \u2014 dashes . . . stay, as does a cut aside"
    assert texts.written("To-day (at noon)") == "Today \u2014 at noon"


def test_length_distribution_reaches_long_clips():
    if not BOOKS.is_file():
        pytest.skip(f"{BOOKS} missing")
    lines = texts.read_lines(BOOKS)
    book = texts.read_book_ranges(BOOKS.parent / "SOURCES.md")[0]
    utts, _ = texts.utterances(lines, [book], seed=0)
    est = np.array([u.est_seconds for u in utts])
    words = np.array([u.n_words for u in utts])
    assert words.min() >= 1 and words.max() <= texts.MAX_WORDS
    assert (est >= 20).mean() > 0.1  # plenty of 20-30 s clips
    hist, _ = np.histogram(est, bins=[2, 6, 10, 14, 18, 22])
    assert hist.min() > 0.1 * len(est)  # roughly uniform, not piled on one sentence length
    text = " ".join(u.text for u in utts[:50])
    assert "Bennet" in text and "," in text  # cased and punctuated as in the book


# ---- augmentation ------------------------------------------------------------------------------

def _speechlike(seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)  # syllable-rate envelope
    return (0.3 * env * (np.sin(2 * np.pi * 150 * t) + 0.5 * np.sin(2 * np.pi * 1200 * t))).astype(np.float32)


@pytest.mark.parametrize("color", ["white", "pink", "brown"])
@pytest.mark.parametrize("snr", [5.0, 17.5, 30.0])
def test_noise_snr_matches_request(color, snr):
    x = _speechlike()
    y = augment.add_noise(x, snr, color, seed=3)
    measured = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((y - x).astype(np.float64) ** 2))
    assert abs(measured - snr) < 1.0


def test_telephone_band_removes_out_of_band_energy():
    x = np.random.default_rng(0).standard_normal(SR * 2).astype(np.float32) * 0.1
    power = np.abs(np.fft.rfft(augment.telephone(x))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    assert power[f < 300].sum() < 1e-4 * power.sum()
    assert power[f > 3400].sum() < 1e-4 * power.sum()
    assert power[(f > 500) & (f < 3000)].sum() > 0.5 * power.sum()


def test_chain_is_deterministic_for_a_seed():
    x = _speechlike()
    chains = [augment.sample_chain(np.random.default_rng(s)) for s in (7, 7, 8)]
    assert chains[0] == chains[1] != chains[2]
    every_op = [{"op": "speed", "factor": 1.07}, {"op": "pitch", "semitones": 1.5},
                {"op": "reverb", "rt60": 0.4, "drr_db": 6.0, "seed": 1},
                {"op": "noise", "snr_db": 12.0, "color": "pink", "seed": 2}, {"op": "telephone"},
                {"op": "gain", "db": -6.0}]
    a, b = augment.apply_chain(x, every_op), augment.apply_chain(x, every_op)
    assert np.array_equal(a, b) and np.abs(a).max() <= augment.PEAK_LIMIT
    assert not np.array_equal(a, augment.apply_chain(x, every_op[:3]))


def test_speed_and_pitch_move_what_they_should():
    t = np.arange(SR * 2) / SR
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)

    def peak_hz(y: np.ndarray) -> float:
        return float(np.argmax(np.abs(np.fft.rfft(y * np.hanning(len(y))))) * SR / len(y))

    fast = augment.speed(tone, 1.1)
    assert abs(len(fast) - len(tone) / 1.1) <= 1 and abs(peak_hz(fast) - 242) < 2
    up = augment.pitch_shift(tone, 2.0)
    assert len(up) == len(tone) and abs(peak_hz(up) - 220 * 2 ** (2 / 12)) < 2


# ---- end to end --------------------------------------------------------------------------------

def _manifest_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_make_dataset_end_to_end_tiny(tmp_path):
    engines = [e for e in ("espeak-ng", "flite") if shutil.which(e)]
    if not engines:
        pytest.skip("no TTS engine: apt-get install espeak-ng flite")
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg missing (FLAC output and load_audio need it)")
    import make_dataset

    from whisfusion_cli.audio import load_audio
    from whisfusion_cli.data import read_manifest

    books = _book_file(tmp_path)
    common = ["--books", str(books), "--hours", "0.02", "--val-hours", "0.004", "--test-hours", "0.004",
              "--seed", "3", "--voices", *engines]
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        runs[workers] = make_dataset.main([*common, "--out", str(out), "--workers", str(workers)])
    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    for name in ("train.jsonl", "val.jsonl", "test_voices.jsonl"):
        assert (out1 / name).read_text() == (out2 / name).read_text()  # worker count changes nothing
    train = _manifest_rows(out1 / "train.jsonl")
    val = _manifest_rows(out1 / "val.jsonl")
    assert 6 <= len(train) + len(val) <= 20 and len(val) >= 1
    held = {v.id for v in make_dataset.tts.VOICES if v.held_out}
    assert not held & {r["voice"] for r in train + val}
    test_rows = _manifest_rows(out1 / "test_voices.jsonl")
    if "flite" in engines:  # flite awb is a held-out voice
        assert test_rows and {r["voice"] for r in test_rows} <= held
    train_books = {r["book"] for r in train}
    assert train_books.isdisjoint({r["book"] for r in val + test_rows})  # held-out text
    for name in ("train.jsonl", "val.jsonl"):
        examples, skipped = read_manifest(out1 / name)
        assert not skipped and len(examples) == len(_manifest_rows(out1 / name))
        for ex in examples:
            audio = load_audio(ex.audio)
            assert abs(len(audio) / SR - ex.duration) <= 0.05 and 0.3 <= ex.duration <= 30
            assert np.abs(audio).max() > 0.01
    for row in train:
        assert (out1 / row["audio"]).read_bytes() == (out2 / row["audio"]).read_bytes()
        assert isinstance(row["aug"], list) and row["engine"] in engines
    again = make_dataset.main([*common, "--out", str(out1), "--workers", "2"])  # resume: nothing to do
    assert again["synthesised_audio_s"] == 0 and again["splits"] == runs[1]["splits"]
