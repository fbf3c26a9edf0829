"""Audio augmentation for synthetic speech (numpy only, deterministic from a seed).

A chain is a list of steps, e.g. `[{"op": "speed", "factor": 1.06}, {"op": "noise", "snr_db": 12.0,
"color": "pink", "seed": 7}]`: `sample_chain(rng)` draws one (each step with its probability),
`apply_chain(audio, chain)` runs it, and the manifest row records it, so every clip can be rebuilt.

Steps (order of a sampled chain; probabilities in CHAIN_PROBS):
  speed      resample-based speed change (tempo and pitch move together, Kaldi-style 0.9-1.1)
  pitch      pitch shift in semitones: resample, then WSOLA time-stretch back to the length
  reverb     synthetic room: direct path + exponentially decaying noise tail (RT60, DRR)
  noise      white / pink / brown noise at an SNR (dB) against the clip's mean power
  telephone  300-3400 Hz band-pass, 8 kHz round trip with G.711 mu-law, band-pass again
  gain       level change in dB; then `apply_chain` scales down any peak above PEAK_LIMIT
Resampling is FFT-based (band-limited, exact length), fine for TTS clips that start and end in
silence, since the FFT treats the clip as periodic.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000  # Hz
PEAK_LIMIT = 0.99  # full scale = 1.0
INPUT_PEAK = 0.5  # clips are peak-normalised to this before the chain
TELEPHONE_BAND = (300.0, 3400.0)  # Hz
CHAIN_PROBS = {"speed": 0.5, "pitch": 0.25, "reverb": 0.25, "noise": 0.4, "telephone": 0.08, "gain": 1.0}


def resample(x: np.ndarray, sr_in: float, sr_out: float) -> np.ndarray:
    """Band-limited resampling of a 1-D signal through its spectrum (rfft, cut or pad, irfft)."""
    n_in = len(x)
    n_out = max(1, round(n_in * sr_out / sr_in))
    if n_out == n_in or n_in < 2:
        return x.astype(np.float32, copy=True)
    spec = np.fft.rfft(x.astype(np.float64))
    k = n_out // 2 + 1
    out = np.zeros(k, np.complex128)
    m = min(k, len(spec))
    out[:m] = spec[:m]
    if n_out < n_in and n_out % 2 == 0:  # the new Nyquist bin holds the sum of the folded pair
        out[k - 1] = out[k - 1].real
    return (np.fft.irfft(out, n_out) * (n_out / n_in)).astype(np.float32)


def speed(x: np.ndarray, factor: float) -> np.ndarray:
    """Plays the clip `factor` times faster (shorter, higher) by resampling."""
    return resample(x, SAMPLE_RATE * factor, SAMPLE_RATE)


def time_stretch(x: np.ndarray, rate: float, frame_ms: float = 30.0) -> np.ndarray:
    """WSOLA: `rate` times faster at the same pitch (Verhelst & Roelands 1993).

    Each output frame (50% overlap, Hann) is the input frame near its nominal position that best
    continues the previous one (max cross-correlation within +- half a hop).
    """
    win = int(SAMPLE_RATE * frame_ms / 1000)
    hop = win // 2
    tol = hop // 2
    n_out = round(len(x) / rate)
    n_frames = max(1, (n_out - win) // hop + 2)
    pad = np.concatenate([np.zeros(tol, np.float32), x.astype(np.float32), np.zeros(win + 2 * tol + hop, np.float32)])
    window = np.hanning(win).astype(np.float32)
    out = np.zeros(n_frames * hop + win, np.float32)
    norm = np.zeros_like(out)
    prev = tol  # input position (in pad) of the previous chosen frame
    for k in range(n_frames):
        nominal = tol + round(k * hop * rate)
        lo = max(0, nominal - tol)
        if k == 0:
            pos = nominal
        else:
            target = pad[prev + hop: prev + hop + win]  # the natural continuation, shape (win,)
            region = pad[lo: nominal + tol + win]
            corr = np.correlate(region, target, mode="valid")  # (n_candidates,)
            pos = lo + int(np.argmax(corr))
        out[k * hop: k * hop + win] += pad[pos: pos + win] * window
        norm[k * hop: k * hop + win] += window
        prev = pos
    return (out / np.maximum(norm, 1e-3))[:n_out]


def pitch_shift(x: np.ndarray, semitones: float) -> np.ndarray:
    """Raises the pitch by `semitones` at the same duration (resample, then WSOLA back)."""
    ratio = 2.0 ** (semitones / 12.0)
    return time_stretch(speed(x, ratio), 1.0 / ratio)[: len(x)]


def colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-power white, pink (1/f power) or brown (1/f^2 power) noise of n samples."""
    white = rng.standard_normal(n)
    if color != "white":
        spec = np.fft.rfft(white)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = f[1] if len(f) > 1 else 1.0
        spec /= np.sqrt(f) if color == "pink" else f
        white = np.fft.irfft(spec, n)
    white -= white.mean()
    return (white / max(np.sqrt(np.mean(white**2)), 1e-12)).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, color: str, seed: int) -> np.ndarray:
    """Adds noise scaled so that 10 log10(mean(x^2) / mean(noise^2)) equals `snr_db` exactly."""
    power = float(np.mean(x.astype(np.float64) ** 2))
    if power == 0.0:
        return x.copy()
    noise = colored_noise(len(x), color, np.random.default_rng(seed))
    return (x + noise * np.sqrt(power / 10 ** (snr_db / 10))).astype(np.float32)


