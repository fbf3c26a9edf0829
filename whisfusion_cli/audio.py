"""Audio constants, media loading through ffmpeg, and Whisper's log-mel front end.

The log-mel follows openai-whisper `audio.py` (and Hugging Face's WhisperFeatureExtractor):
16 kHz, 25 ms Hann window (n_fft 400), 10 ms hop, Slaney-scale mel filters with Slaney
normalisation (librosa's defaults), log10 clamped to (max - 8), then (x + 4) / 4.
"""

from __future__ import annotations

import wave
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import AudioError

SAMPLE_RATE = 16000  # Hz
N_FFT = 400  # samples: 25 ms window
HOP_LENGTH = 160  # samples: 10 ms hop
CHUNK_LENGTH = 30  # seconds: the encoder's fixed window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
N_SAMPLES_PER_TOKEN = HOP_LENGTH * 2  # the encoder's conv stride 2: one state per 20 ms
N_AUDIO_CTX = N_SAMPLES // N_SAMPLES_PER_TOKEN  # 1500 encoder states per 30 s window
FRAME_MARGIN = 10  # encoder states (200 ms) kept past the audio's end
WAV_CHUNK_FRAMES = 1 << 20  # frames per read of a native WAV (~65 s at 16 kHz)


def audio_frames(n_samples: int, margin: int = FRAME_MARGIN) -> int:
    """Encoder states that cover `n_samples` of audio plus a margin: what the adapters attend to.

    Training (the feature cache) and decoding both trim the encoder output to this, so the
    decoder never sees the states of the zero padding that fills a window to 30 s.
    """
    return min(N_AUDIO_CTX, -(-n_samples // N_SAMPLES_PER_TOKEN) + margin)


def write_wav(path: Path, audio: np.ndarray) -> Path:
    """16 kHz mono 16-bit WAV (stdlib only), samples clipped to [-1, 1]."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())
    return path


def load_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decodes any media file ffmpeg reads (first audio stream) into mono float32 at `sr` Hz.

    A 16-bit PCM WAV already at `sr` Hz is read directly (no ffmpeg process; channels averaged).
    Otherwise the PCM is read from ffmpeg's pipe in chunks and converted into one float32 buffer
    sized from the container's duration, so a long file is not held in memory twice.

    Raises:
        AudioError: the file is missing, unreadable, or has no audio stream.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    audio = _read_pcm_wav(path, sr)
    return audio if audio is not None else _load_ffmpeg(path, sr)


def _read_pcm_wav(path: Path, sr: int) -> np.ndarray | None:
    """Mono float32 of a 16-bit PCM WAV at `sr` Hz via the stdlib; None for anything else (ffmpeg's job)."""
    try:
        with wave.open(str(path), "rb") as w:
            n_channels = w.getnchannels()
            if w.getsampwidth() != 2 or w.getframerate() != sr or w.getcomptype() != "NONE":
                return None
            out = np.empty(w.getnframes(), np.float32)
            n = 0
            while chunk := w.readframes(WAV_CHUNK_FRAMES):
                frames = np.frombuffer(chunk[: len(chunk) // (2 * n_channels) * 2 * n_channels], "<i2")
                frames = frames.reshape(-1, n_channels)  # (n, channels)
                mono = frames[:, 0] * np.float32(1 / 32768) if n_channels == 1 else \
                    frames.mean(1, dtype=np.float32) * np.float32(1 / 32768)
                if n + len(mono) > len(out):  # the header undercounted
                    out = np.resize(out, n + len(mono))
                out[n: n + len(mono)] = mono
                n += len(mono)
    except (wave.Error, EOFError, OSError, ValueError):  # not a plain PCM WAV, or damaged: ffmpeg decides
        return None
    return out[:n]


def _load_ffmpeg(path: Path, sr: int) -> np.ndarray:
    """Any media file through an ffmpeg process: first audio stream, mono, `sr` Hz, float32."""
    import ffmpeg  # ffmpeg-python: a thin, well-kept wrapper over the ffmpeg binary

    stream = (ffmpeg.input(str(path), threads=0)
              .output("-", format="s16le", acodec="pcm_s16le", ac=1, ar=sr, map="0:a:0", loglevel="error"))
    try:
        proc = stream.run_async(cmd=["ffmpeg", "-nostdin"], pipe_stdout=True, pipe_stderr=True)
    except FileNotFoundError:
        raise AudioError("ffmpeg is not installed (apt-get install ffmpeg / brew install ffmpeg)") from None
    buf = np.empty(int(_probe_duration(path) * sr) + sr, np.float32)
    n = 0
    while chunk := proc.stdout.read(1 << 20):
        samples = np.frombuffer(chunk[: len(chunk) // 2 * 2], np.int16)
        if n + len(samples) > len(buf):
            buf = np.resize(buf, max(2 * len(buf), n + len(samples)))
        buf[n: n + len(samples)] = samples * np.float32(1 / 32768)
        n += len(samples)
    stderr = proc.stderr.read().decode(errors="replace")
    if proc.wait() != 0:
        raise AudioError(f"{path}: {_ffmpeg_reason(stderr).removeprefix(f'{path}: ')}")
    return buf[:n].copy() if n < len(buf) // 2 else buf[:n]


def media_duration(path: str | Path) -> float | None:
    """Seconds of audio in a media file read from its header (nothing is decoded): a WAV's frame
    count, else the container's duration by ffprobe; None when unknown (no such file, no duration)."""
    try:
        with wave.open(str(path), "rb") as w:
            return w.getnframes() / w.getframerate()
    except (wave.Error, EOFError, OSError):
        pass
    return _probe_duration(Path(path)) or None


def _probe_duration(path: Path) -> float:
    """The container's duration in seconds (0 when unknown): a size hint for the sample buffer."""
    import ffmpeg

    try:
        return float(ffmpeg.probe(str(path))["format"].get("duration", 0.0))
    except (ffmpeg.Error, KeyError, ValueError, FileNotFoundError):
        return 0.0


def _ffmpeg_reason(stderr: str) -> str:
    """Turns ffmpeg's stderr into one line a user can act on."""
    if "matches no streams" in stderr or "does not contain any stream" in stderr:
        return "no audio stream"
    if "Invalid data found" in stderr or "could not find codec" in stderr.lower():
        return "not a media file ffmpeg can read"
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "ffmpeg failed"


def pad_or_trim(audio: torch.Tensor, length: int = N_SAMPLES) -> torch.Tensor:
    """Zero-pads or trims the last axis to `length` samples."""
    n = audio.shape[-1]
    if n > length:
        return audio[..., :length]
    return F.pad(audio, (0, length - n)) if n < length else audio


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa htk=False): linear below 1 kHz, logarithmic above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    f = np.asarray(f, np.float64)
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, f / f_sp)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    m = np.asarray(m, np.float64)
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=4)
def mel_filters(n_mels: int) -> np.ndarray:
    """Slaney mel filterbank (n_mels, 1 + N_FFT // 2), identical to librosa.filters.mel defaults."""
    fft_freqs = np.linspace(0, SAMPLE_RATE / 2, 1 + N_FFT // 2)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fft_freqs[None, :]  # (n_mels + 2, n_freqs)
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2:] - mel_f[:-2]))[:, None]  # Slaney area normalisation
    return weights.astype(np.float32)


def log_mel_spectrogram(audio: np.ndarray | torch.Tensor, n_mels: int = 80, pad: bool = True,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """Whisper's log-mel spectrogram.

    Args:
        audio: (n_samples,) or (B, n_samples) float32 at 16 kHz.
        n_mels: 80, or 128 for large-v3.
        pad: pad/trim to 30 s first, giving exactly N_FRAMES frames (the encoder's input).
        device: where to compute (default: the tensor's own device).

    Returns:
        (n_mels, n_frames) or (B, n_mels, n_frames) float32.
    """
    x = torch.as_tensor(audio, dtype=torch.float32)
    if device is not None:
        x = x.to(device)
    if pad:
        x = pad_or_trim(x)
    window = torch.hann_window(N_FFT, device=x.device)
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2  # drop the last frame, as Whisper does
    filters = torch.from_numpy(mel_filters(n_mels)).to(x.device)
    mel = filters @ magnitudes  # (..., n_mels, n_frames)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    peak = log_spec.amax(dim=(-2, -1), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0


def log_mel_windows(clips: list[np.ndarray], n_mels: int = 80,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """(B, n_mels, N_FRAMES) log-mel of B clips of at most 30 s, each zero-padded to 30 s."""
    audio = torch.zeros(len(clips), N_SAMPLES)
    for i, clip in enumerate(clips):
        audio[i, : len(clip)] = torch.from_numpy(np.asarray(clip[:N_SAMPLES], np.float32))
    return log_mel_spectrogram(audio, n_mels, pad=False, device=device)
