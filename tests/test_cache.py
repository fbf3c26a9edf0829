import json
from pathlib import Path

import numpy as np
import pytest
import torch

from whisfusion_cli import cache as cache_mod
from whisfusion_cli.audio import SAMPLE_RATE, audio_frames
from whisfusion_cli.audio import write_wav
from whisfusion_cli.cache import FeatureCache, build_cache, encode_clips, load_index, merge_index
from whisfusion_cli.config import EncoderConfig
from whisfusion_cli.data import Example, read_manifest
from whisfusion_cli.whisper import WhisperEncoder

pytestmark = pytest.mark.usefixtures("one_thread")


def tone(i: int, seconds: float) -> np.ndarray:
    t = np.arange(int(SAMPLE_RATE * seconds)) / SAMPLE_RATE
    return 0.3 * np.sin(2 * np.pi * (200 + 70 * i) * t) + 0.1 * np.sin(2 * np.pi * (1000 + 90 * i) * t)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[Example]]:
    """8 good clips, a corrupt file, an empty clip, a 31 s clip and an empty-text row, as a manifest."""
    root = tmp_path_factory.mktemp("corpus")
    rows = [{"audio": write_wav(root / f"c{i}.wav", tone(i, 0.4 + 0.1 * i)).name, "text": f"Clip number {i}."}
            for i in range(8)]
    (root / "corrupt.wav").write_bytes(b"RIFF not really a wav file")
    rows.append({"audio": "corrupt.wav", "text": "Broken."})
    rows.append({"audio": write_wav(root / "empty.wav", np.zeros(0)).name, "text": "Nothing."})
    rows.append({"audio": write_wav(root / "long.wav", tone(1, 31.0)).name, "text": "Far too long."})
    rows.append({"audio": "c0.wav", "text": ""})
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root, read_manifest(root / "m.jsonl")[0]


def encoder(seed: int) -> WhisperEncoder:
    torch.manual_seed(seed)
    return WhisperEncoder(EncoderConfig.from_name("test-tiny")).eval()


def test_build_skips_bad_clips_trims_states_and_second_build_is_a_no_op(corpus, tmp_path, monkeypatch):
    root, examples = corpus
    assert read_manifest(root / "m.jsonl")[1]["empty_text"] == 1
    examples = examples + [Example(root / "c1.wav", "  ")]  # an empty text reaching the cache itself
    enc = encoder(0)
    report = build_cache(examples, tmp_path, enc, batch_size=3)
    assert report.n_encoded == 8 and report.n_reused == 0
    assert report.skipped == {"audio_error": 1, "empty_audio": 1, "too_long": 1, "empty_text": 1}
    assert report.kept == tuple(range(8))
    cache = FeatureCache(tmp_path, report.keys)
    for i, (states, text) in enumerate(cache[j] for j in range(len(cache))):
        n_samples = int(SAMPLE_RATE * (0.4 + 0.1 * i))
        assert states.dtype == torch.float16 and states.shape == (audio_frames(n_samples), 64)
        assert text == f"Clip number {i}."
        assert cache.entries[i].duration == pytest.approx(n_samples / SAMPLE_RATE)
    # the cached states are the encoder's own, trimmed
    ref = encode_clips(enc, [tone(2, 0.6).astype(np.float32)])[0]
    assert torch.allclose(cache[2][0].float(), ref.float(), atol=2e-3)
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}

    calls = []
    monkeypatch.setattr(cache_mod, "load_audio", lambda p: calls.append(p))
    again = build_cache(examples, tmp_path, enc, batch_size=3)
    assert calls == [] and again.n_encoded == 0 and again.n_reused == 8  # bad clips are remembered too
    assert again.keys == report.keys and again.skipped == report.skipped
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == files


def test_keys_follow_the_encoder_and_both_coexist(corpus, tmp_path):
    _, examples = corpus
    a = build_cache(examples[:4], tmp_path, encoder(0))
    b = build_cache(examples[:4], tmp_path, encoder(1))
    assert a.fingerprint != b.fingerprint and not set(a.keys) & set(b.keys)
    assert b.n_encoded == 4
    assert build_cache(examples[:4], tmp_path, encoder(0)).n_encoded == 0
    assert len(load_index(tmp_path)) == 8
    assert not torch.equal(FeatureCache(tmp_path, a.keys)[0][0], FeatureCache(tmp_path, b.keys)[0][0])


def test_interrupted_build_resumes_and_lru_keeps_few_shards_open(corpus, tmp_path):
    _, examples = corpus
    enc = encoder(0)

    def stop(done: int, total: int) -> None:
        if done >= 4:
            raise KeyboardInterrupt  # killed after the first two batches

    with pytest.raises(KeyboardInterrupt):
        build_cache(examples[:8], tmp_path, enc, batch_size=2, shard_bytes=1, progress=stop)
    assert len(load_index(tmp_path)) == 4  # one clip per shard: each flushed before the kill
    report = build_cache(examples[:8], tmp_path, enc, batch_size=2, shard_bytes=1)
    assert report.n_encoded == 4 and report.n_reused == 4
    cache = FeatureCache(tmp_path, report.keys, max_open_shards=2)
    assert len({e.shard for e in cache.entries}) == 8
    for i in [0, 5, 1, 7, 3]:
        assert cache[i][1] == f"Clip number {i}."
        assert len(cache._open) <= 2


def test_part_indexes_merge_and_corrected_texts_update_the_index(corpus, tmp_path):
    _, examples = corpus
    enc = encoder(0)
    parts = [build_cache(examples[r:8:2], tmp_path, enc, part=f"rank{r}") for r in (0, 1)]
    assert sorted(p.name for p in tmp_path.glob("index.part-*.json")) == ["index.part-rank0.json",
                                                                          "index.part-rank1.json"]
    assert merge_index(tmp_path) == 8 and not list(tmp_path.glob("index.part-*"))
    fixed = [Example(ex.audio, ex.text.upper()) for ex in examples[:8]]
    report = build_cache(fixed, tmp_path, enc)
    assert report.n_encoded == 0 and set(report.keys) == {k for p in parts for k in p.keys}
    assert FeatureCache(tmp_path, report.keys)[3][1] == "CLIP NUMBER 3."
