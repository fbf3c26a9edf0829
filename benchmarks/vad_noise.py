"""CPU run: the energy rule against Silero VAD on real speech with noise and music mixed in (issue #20).

    python benchmarks/vad_noise.py [--out benchmarks/results/vad_cpu.json] [--n-clips 24]

Each of the first N dev-real clips gets 1 s of digital silence on either side, then white noise, pink
noise or a synthetic music-like signal (harmonic notes, a bass line and drum-like noise bursts) over
the whole, at several SNRs (against the clean clip's power inside its speech). Known speech: the
clean clip's onset to offset (word_timing.speech_bounds, 10 ms frames against its own noise floor).
Per detector (segment.speech_regions, unpadded, as the window cuts use it): 10 ms speech-frame
precision and recall pooled over the clips ("none": the clean clips; a detector's onsets and offsets
there against the reference are in "reference_check"). Then noise or music alone (10 s at several levels): how
much speech each detector finds there, and what the bundled model (fast preset) writes for it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from word_timing import FRAME_S, dev_real, speech_bounds

from whisfusion_cli import BUNDLED_MODEL
from whisfusion_cli.audio import SAMPLE_RATE
from whisfusion_cli.segment import SegmentOptions, speech_regions

SNRS_DB = (20, 10, 5, 0)
NOISE_ONLY_DBFS = (-50, -35, -20)
PAD_S = 1.0


def white(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n)


def pink(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f power: white noise shaped by 1/sqrt(f) in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    spectrum[1:] /= np.sqrt(f[1:] / f[1])
    spectrum[0] = 0
    return np.fft.irfft(spectrum, n)


def music(n: int, rng: np.random.Generator) -> np.ndarray:
    """Notes of a pentatonic scale (0.2-0.5 s, 6 harmonics, decaying), a bass note per 4 beats and a
    noise burst on each beat (120 bpm)."""
    t = np.arange(n) / SAMPLE_RATE
    out = np.zeros(n)
    scale = 440.0 * 2 ** (np.array([0, 2, 4, 7, 9, 12, 14, 16]) / 12)
    start = 0
    while start < n:
        length = int(rng.uniform(0.2, 0.5) * SAMPLE_RATE)
        f0, seg = rng.choice(scale), slice(start, min(start + length, n))
        tt = t[seg] - t[start]
        note = sum(np.sin(2 * np.pi * k * f0 * tt) / k for k in range(1, 7))
        out[seg] += note * np.exp(-3 * tt)
        start += length
    beat = int(0.5 * SAMPLE_RATE)
    for b in range(0, n, beat):
        seg = slice(b, min(b + beat, n))
        tt = t[seg] - t[b]
        if (b // beat) % 4 == 0:
            out[seg] += 0.8 * np.sin(2 * np.pi * rng.choice(scale / 4) * tt)
        burst = rng.standard_normal(len(tt)) * np.exp(-40 * tt)
        out[seg] += 0.5 * burst
    return out


NOISES = {"white": white, "pink": pink, "music": music}


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-20))


def mix(clean: np.ndarray, noise: np.ndarray, snr_db: float, speech: tuple[float, float]) -> np.ndarray:
    a, b = (round(t * SAMPLE_RATE) for t in speech)
    gain = rms(clean[a:b]) / rms(noise) / 10 ** (snr_db / 20)
    return (clean + gain * noise).astype(np.float32)


def frame_mask(regions: list[tuple[float, float]], n_frames: int) -> np.ndarray:
    mask = np.zeros(n_frames, bool)
    for a, b in regions:
        mask[round(a / FRAME_S): round(b / FRAME_S)] = True
    return mask


def scores(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Pooled speech-frame precision, recall and F1 of (found, known) masks."""
    tp = sum(int((f & k).sum()) for f, k in pairs)
    found = sum(int(f.sum()) for f, _ in pairs)
    known = sum(int(k.sum()) for _, k in pairs)
    p, r = tp / found if found else 0.0, tp / known if known else 0.0
    return {"precision": round(p, 3), "recall": round(r, 3), "f1": round(2 * p * r / (p + r) if p + r else 0.0, 3)}


