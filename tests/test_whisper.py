"""Our Whisper encoder / AR decoder against Hugging Face transformers on the real weights."""

import re

import jiwer
import pytest
import torch

from whisfusion_cli.audio import load_audio, log_mel_spectrogram
from whisfusion_cli.checkpoint import load_whisper
from whisfusion_cli.asr import WhisperASR, load_model

MODELS = ["whisper-tiny.en", "whisper-base"]


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split())


@pytest.mark.parametrize("name", MODELS)
def test_encoder_matches_transformers(weights_dir, real_clips, name):
    transformers = pytest.importorskip("transformers")
    ref_model = transformers.WhisperModel.from_pretrained(weights_dir / name, torch_dtype=torch.float32).eval()
    ours, _ = load_whisper(weights_dir / name, torch.device("cpu"), torch.float32)
    mel = log_mel_spectrogram(load_audio(real_clips[0][0]))[None]
    with torch.no_grad():
        ref = ref_model.encoder(mel).last_hidden_state
        got = ours.encoder(mel)
    assert got.shape == ref.shape == (1, 1500, ours.encoder.config.n_audio_state)
    assert (got - ref).abs().max().item() < 1e-3


@pytest.mark.parametrize("name", MODELS)
def test_decoder_logits_match_transformers(weights_dir, real_clips, name):
    transformers = pytest.importorskip("transformers")
    ref_model = transformers.WhisperForConditionalGeneration.from_pretrained(
        weights_dir / name, torch_dtype=torch.float32).eval()
    asr = load_model(weights_dir / name, device="cpu", dtype="fp32")
    mel = log_mel_spectrogram(load_audio(real_clips[2][0]))[None]
    tokens = torch.tensor([asr.prompt + asr.tokenizer.encode(" He could wait")])
    with torch.no_grad():
        ref = ref_model(input_features=mel, decoder_input_ids=tokens).logits
        xa = asr.net.encoder(mel)
        cache = asr.net.decoder.new_cache(1, tokens.shape[1])
        got = asr.net.decoder(tokens, asr.net.decoder.cross_kv(xa), cache, 0)
    assert (got - ref).abs().max().item() < 1e-2  # logits are O(10); fp32 summation order differs


def test_ar_baseline_wer_on_real_clips(weights_dir, real_clips):
    asr = load_model(weights_dir / "whisper-base", device="cpu")
    assert isinstance(asr, WhisperASR)
    results = asr.decode_windows([load_audio(p) for p, _ in real_clips])
    for (path, ref), r in zip(real_clips, results):
        print(f"{path.stem}: {r.text}\n{'':>{len(path.stem)}}  REF {ref}")
    refs = [normalize(ref) for _, ref in real_clips]
    hyps = [normalize(r.text) for r in results]
    wer = jiwer.wer(refs, hyps)
    print(f"whisper-base greedy WER on {len(refs)} real clips: {wer:.3%}")
    assert wer <= 0.10
    assert "could wait no longer" in hyps[2]


def test_ar_baseline_batch_equals_single(weights_dir, real_clips):
    asr = load_model(weights_dir / "whisper-tiny.en", device="cpu")
    audio = [load_audio(p) for p, _ in real_clips[1:3]]
    batched = [r.text for r in asr.decode_windows(audio)]
    single = [asr.decode_windows([a])[0].text for a in audio]
    assert batched == single