def reverb(x: np.ndarray, rt60: float, drr_db: float, seed: int) -> np.ndarray:
    """Convolves with a synthetic room response: a unit direct path plus a noise tail decaying by
    60 dB in `rt60` s, whose energy sits `drr_db` below the direct path. Keeps length and RMS."""
    rng = np.random.default_rng(seed)
    n = int(min(rt60, 1.0) * SAMPLE_RATE)
    t = np.arange(1, n) / SAMPLE_RATE
    tail = rng.standard_normal(n - 1) * np.exp(-6.91 * t / rt60)  # 6.91 = ln(1000): -60 dB at rt60
    tail *= np.sqrt(10 ** (-drr_db / 10) / max(np.sum(tail**2), 1e-12))
    ir = np.concatenate([[1.0], tail])
    size = 1 << int(np.ceil(np.log2(len(x) + n)))
    wet = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[: len(x)]
    rms_in, rms_out = np.sqrt(np.mean(x.astype(np.float64) ** 2)), np.sqrt(np.mean(wet**2))
    return (wet * (rms_in / rms_out if rms_out > 0 else 1.0)).astype(np.float32)


def band_pass(x: np.ndarray, lo: float, hi: float, sr: int = SAMPLE_RATE, taper: float = 50.0) -> np.ndarray:
    """Zero-phase FFT band-pass: nothing outside [lo, hi] Hz, raised-cosine edges `taper` Hz wide
    inside the band."""
    spec = np.fft.rfft(x.astype(np.float64))
    f = np.fft.rfftfreq(len(x), 1.0 / sr)
    gain = np.clip(np.minimum((f - lo) / taper, (hi - f) / taper), 0.0, 1.0)
    gain = 0.5 - 0.5 * np.cos(np.pi * gain)
    return np.fft.irfft(spec * gain, len(x)).astype(np.float32)


def mu_law(x: np.ndarray, mu: int = 255) -> np.ndarray:
    """G.711-style 8-bit mu-law encode and decode (the quantisation a phone line adds)."""
    y = np.sign(x) * np.log1p(mu * np.minimum(np.abs(x), 1.0)) / np.log1p(mu)
    y = np.round((y + 1) / 2 * mu) / mu * 2 - 1
    return (np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu).astype(np.float32)


def telephone(x: np.ndarray) -> np.ndarray:
    """Narrow-band phone channel: band-pass, 8 kHz mu-law round trip, band-pass."""
    lo, hi = TELEPHONE_BAND
    narrow = resample(band_pass(x, lo, hi), SAMPLE_RATE, 8000)
    return band_pass(resample(mu_law(narrow), 8000, SAMPLE_RATE)[: len(x)], lo, hi)


def gain(x: np.ndarray, db: float) -> np.ndarray:
    return (x * np.float32(10 ** (db / 20))).astype(np.float32)


def sample_chain(rng: np.random.Generator, probs: dict[str, float] = CHAIN_PROBS) -> list[dict]:
    """Draws one augmentation chain. Every draw is made whatever the outcome, so the draws of
    later steps do not depend on which earlier steps fired."""
    draws = {
        "speed": {"factor": round(float(rng.uniform(0.9, 1.1)), 3)},
        "pitch": {"semitones": round(float(rng.uniform(-2.0, 2.0)), 2)},
        "reverb": {"rt60": round(float(rng.uniform(0.2, 0.8)), 3), "drr_db": round(float(rng.uniform(3.0, 15.0)), 1),
                   "seed": int(rng.integers(2**31))},
        "noise": {"snr_db": round(float(rng.uniform(5.0, 30.0)), 1),
                  "color": str(rng.choice(["white", "pink", "brown"])), "seed": int(rng.integers(2**31))},
        "telephone": {},
        "gain": {"db": round(float(rng.uniform(-12.0, 3.0)), 1)},
    }
    fire = rng.random(len(draws))
    return [{"op": op, **params} for (op, params), u in zip(draws.items(), fire) if u < probs.get(op, 0.0)]


_OPS = {
    "speed": lambda x, s: speed(x, s["factor"]),
    "pitch": lambda x, s: pitch_shift(x, s["semitones"]),
    "reverb": lambda x, s: reverb(x, s["rt60"], s["drr_db"], s["seed"]),
    "noise": lambda x, s: add_noise(x, s["snr_db"], s["color"], s["seed"]),
    "telephone": lambda x, s: telephone(x),
    "gain": lambda x, s: gain(x, s["db"]),
}


def apply_chain(x: np.ndarray, chain: list[dict]) -> np.ndarray:
    """Peak-normalises to INPUT_PEAK, runs the chain in order, scales any peak down to PEAK_LIMIT."""
    x = x.astype(np.float32)
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak > 0:
        x = x * np.float32(INPUT_PEAK / peak)
    for step in chain:
        x = _OPS[step["op"]](x, step)
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    return x * np.float32(PEAK_LIMIT / peak) if peak > PEAK_LIMIT else x
