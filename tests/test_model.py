import pytest
import torch

from whisfusion_cli.config import DecoderConfig, EncoderConfig
from whisfusion_cli.model import CrossAttention, DiffusionDecoder, Whisfusion, apply_rope, build_rope_cache


def tiny_decoder(**overrides) -> DiffusionDecoder:
    torch.manual_seed(0)
    return DiffusionDecoder(DecoderConfig.from_name("test-tiny", **overrides)).eval()


def test_shapes_and_mask_row():
    dec = tiny_decoder()
    cfg = dec.config
    assert dec.transformer.wte.num_embeddings == cfg.vocab_size + 1  # the [MASK] row
    assert dec.lm_head.out_features == cfg.vocab_size  # [MASK] is never predicted
    xa = torch.randn(2, 30, cfg.n_audio_state)
    tokens = torch.full((6, 12), cfg.mask_id)  # 2 windows x 3 candidates
    logits = dec(tokens, dec.cross_kv(xa))
    assert logits.shape == (6, 12, cfg.vocab_size)


def test_zero_init_adapter_leaves_logits_unchanged():
    dec = tiny_decoder()
    cfg = dec.config
    tokens = torch.randint(0, cfg.vocab_size + 1, (2, 10))
    xa1, xa2 = torch.randn(2, 30, cfg.n_audio_state), 5 * torch.randn(2, 30, cfg.n_audio_state)
    with torch.no_grad():
        a, b = dec(tokens, dec.cross_kv(xa1)), dec(tokens, dec.cross_kv(xa2))
        # the same text model with the adapters cut out of every block
        for block in dec.transformer.h:
            block.cross_attn.forward = lambda x, kv: torch.zeros_like(x)
        text_only = dec(tokens, dec.cross_kv(xa1))
    assert torch.equal(a, b) and torch.allclose(a, text_only, atol=1e-6)


def test_trained_adapter_reads_audio():
    dec = tiny_decoder()
    for block in dec.transformer.h:
        torch.nn.init.normal_(block.cross_attn.out.weight, std=0.05)
    tokens = torch.randint(0, dec.config.vocab_size, (2, 10))
    xa1, xa2 = torch.randn(2, 30, dec.config.n_audio_state), torch.randn(2, 30, dec.config.n_audio_state)
    with torch.no_grad():
        assert not torch.allclose(dec(tokens, dec.cross_kv(xa1)), dec(tokens, dec.cross_kv(xa2)))


def test_cross_attention_folds_candidates_like_explicit_copies():
    torch.manual_seed(0)
    ca = CrossAttention(32, 4, 16)
    torch.nn.init.normal_(ca.out.weight)
    xa = torch.randn(2, 7, 16)
    x = torch.randn(2 * 3, 5, 32)  # 2 windows x 3 candidates, window-major
    folded = ca(x, ca.project_kv(xa))
    copied = ca(x, ca.project_kv(xa.repeat_interleave(3, dim=0)))
    assert torch.allclose(folded, copied, atol=1e-5)


def test_bidirectional_attention_sees_future_tokens():
    dec = tiny_decoder()
    xa = torch.randn(1, 30, dec.config.n_audio_state)
    a = torch.randint(0, dec.config.vocab_size, (1, 10))
    b = a.clone()
    b[0, -1] = (a[0, -1] + 1) % dec.config.vocab_size
    with torch.no_grad():
        la, lb = dec(a, dec.cross_kv(xa)), dec(b, dec.cross_kv(xa))
    assert not torch.allclose(la[0, 0], lb[0, 0])  # position 0 changes when the last token does


def test_rope_is_a_rotation_and_relative():
    cos, sin = build_rope_cache(16, 8)
    q, k = torch.randn(1, 1, 16, 8), torch.randn(1, 1, 16, 8)
    rq = apply_rope(q, cos, sin)
    assert torch.allclose(rq.norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    # the score between positions depends only on their distance
    q1, k1 = q[:, :, :1].expand(-1, -1, 16, -1), k[:, :, :1].expand(-1, -1, 16, -1)
    s = (apply_rope(q1, cos, sin)[0, 0, 3] * apply_rope(k1, cos, sin)[0, 0, 1]).sum()
    s2 = (apply_rope(q1, cos, sin)[0, 0, 9] * apply_rope(k1, cos, sin)[0, 0, 7]).sum()
    assert torch.allclose(s, s2, atol=1e-4)


def test_load_smdm_checkpoint_keys():
    cfg = DecoderConfig.from_name("test-tiny")
    torch.manual_seed(1)
    smdm = {k: v for k, v in DiffusionDecoder(cfg).state_dict().items() if "cross_attn" not in k}
    assert "transformer.h.0.attn.attn.weight" in smdm and "transformer.h.1.mlp.swiglu.w3.weight" in smdm
    model = Whisfusion(EncoderConfig.from_name("test-tiny"), cfg)
    missing = model.load_smdm_decoder(smdm)
    assert missing and all("cross_attn" in k for k in missing)
    assert torch.equal(model.decoder.transformer.wte.weight, smdm["transformer.wte.weight"])
    with pytest.raises(KeyError):
        model.load_smdm_decoder({**smdm, "transformer.h.9.bogus": torch.zeros(1)})


def test_smdm_170m_shape():
    cfg = DecoderConfig.from_name("smdm-170m")
    with torch.device("meta"):
        dec = DiffusionDecoder(cfg)
    skip = ("cross_attn", "wte", "lm_head")  # SMDM names its models by non-embedding parameters
    n = sum(p.numel() for n_, p in dec.named_parameters() if not any(s in n_ for s in skip))
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.intermediate_size, cfg.mask_id) == (18, 768, 12, 3072, 32000)
    assert 165e6 < n < 175e6


def test_key_mask_equals_trimming_the_audio_states():
    dec = tiny_decoder()
    for block in dec.transformer.h:
        torch.nn.init.normal_(block.cross_attn.out.weight, std=0.05)
    xa = torch.randn(2, 40, dec.config.n_audio_state)
    tokens = torch.randint(0, dec.config.vocab_size, (4, 9))  # 2 windows x 2 candidates
    with torch.no_grad():
        masked = dec(tokens, dec.cross_kv(xa, torch.tensor([25, 40])))
        first = dec(tokens[:2], dec.cross_kv(xa[:1, :25]))
        second = dec(tokens[2:], dec.cross_kv(xa[1:]))
    assert torch.allclose(masked[:2], first, atol=1e-5) and torch.allclose(masked[2:], second, atol=1e-5)
