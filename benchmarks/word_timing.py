"""CPU run: word-timestamp error on speech whose boundaries are known (issue #20).

    python benchmarks/word_timing.py [--out benchmarks/results/word_timing_cpu.json] [--n-dev 8] [--n-synth 8]

Sets:
  librispeech-joined  the 4 shared LibriSpeech clips in one file, room noise (each clip's own floor level)
                      between them; known: each clip's speech onset and offset and the silences between.
                      +pink10, +music10: the same with pink noise or music (vad_noise.py's) 10 dB below the speech.
  dev-real-joined     the first N dev-real clips, 4 to a file, the same way.
  espeak              synthetic sentences (eSpeak NG, several voices and rates, -60 dBFS noise added),
                      4 to a file; known: every word's start and end (espeak_words.py).
Real clips have no per-word reference here, so their start/end errors are the clip onset and offset
errors: |first word's start - speech onset| and |last word's end - speech offset| of each clip. The
onset/offset reference (`speech_bounds`) is marked on the clean clip alone, a different rule from the
aligner's: 10 ms frames against the clip's own noise floor. "words_in_silence": words overlapping a
known silence of >= 0.3 s by more than its outer 0.1 s.

Systems: whisper-base (the AR baseline, greedy text) and the bundled model's presets (PDD text, aligned
by its rescorer, i.e. Whisper base's decoder); methods: `openai` (openai-whisper's: DTW over the
alignment heads and its sentence-mark rule, no silence rule), `energy` (timing.py's default: word edges
kept out of energy silences and moved onto them), `silero` (`--vad silero`: kept out of Silero's
silences too, if installed; the windows are the default energy cuts for every method, so only the
aligner's silences differ); plus the
`openai-whisper` package itself on the same whisper-base weights as a cross-check, if installed.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from espeak_words import Espeak

from whisfusion_cli import BUNDLED_MODEL, timing
from whisfusion_cli.asr import load_model
from whisfusion_cli.audio import SAMPLE_RATE, load_audio
from whisfusion_cli.segment import SegmentOptions, split_windows

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
WEIGHTS = Path.home() / ".cache" / "whisfusion-test-weights"
FRAME_S = 0.01  # speech_bounds' frame
FLOOR_PERCENTILE = 10.0  # a clip's noise floor: this percentile of its 10 ms frame levels
ONSET_DB = 12.0  # speech: frames this far above the floor (30 ms smoothed), in a run of >= MIN_RUN_S
MIN_RUN_S = 0.05
MIN_SILENCE_S = 0.3  # known silences shorter than this are not counted
EDGE_S = 0.1  # a word in a silence overlaps it by more than its outer EDGE_S
VOICES = ("en-us", "en", "en-us+f3", "en+m3", "en-us+m5", "en+f2")
RATES = (150, 175, 200)  # words per minute
NOISY_SNR_DB = 10.0  # the noisy copies of librispeech-joined


@dataclass(frozen=True)
class Joined:
    """A test file: its audio, the reference (word or clip) spans, and its known silences (seconds)."""

    name: str
    audio: np.ndarray
    spans: list[tuple[str, float, float]]  # (text, start, end): clips (real) or words (espeak)
    silences: list[tuple[float, float]]
    per_word: bool  # spans are words (espeak) rather than whole clips


def frame_db(audio: np.ndarray, frame_s: float = FRAME_S) -> np.ndarray:
    n = max(1, round(frame_s * SAMPLE_RATE))
    k = len(audio) // n
    return 10 * np.log10(np.mean(audio[: k * n].reshape(k, n).astype(np.float64) ** 2, 1) + 1e-12)


def speech_bounds(audio: np.ndarray) -> tuple[float, float]:
    """The clip's speech onset and offset (seconds): the first and last 30 ms-smoothed 10 ms frame at
    least ONSET_DB above the clip's noise floor, each in a run of at least MIN_RUN_S."""
    db = frame_db(audio)
    floor = np.percentile(db, FLOOR_PERCENTILE)
    smooth = 10 * np.log10(np.convolve(10 ** (db / 10), np.ones(3) / 3, mode="same"))
    loud = smooth > floor + ONSET_DB
    run = round(MIN_RUN_S / FRAME_S)
    ok = np.convolve(loud, np.ones(run), mode="valid") >= run  # ok[i]: frames i..i+run-1 all loud
    idx = np.flatnonzero(ok)
    if not len(idx):
        return 0.0, len(audio) / SAMPLE_RATE
    return idx[0] * FRAME_S, (idx[-1] + run) * FRAME_S


def noise_floor_rms(audio: np.ndarray) -> float:
    return float(10 ** (np.percentile(frame_db(audio), FLOOR_PERCENTILE) / 20))


