"""The real-speech recipe's pieces (recipes/realspeech): labels, long windows, SpecAugment, own-prediction
canvases, the frozen cross-attention; and data.long_windows, the evaluation's long windows."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))
sys.path.insert(0, str(ROOT / "recipes" / "synthetic"))

from realspeech.label import label, sentence_case  # noqa: E402
from realspeech.mix import MAX_WINDOW_S, join_windows, own_canvas, spec_augment  # noqa: E402

from whisfusion_cli.audio import SAMPLE_RATE  # noqa: E402
from whisfusion_cli.data import long_windows  # noqa: E402


def test_labels_take_whispers_spelling_only_when_it_says_the_prompts_words():
    assert label("IS SHE YOUR SISTER", "Is she your sister?") == ("Is she your sister?", "whisper")
    assert label("HIS FATHER CALLED DOWN BELOW", " His father called out drunk bro") == \
        ("His father called down below.", "prompt")  # what was read, not what Whisper heard
    assert label(None, " There's iron, they say. ") == ("There's iron, they say.", "whisper")
    assert label("I WILL GO", "") == ("I will go.", "prompt")
    assert sentence_case("I THINK I'M HERE") == "I think I'm here."


def test_joined_windows_fit_one_encoder_window_and_keep_the_texts_in_order():
    gen = random.Random(0)
    clips = [(np.full(int(s * SAMPLE_RATE), 0.1, np.float32), f"clip {i}.") for i, s in
             enumerate([6, 9, 4, 12, 3, 7, 8, 5, 11, 2, 6, 29])]
    windows = join_windows(clips, gen)
    assert windows, "12 clips of 2-12 s make long windows"
    used = []
    for audio, text in windows:
        seconds = len(audio) / SAMPLE_RATE
        assert seconds <= MAX_WINDOW_S + 1e-6 and seconds < 30.0
        ids = [int(w.rstrip(".")) for w in text.split() if w != "clip"]
        assert len(ids) >= 2 and ids == sorted(ids)  # consecutive clips, in order
        speech = sum(len(clips[i][0]) for i in ids)
        assert speech < len(audio) <= speech + 0.7 * SAMPLE_RATE * (len(ids) - 1)  # pauses between them
        used += ids
    assert len(used) == len(set(used)) and 11 not in used  # a 29 s clip joins nothing


def test_spec_augment_masks_inside_each_clip_and_keeps_the_rest():
    gen = torch.Generator().manual_seed(3)
    mel = torch.randn(3, 80, 3000)
    n_frames = torch.tensor([3000, 1200, 400])
    out = spec_augment(mel, n_frames, gen, time_share=0.1)
    changed = out != mel
    assert changed.any()
    for b, n in enumerate(n_frames.tolist()):
        full_bins = changed[b].all(-1)  # frequency masks span every frame
        time_only = changed[b] & ~full_bins[:, None]
        frames = time_only.any(0).nonzero().flatten()
        assert frames.numel() == 0 or int(frames.max()) < n  # time masks inside the clip
        assert frames.numel() <= 0.1 * n + 4
        assert int(full_bins.sum()) <= 2 * 20
    again = spec_augment(mel, n_frames, torch.Generator().manual_seed(3), time_share=0.1)
    assert torch.equal(out, again)  # drawn from the generator alone


def test_own_canvas_keeps_the_most_confident_predictions_and_masks_the_rest():
    torch.manual_seed(0)
    mask_id, (b, length, vocab) = 9, (4, 12, 9)
    x0 = torch.randint(0, vocab, (b, length))
    masked = torch.rand(b, length) < 0.7
    xt = x0.masked_fill(masked, mask_id)
    logits = torch.randn(b, length, vocab) * 3
    gen = torch.Generator().manual_seed(1)
    xt2, m2, t2 = own_canvas(logits, xt, masked, mask_id, gen, keep_low=0.5, keep_high=0.5)
    prob, pred = logits.softmax(-1).max(-1)
    for r in range(b):
        filled = masked[r] & ~m2[r]
        assert int(filled.sum()) == int(masked[r].sum()) // 2
        assert torch.equal(xt2[r][filled], pred[r][filled])  # its own tokens, right or wrong
        assert torch.equal(xt2[r][~masked[r]], x0[r][~masked[r]])  # the gold context is untouched
        assert (xt2[r][m2[r]] == mask_id).all() and not (m2[r] & ~masked[r]).any()
        if filled.any() and m2[r].any():
            assert prob[r][filled].min() >= prob[r][m2[r]].max()  # the confident ones are kept
        assert t2[r] == pytest.approx(max(1e-3, float(m2[r].sum()) / length))


def test_freeze_cross_keeps_the_cross_attention_out_of_the_optimizer():
    import stream_train

    from whisfusion_cli.config import EncoderConfig, WhisperMDMConfig
    from whisfusion_cli.model import Whisfusion

    dec = WhisperMDMConfig(n_vocab=300, n_text_ctx=64, n_text_state=64, n_text_head=4, n_text_layer=2,
                           n_text_mlp=128, prefix=(290, 291), max_seq_len=48)
    enc = EncoderConfig(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=4, n_audio_layer=1,
                        n_audio_mlp=128)
    model = Whisfusion(enc, dec)
    opt = stream_train.trainable(model, "1", 1e-4, False, freeze_cross=True)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    cross = [p for n, p in model.decoder.named_parameters() if "encoder_attn" in n]
    assert cross and all(not p.requires_grad and id(p) not in in_opt for p in cross)
    assert id(model.decoder.layers[0].fc1.weight) in in_opt
    opt = stream_train.trainable(model, "2", 1e-4, False)  # the default trains them again
    assert all(p.requires_grad for p in cross)


def test_long_windows_use_every_clip_once_in_25_to_30_s():
    rng = random.Random(5)
    durations = [rng.uniform(2, 15) for _ in range(120)]
    windows = long_windows(durations)
    flat = [i for w in windows for i in w]
    assert sorted(flat) == list(range(120))
    lengths = [sum(durations[i] for i in w) + 0.5 * (len(w) - 1) for w in windows]
    assert all(x <= 30.0 for x in lengths)
    assert sum(x >= 25.0 for x in lengths) >= len(windows) - 2  # only the leftovers fall short
    assert all(w == sorted(w) for w in windows) and [w[0] for w in windows] == sorted(w[0] for w in windows)


def test_device_eval_reads_dev_real_as_native_non_native_and_long_windows(tmp_path):
    import json
    import wave

    import device_eval

    rows = []
    for i, (seconds, speaker) in enumerate([(9, "x:VCTK-p225"), (8, "jimbozhang/speechocean762:1"), (10, "x:VCTK-p226"),
                                            (7, "jimbozhang/speechocean762:2"), (9, "y:CMU_ARCTIC-rms")]):
        with wave.open(str(tmp_path / f"d{i}.wav"), "wb") as w:  # 16-bit wav: read without soundfile
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(SAMPLE_RATE)
            w.writeframes(np.full(seconds * SAMPLE_RATE, 300 * (i + 1), "<i2").tobytes())
        rows.append({"audio": f"d{i}.wav", "text": f"clip {i}", "duration": seconds, "speaker": speaker})
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = device_eval.manifest_sets(tmp_path / "manifest.jsonl")
    assert [t for _, t, _ in sets["devreal-native"]] == ["clip 0", "clip 2", "clip 4"]
    assert [t for _, t, _ in sets["devreal-so"]] == ["clip 1", "clip 3"]
    native_long = sets["long-native"]
    assert [t for _, t, _ in native_long] == ["clip 0 clip 2 clip 4"]  # 9 + 10 + 9 s and two pauses
    assert len(native_long[0][0]) == int((28 + 1.0) * SAMPLE_RATE)
    assert [t for _, t, _ in sets["long-all"]] == ["clip 0 clip 1 clip 2", "clip 3 clip 4"]  # 28 s, then the rest


def test_the_ar_teacher_reads_gold_text_on_trimmed_states_and_mixes_into_the_loss(real_clips):
    """recipes/realspeech/distill.py on the bundled model and two real clips: the teacher's first
    choice is the gold token on most heard positions (Whisper base on clean read speech), the states past a
    clip's frames are masked (garbage there changes nothing), targets stop after the first
    end-of-text, and alpha 0 is the plain diffusion loss while alpha 1 follows the teacher."""
    from realspeech.distill import Teacher, agreement, distill_loss

    from whisfusion_cli import BUNDLED_MODEL
    from whisfusion_cli.audio import load_audio
    from whisfusion_cli.cache import encode_clips, pad_states
    from whisfusion_cli.checkpoint import load_rescorer, load_whisfusion
    from whisfusion_cli.diffusion import forward_process, masked_diffusion_loss
    from whisfusion_cli.splits import canvas_targets

    model, cfg, tok = load_whisfusion(BUNDLED_MODEL, torch.device("cpu"), torch.float32)
    teacher = Teacher(load_rescorer(BUNDLED_MODEL, model, cfg))
    clips = [(load_audio(path)[: 8 * SAMPLE_RATE], sentence_case(text)) for path, text in real_clips[:2]]
    ids = tok.encode_transcripts([text for _, text in clips])
    with torch.inference_mode():
        xa, n_frames = pad_states(encode_clips(model.encoder, [a for a, _ in clips]), 64)
    assert int(n_frames.min()) < xa.shape[1]  # one row is padded
    x0 = canvas_targets(ids, [len(a) / SAMPLE_RATE for a, _ in clips], cfg.eos_id, cfg.decoder.max_seq_len)
    idx, prob, valid = teacher.targets(xa.float(), n_frames, x0)
    n = [len(x) for x in ids]
    assert valid.sum(1).tolist() == [m + 1 for m in n]  # the text and its end-of-text
    assert torch.allclose(prob.sum(-1), torch.ones_like(prob[..., 0]))
    # the clips are cut at 8 s, so their texts run on past the audio: only the heard part agrees
    heard = torch.zeros_like(valid)
    for row, m in enumerate(n):
        heard[row, : m // 2] = True
    assert float(((idx[..., 0] == x0) & heard).sum() / heard.sum()) > 0.8  # commas differ
    assert 0.0 < agreement((idx, prob, valid), x0) <= 1.0
    noisy = xa.float().clone()
    for row, f in enumerate(n_frames.tolist()):
        noisy[row, f:] = torch.randn_like(noisy[row, f:]) * 10
    idx2, prob2, _ = teacher.targets(noisy, n_frames, x0)
    assert torch.equal(idx2[..., 0], idx[..., 0]) and torch.allclose(prob2, prob, atol=1e-4)

    gen = torch.Generator().manual_seed(0)
    xt, masked, t = forward_process(x0, cfg.decoder.mask_id, 0.5, 0.5, gen)
    logits = torch.randn(*x0.shape, cfg.decoder.vocab_size, generator=gen)
    plain = masked_diffusion_loss(logits, x0, masked, t)
    assert torch.allclose(distill_loss(logits, x0, masked, t, (idx, prob, valid), 0.0), plain)
    follows = logits.clone()  # a student that puts the teacher's distribution on the targeted positions
    follows.scatter_(-1, idx, (prob.clamp(min=1e-9).log() + 30))
    gold = logits.clone()
    gold.scatter_(-1, x0[..., None], 30.0)
    assert distill_loss(follows, x0, masked, t, (idx, prob, valid), 1.0) < \
        distill_loss(gold, x0, masked, t, (idx, prob, valid), 1.0)
