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