def join_clips(name: str, clips: Sequence[tuple[str, np.ndarray]], gaps: Sequence[float],
               rng: np.random.Generator) -> Joined:
    """Clips with gaps[i] s of noise after clip i (white, at clip i's noise floor); spans: each clip's
    speech (speech_bounds); silences: from one clip's speech offset to the next one's onset."""
    parts, spans, t = [], [], 0.0
    for i, (text, audio) in enumerate(clips):
        on, off = speech_bounds(audio)
        spans.append((text, t + on, t + off))
        parts.append(audio)
        t += len(audio) / SAMPLE_RATE
        if i < len(clips) - 1:
            n = round(gaps[i] * SAMPLE_RATE)
            parts.append((rng.standard_normal(n) * noise_floor_rms(audio)).astype(np.float32))
            t += n / SAMPLE_RATE
    silences = [(a[2], b[1]) for a, b in itertools.pairwise(spans) if b[1] - a[2] >= MIN_SILENCE_S]
    return Joined(name, np.concatenate(parts), spans, silences, per_word=False)


def librispeech() -> list[tuple[str, np.ndarray]]:
    root = SHARED / "librispeech-sample" / "LibriSpeech"
    refs = dict(line.split(" ", 1) for f in sorted(root.glob("*/*/*/*.trans.txt")) for line in f.read_text().splitlines())
    return [(refs[f.stem], load_audio(f)) for f in sorted(root.glob("*/*/*/*.flac"))]


def dev_real(n: int) -> list[tuple[str, np.ndarray]]:
    root = SHARED / "dev-real"
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()][:n]
    return [(r["text"], load_audio(root / r["audio"])) for r in rows]


def with_noise(f: Joined, name: str, snr_db: float, rng: np.random.Generator) -> Joined:
    """The file with vad_noise.py's pink noise or music over all of it, `snr_db` below its speech."""
    from vad_noise import NOISES, mix

    known = (f.spans[0][1], f.spans[-1][2])
    return replace(f, name=f"{f.name.split('/')[0]}+{name}{snr_db:g}", audio=mix(f.audio, NOISES[name](len(f.audio), rng), snr_db, known))


def real_sets(n_dev: int, seed: int = 0) -> list[Joined]:
    rng = np.random.default_rng(seed)
    out = [join_clips("librispeech-joined", librispeech(), (1.0, 0.6, 2.0), rng)]
    out += [with_noise(out[0], name, NOISY_SNR_DB, rng) for name in ("pink", "music")]
    clips = dev_real(n_dev)
    for i in range(0, len(clips), 4):
        group = clips[i: i + 4]
        out.append(join_clips(f"dev-real-joined/{i // 4}", group, rng.uniform(0.5, 2.0, len(group)), rng))
    return out


