import json
import shutil

import numpy as np
import pytest
import torch

from whisfusion_cli.checkpoint import save_whisfusion
from whisfusion_cli.errors import CheckpointError
from whisfusion_cli.asr import WhisfusionASR, WhisperASR, load_model


def windows():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(16000 * s).astype(np.float32) * 0.1 for s in (2, 5)]


def test_save_load_round_trip_gives_identical_pdd_output(tiny_model, tmp_path):
    out = save_whisfusion(tiny_model.net, tiny_model.cfg, tiny_model.tokenizer, tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "whisfusion" and cfg["default_preset"] == "balanced"
    assert cfg["decoder"]["n_layer"] == 2 and cfg["encoder"]["n_mels"] == 80
    loaded = load_model(out, device="cpu")
    assert isinstance(loaded, WhisfusionASR)
    for name, p in tiny_model.net.state_dict().items():
        assert torch.equal(p, loaded.net.state_dict()[name]), name
    opts = tiny_model.options("balanced", seed=5)
    a = tiny_model.decode_windows(windows(), opts)
    b = loaded.decode_windows(windows(), opts)
    assert a == b


def test_sharded_fp16_checkpoint(tiny_model, tmp_path):
    out = save_whisfusion(tiny_model.net, tiny_model.cfg, tiny_model.tokenizer, tmp_path / "ckpt",
                          dtype=torch.float16, max_shard_bytes=20_000)
    shards = sorted(out.glob("*.safetensors"))
    # tensors larger than a shard (the embedding, the head) are cut into row pieces: no file over the limit
    assert len(shards) > 1 and all(s.stat().st_size < 20_000 + 8_000 for s in shards)  # + header
    loaded = load_model(out, device="cpu", dtype="fp32")
    big = tiny_model.net.state_dict()["decoder.lm_head.weight"]
    assert big.numel() * 2 > 20_000
    for name, ref in tiny_model.net.state_dict().items():
        assert torch.allclose(loaded.net.state_dict()[name], ref.float(), atol=1e-3), name


def test_save_overwrites_atomically(tiny_model, tmp_path):
    target = tmp_path / "ckpt"
    save_whisfusion(tiny_model.net, tiny_model.cfg, tiny_model.tokenizer, target)
    save_whisfusion(tiny_model.net, tiny_model.cfg, tiny_model.tokenizer, target)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp dirs left behind


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such model directory"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(CheckpointError, match="unknown model_type"):
        load_model(tmp_path / "odd")


def test_hub_repo_id_from_offline_cache(tiny_model, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--whisfusion-tiny" / "snapshots" / ("a" * 40)
    save_whisfusion(tiny_model.net, tiny_model.cfg, tiny_model.tokenizer, snapshot)
    (cache / "models--acme--whisfusion-tiny" / "refs").mkdir()
    (cache / "models--acme--whisfusion-tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert isinstance(load_model("acme/whisfusion-tiny", device="cpu"), WhisfusionASR)
    with pytest.raises(CheckpointError, match="not fetchable"):
        load_model("acme/not-cached", device="cpu")


def test_plain_whisper_checkpoint_loads_as_ar_baseline(weights_dir, tmp_path):
    local = tmp_path / "whisper"
    shutil.copytree(weights_dir / "whisper-tiny.en", local)
    asr = load_model(local, device="cpu")
    assert isinstance(asr, WhisperASR) and asr.engine == "ar"