def detect(audio: np.ndarray, vad: str) -> list[tuple[float, float]]:
    return speech_regions(audio, SegmentOptions(pad_s=0.0, vad=vad))


def mixed_rows(n_clips: int, vads: list[str], rng: np.random.Generator) -> list[dict]:
    pad = np.zeros(round(PAD_S * SAMPLE_RATE), np.float32)
    clips = []
    for _, audio in dev_real(n_clips):
        on, off = speech_bounds(audio)
        clips.append((np.concatenate([pad, audio, pad]), (on + PAD_S, off + PAD_S)))
    rows = []
    conditions = [("none", None)] + [(name, snr) for name in NOISES for snr in SNRS_DB]
    for name, snr in conditions:  # "none": the clean clips (their own room noise, digital silence padded)
        noisy = clips if snr is None else [(mix(x, NOISES[name](len(x), rng), snr, known), known)
                                           for x, known in clips]
        for vad in vads:
            pairs = []
            for x, known in noisy:
                n = len(x) // round(FRAME_S * SAMPLE_RATE)
                pairs.append((frame_mask(detect(x, vad), n), frame_mask([known], n)))
            rows.append({"noise": name, "snr_db": snr, "vad": vad, "clips": len(noisy), **scores(pairs)})
    return rows


def reference_check(n_clips: int, vads: list[str]) -> dict:
    """How far each detector's first onset and last offset on the clean clips lie from speech_bounds
    (seconds, signed: + is later): the reference is one rule, Silero an independent model."""
    out = {}
    clips = dev_real(n_clips)
    for vad in vads:
        on, off = [], []
        for _, audio in clips:
            found, (a, b) = detect(audio, vad), speech_bounds(audio)
            if found:
                on.append(found[0][0] - a)
                off.append(found[-1][1] - b)
        out[vad] = {f"{k}_{q}": round(float(np.percentile(x, p)), 3)
                    for k, x in (("onset", on), ("offset", off)) for q, p in (("median", 50), ("p90", 90))}
        out[vad]["abs_onset_median"] = round(float(np.median(np.abs(on))), 3)
    return out


def noise_only_rows(vads: list[str], rng: np.random.Generator, transcribe: bool) -> list[dict]:
    asr = None
    if transcribe:
        from whisfusion_cli.asr import load_model

        asr = load_model(BUNDLED_MODEL, device="cpu")
    n = 10 * SAMPLE_RATE
    rows = []
    for name in ("white", "music"):
        for level in NOISE_ONLY_DBFS:
            x = NOISES[name](n, rng)
            x = (x / rms(x) * 10 ** (level / 20)).astype(np.float32)
            for vad in vads:
                found = detect(x, vad)
                row = {"noise": name, "level_dbfs": level, "vad": vad,
                       "speech_s_found": round(sum(b - a for a, b in found), 2)}
                if asr is not None:
                    row["text"] = asr.transcribe(x, preset="fast", segment_options=SegmentOptions(vad=vad)).text
                rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vad_cpu.json")
    ap.add_argument("--n-clips", type=int, default=24)
    ap.add_argument("--no-transcribe", action="store_true", help="skip the bundled model on noise alone")
    args = ap.parse_args(argv)
    from whisfusion_cli import vad

    vads = ["energy"] + (["silero"] if vad.silero_available() else [])
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    mixed = mixed_rows(args.n_clips, vads, rng)
    alone = noise_only_rows(vads, rng, not args.no_transcribe)
    record = {"device": "cpu", "silero_vad": "silero" in vads, "seconds": round(time.perf_counter() - t0, 1),
              "reference_check": reference_check(args.n_clips, vads), "speech_with_noise": mixed,
              "noise_alone": alone}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    for r in mixed:
        print(f"{r['noise']:6} {r['snr_db']} dB {r['vad']:7} P {r['precision']:.3f} R {r['recall']:.3f} F1 {r['f1']:.3f}")
    for r in alone:
        print(f"{r['noise']:6} alone {r['level_dbfs']} dBFS {r['vad']:7} speech {r['speech_s_found']} s "
              f"text {r.get('text', '')!r}")


if __name__ == "__main__":
    main()