def espeak_sets(n: int, seed: int = 0) -> list[Joined]:
    """n dev-real VCTK/ARCTIC sentences said by eSpeak NG, 4 to a file with 0.4-1.5 s pauses, -60 dBFS
    white noise over the whole file; known silences: the pauses and eSpeak's own >= 0.3 s pauses."""
    rows = [json.loads(line) for line in (SHARED / "dev-real" / "manifest.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in rows if r["text"] != r["text"].upper() and r["text"] != r["text"].lower()][:n]
    rng, engine, out = np.random.default_rng(seed), Espeak(), []
    for f in range(0, len(texts), 4):
        parts, spans, t = [], [], 0.0
        for i, text in enumerate(texts[f: f + 4]):
            k = f + i
            audio, words = engine.say(text, VOICES[k % len(VOICES)], RATES[k % len(RATES)])
            spans += [(w.word if w.scored else "", t + w.start, t + w.end) for w in words]  # "": not scored
            pause = np.zeros(round(rng.uniform(0.4, 1.5) * SAMPLE_RATE), np.float32)
            parts += [audio, pause]
            t += (len(audio) + len(pause)) / SAMPLE_RATE
        audio = np.concatenate(parts)
        audio = audio + (rng.standard_normal(len(audio)) * 10 ** (-60 / 20)).astype(np.float32)
        silences = [(a[2], b[1]) for a, b in itertools.pairwise(spans) if b[1] - a[2] >= MIN_SILENCE_S]
        out.append(Joined(f"espeak/{f // 4}", audio, spans, silences, per_word=True))
    return out


# -- systems ------------------------------------------------------------------------------------


def silero_silences() -> timing.SilenceFinder | None:
    """`--vad silero`'s silences (timing.silence_finder), or None without the silero-vad package."""
    from whisfusion_cli import vad

    return timing.silence_finder("silero") if vad.silero_available() else None


def aligned_words(asr, audio: np.ndarray, preset: str | None,
                  methods: dict[str, timing.SilenceFinder | None]) -> dict[str, list[tuple[str, float, float]]]:
    """The file transcribed once (windows as the CLI cuts them) and its words timed by each method."""
    windows = split_windows(audio, SegmentOptions())
    slices = [w.slice(audio) for w in windows]
    if asr.engine == "pdd":
        results = asr.decode_windows(slices, asr.options(preset))
        decoder, prompt = asr.rescorer.decoder, asr.rescorer.prompt
    else:
        results = asr.decode_windows(slices)
        decoder, prompt = asr.net.decoder, asr.prompt
    tok = asr.tokenizer
    ids = tok.encode_transcripts([r.text for r in results])
    with torch.inference_mode():
        xa = asr.encode(slices)
    out = {}
    for method, finder in methods.items():
        words = timing.word_timestamps(decoder, xa, prompt, tok.eos_id, ids, slices, tok.piece, finder)
        out[method] = [(x.word, w.start + x.start, w.start + x.end) for w, ws in zip(windows, words) for x in ws]
    return out


def openai_whisper_model(weights: Path):
    """openai-whisper's Whisper with the HF-layout whisper-base weights (key names mapped), or None."""
    try:
        import whisper
        from safetensors.torch import load_file
        from whisper.model import ModelDimensions, Whisper
    except ImportError:
        return None
    cfg = json.loads((weights / "config.json").read_text())
    dims = ModelDimensions(cfg["num_mel_bins"], cfg["max_source_positions"], cfg["d_model"],
                           cfg["encoder_attention_heads"], cfg["encoder_layers"], cfg["vocab_size"],
                           cfg["max_target_positions"], cfg["d_model"], cfg["decoder_attention_heads"],
                           cfg["decoder_layers"])
    subs = [(r"^model\.", ""), (r"\.layers\.", ".blocks."), (r"encoder\.embed_positions\.weight", "encoder.positional_embedding"),
            (r"decoder\.embed_positions\.weight", "decoder.positional_embedding"), (r"embed_tokens", "token_embedding"),
            (r"self_attn_layer_norm", "attn_ln"), (r"encoder_attn_layer_norm", "cross_attn_ln"),
            (r"final_layer_norm", "mlp_ln"), (r"self_attn\.", "attn."), (r"encoder_attn\.", "cross_attn."),
            (r"q_proj", "query"), (r"k_proj", "key"), (r"v_proj", "value"), (r"out_proj", "out"),
            (r"fc1", "mlp.0"), (r"fc2", "mlp.2"), (r"encoder\.layer_norm", "encoder.ln_post"),
            (r"decoder\.layer_norm", "decoder.ln")]
    state = {}
    for key, value in load_file(weights / "model.safetensors").items():
        for a, b in subs:
            key = re.sub(a, b, key)
        state[key] = value.float()
    model = Whisper(dims)
    model.load_state_dict(state)
    model.set_alignment_heads(whisper._ALIGNMENT_HEADS["base"])
    return model.eval()


def openai_whisper_words(model, audio: np.ndarray) -> list[tuple[str, float, float]]:
    import whisper

    result = whisper.transcribe(model, audio, word_timestamps=True, language="en", fp16=False, temperature=0.0)
    return [(w["word"], float(w["start"]), float(w["end"])) for s in result["segments"] for w in s["words"]]


# -- errors ---------------------------------------------------------------------------------------


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def in_silence(words: Sequence[tuple[str, float, float]], silences: Sequence[tuple[float, float]]) -> int:
    """Words overlapping a known silence by more than its outer EDGE_S."""
    return sum(any(e > a + EDGE_S and s < b - EDGE_S for a, b in silences if b - a > 2 * EDGE_S)
               for _, s, e in words)


def clip_errors(words: Sequence[tuple[str, float, float]], spans: Sequence[tuple[str, float, float]]
                ) -> tuple[list[float], list[float]]:
    """Signed onset and offset errors per clip: its words are those whose middle is nearer its span
    than any other clip's (the gaps split at their middle)."""
    cuts = [(a[2] + b[1]) / 2 for a, b in itertools.pairwise(spans)]
    starts, ends = [], []
    for k, (_, on, off) in enumerate(spans):
        lo, hi = (cuts[k - 1] if k else -np.inf), (cuts[k] if k < len(cuts) else np.inf)
        mine = [w for w in words if lo <= (w[1] + w[2]) / 2 < hi]
        if mine:
            starts.append(mine[0][1] - on)
            ends.append(mine[-1][2] - off)
    return starts, ends


def word_errors(words: Sequence[tuple[str, float, float]], spans: Sequence[tuple[str, float, float]]
                ) -> tuple[list[float], list[float]]:
    """Signed start and end errors of the hypothesis words that match a reference word (difflib's
    matching blocks over normalised words)."""
    hyp, ref = [_norm(w[0]) for w in words], [_norm(w[0]) or None for w in spans]  # None matches nothing
    starts, ends = [], []
    for block in difflib.SequenceMatcher(None, hyp, ref, autojunk=False).get_matching_blocks():
        for i in range(block.size):
            h, r = words[block.a + i], spans[block.b + i]
            starts.append(h[1] - r[1])
            ends.append(h[2] - r[2])
    return starts, ends


def row(set_name: str, system: str, method: str, files: Sequence[Joined],
        words: Sequence[list[tuple[str, float, float]]]) -> dict:
    starts, ends, n_words, quiet = [], [], 0, 0
    for f, w in zip(files, words):
        s, e = (word_errors if f.per_word else clip_errors)(w, f.spans)
        starts += s
        ends += e
        n_words += len(w)
        quiet += in_silence(w, f.silences)
    a, b = np.abs(starts), np.abs(ends)
    stat = lambda x, q: round(float(np.percentile(x, q)), 3) if len(x) else None
    return {"set": set_name, "system": system, "method": method,
            "median_start_err": stat(a, 50), "p90_start_err": stat(a, 90),
            "median_end_err": stat(b, 50), "p90_end_err": stat(b, 90),
            "words": n_words, "words_in_silence": quiet, "measured": len(a),
            "median_start_bias": stat(np.array(starts), 50), "median_end_bias": stat(np.array(ends), 50)}


def systems(presets: Sequence[str]) -> list[tuple[str, object, str | None]]:
    """(name, ASR model, preset): whisper-base, then the bundled model per preset (one model loaded)."""
    ar = load_model(WEIGHTS / "whisper-base", device="cpu")
    pdd = load_model(BUNDLED_MODEL, device="cpu")
    return [("whisper-base", ar, None)] + [(f"whisfusion-{p}", pdd, p) for p in presets]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "word_timing_cpu.json")
    ap.add_argument("--n-dev", type=int, default=8, help="dev-real clips (4 to a joined file)")
    ap.add_argument("--n-synth", type=int, default=8, help="eSpeak sentences (4 to a file)")
    ap.add_argument("--presets", default="fast,balanced,accurate")
    ap.add_argument("--no-openai-whisper", action="store_true")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    files = real_sets(args.n_dev) + espeak_sets(args.n_synth)
    by_set: dict[str, list[Joined]] = {}
    for f in files:
        by_set.setdefault(f.name.split("/")[0], []).append(f)
    methods: dict[str, timing.SilenceFinder | None] = {"openai": None, "energy": timing.silences}
    if (silero := silero_silences()) is not None:
        methods["silero"] = silero
    rows, seconds = [], {}
    for name, asr, preset in systems([p for p in args.presets.split(",") if p]):
        t0 = time.perf_counter()
        timed = [aligned_words(asr, f.audio, preset, methods) for f in files]
        seconds[name] = round(time.perf_counter() - t0, 1)
        for set_name, group in by_set.items():
            idx = [files.index(f) for f in group]
            rows += [row(set_name, name, m, group, [timed[i][m] for i in idx]) for m in methods]
        print(name, seconds[name], "s", file=sys.stderr)
    model = None if args.no_openai_whisper else openai_whisper_model(WEIGHTS / "whisper-base")
    if model is not None:
        t0 = time.perf_counter()
        timed = [openai_whisper_words(model, f.audio) for f in files]
        seconds["openai-whisper"] = round(time.perf_counter() - t0, 1)
        for set_name, group in by_set.items():
            rows.append(row(set_name, "openai-whisper (package)", "openai", group,
                            [timed[files.index(f)] for f in group]))
    audio_s = {k: round(sum(len(f.audio) for f in g) / SAMPLE_RATE, 1) for k, g in by_set.items()}
    record = {"device": "cpu", "threads": torch.get_num_threads(), "audio_s": audio_s, "files": len(files),
              "seconds": seconds, "openai_whisper_package": model is not None,
              "silero_vad": "silero" in methods, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    for r in rows:
        print(f"{r['set']:20} {r['system']:26} {r['method']:7} start {r['median_start_err']}/{r['p90_start_err']} "
              f"end {r['median_end_err']}/{r['p90_end_err']} n={r['measured']} in_silence={r['words_in_silence']}")


if __name__ == "__main__":
    main()
