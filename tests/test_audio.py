import numpy as np
import pytest
import torch

from whisfusion_cli.audio import N_FRAMES, SAMPLE_RATE, load_audio, log_mel_spectrogram, mel_filters, pad_or_trim
from whisfusion_cli.errors import AudioError


def test_mel_filters_match_transformers():
    transformers = pytest.importorskip("transformers")
    for n_mels in (80, 128):
        ref = transformers.WhisperFeatureExtractor(feature_size=n_mels).mel_filters.T
        assert np.abs(ref - mel_filters(n_mels)).max() < 1e-6


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_transformers_on_real_audio(real_clips, n_mels):
    transformers = pytest.importorskip("transformers")
    fe = transformers.WhisperFeatureExtractor(feature_size=n_mels)
    for path, _ in real_clips[:2]:
        audio = load_audio(path)
        ref = fe(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
        ours = log_mel_spectrogram(audio, n_mels).numpy()
        assert ours.shape == (n_mels, N_FRAMES)
        assert np.abs(ref - ours).max() < 1e-3


def test_log_mel_batched_equals_single(real_clips):
    a = load_audio(real_clips[0][0])
    b = load_audio(real_clips[2][0])
    batch = log_mel_spectrogram(torch.stack([pad_or_trim(torch.from_numpy(a)), pad_or_trim(torch.from_numpy(b))]))
    assert torch.allclose(batch[1], log_mel_spectrogram(b), atol=1e-5)
    assert batch.shape == (2, 80, N_FRAMES)


def test_load_audio_real_flac(real_clips):
    audio = load_audio(real_clips[2][0])
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.5 < len(audio) / SAMPLE_RATE < 35 and 0.01 < np.abs(audio).max() <= 1.0


def test_load_audio_errors(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"this is not audio at all" * 100)
    with pytest.raises(AudioError):
        load_audio(junk)


def _write_wav(path, samples: np.ndarray, rate: int) -> None:
    """int16 samples (n,) or (n, channels) as a PCM WAV."""
    import wave

    frames = samples.reshape(len(samples), -1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(frames.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames.astype("<i2").tobytes())


@pytest.mark.parametrize("channels", [1, 2])
def test_pcm_wav_is_read_without_ffmpeg_and_matches_it(tmp_path, monkeypatch, channels):
    from whisfusion_cli import audio as audio_mod

    rng = np.random.default_rng(channels)
    samples = (rng.standard_normal((SAMPLE_RATE * 3 + 17, channels)) * 6000).clip(-32768, 32767).astype(np.int16)
    path = tmp_path / "clip.wav"
    _write_wav(path, samples, SAMPLE_RATE)
    via_ffmpeg = audio_mod._load_ffmpeg(path, SAMPLE_RATE)

    def no_ffmpeg(*_):
        raise AssertionError("ffmpeg was called for a 16 kHz PCM WAV")

    monkeypatch.setattr(audio_mod, "_load_ffmpeg", no_ffmpeg)
    native = load_audio(path)
    assert native.dtype == np.float32 and native.shape == via_ffmpeg.shape == (len(samples),)
    assert np.abs(native - via_ffmpeg).max() < 1e-4


def test_wav_at_another_rate_goes_through_ffmpeg(tmp_path):
    rate = 44100
    t = np.arange(rate * 2) / rate
    path = tmp_path / "cd.wav"
    _write_wav(path, (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16), rate)
    audio = load_audio(path)
    assert abs(len(audio) - 2 * SAMPLE_RATE) < 100  # resampled to 16 kHz by ffmpeg
    assert 0.15 < np.abs(audio).max() < 0.3
