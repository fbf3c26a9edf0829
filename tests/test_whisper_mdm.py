"""The whisper-mdm decoder family: built from real Whisper weights, same interface as SMDM's."""

import numpy as np
import torch

from whisfusion_cli.asr import WhisfusionASR, load_model
from whisfusion_cli.checkpoint import init_from_whisper, load_weights, save_whisfusion
from whisfusion_cli.config import EncoderConfig, WhisfusionConfig, WhisperMDMConfig
from whisfusion_cli.model import Whisfusion
from whisfusion_cli.whisper_mdm import WhisperMDMDecoder


def tiny_cfg() -> WhisperMDMConfig:
    return WhisperMDMConfig(n_vocab=300, n_text_ctx=64, n_text_state=64, n_text_head=4, n_text_layer=2,
                            n_text_mlp=128, prefix=(290, 291), max_seq_len=48)


def test_built_from_whisper_keeps_its_weights(weights_dir):
    model, cfg, tok = init_from_whisper(weights_dir / "whisper-tiny.en")
    assert isinstance(model.decoder, WhisperMDMDecoder) and cfg.tokenizer_kind == "whisper"
    assert cfg.decoder.prefix == tuple(tok.whisper_prompt(False)) and cfg.eos_id == tok.eos_id
    ref = load_weights(weights_dir / "whisper-tiny.en")
    emb = model.decoder.embed_tokens.weight
    assert emb.shape[0] == cfg.decoder.n_vocab + 1  # + [MASK]
    assert torch.allclose(emb[:-1], ref["model.decoder.embed_tokens.weight"].float())
    assert torch.allclose(emb[-1], emb[:-1].mean(0))  # [MASK] starts at the mean embedding
    w = "layers.2.encoder_attn.q_proj.weight"
    assert torch.equal(model.decoder.state_dict()[w], ref[f"model.decoder.{w}"].float())
    assert torch.equal(model.encoder.state_dict()["conv1.weight"], ref["model.encoder.conv1.weight"].float())
    xa = model.encoder(torch.randn(1, 80, 3000))
    canvas = torch.full((3, 20), cfg.decoder.mask_id)
    logits = model.decoder(canvas, model.decoder.cross_kv(xa[:, :100], torch.tensor([80])))
    assert logits.shape == (3, 20, cfg.decoder.n_vocab)


def test_bidirectional_folding_and_key_mask():
    torch.manual_seed(0)
    dec = WhisperMDMDecoder(tiny_cfg()).eval()
    xa = torch.randn(2, 30, 64)
    tokens = torch.randint(0, 300, (6, 10))  # 2 windows x 3 candidates
    with torch.no_grad():
        folded = dec(tokens, dec.cross_kv(xa, torch.tensor([20, 30])))
        first = dec(tokens[:3], dec.cross_kv(xa[:1, :20]))
        b = tokens[:1].clone()
        b[0, -1] = (b[0, -1] + 1) % 300
        changed = dec(b, dec.cross_kv(xa[:1, :20]))
    assert torch.allclose(folded[:3], first, atol=1e-5)
    assert not torch.allclose(changed[0, 0], first[0, 0])  # position 0 sees the last token


def test_tiny_whisper_mdm_round_trip_and_pdd(tiny_tokenizer, tmp_path):
    cfg = WhisfusionConfig(EncoderConfig.from_name("test-tiny"), tiny_cfg(), eos_id=tiny_tokenizer.eos_id,
                           tokenizer_kind="bpe")
    torch.manual_seed(0)
    asr = WhisfusionASR(Whisfusion(cfg.encoder, cfg.decoder).eval(), cfg, tiny_tokenizer, "tiny-mdm")
    rng = np.random.default_rng(0)
    windows = [rng.standard_normal(16000 * s).astype(np.float32) * 0.1 for s in (2, 4)]
    opts = asr.options("balanced", seed=3)
    before = asr.decode_windows(windows, opts)
    assert len(before) == 2 and all(len(r.candidates) == 10 for r in before)
    loaded = load_model(save_whisfusion(asr.net, cfg, tiny_tokenizer, tmp_path / "m"), device="cpu")
    assert isinstance(loaded.net.decoder, WhisperMDMDecoder)
    assert loaded.cfg.decoder == cfg.decoder
    assert loaded.decode_windows(windows, opts) == before
