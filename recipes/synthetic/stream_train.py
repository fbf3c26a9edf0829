"""Trains a whisfusion model while its synthetic speech is still being rendered (one GPU lease).

`make_dataset.py` appends every finished clip to `DIR/progress.jsonl`; this trainer re-reads those
files every `--poll-s` seconds, encodes the new clips with the frozen Whisper encoder on the GPU
and keeps their states in GPU memory (a growing feature store), so synthesis on the CPUs and
training on the GPU run side by side. Splits: "train" rows train; "val" rows (held-out books)
give the validation loss and WER logged during training.

The curriculum (decoder family whisper-mdm, built from a Whisper checkpoint's decoder):
  stage 1: t ~ U(0, 1), every decoder weight but the tied embedding (the [MASK] row trains);
  stage 2: t ~ U(0.7, 1), layer-wise LR decay 0.9 (the paper's high-mask specialisation).
`--scratch` trains the same recipe from a randomly initialised SMDM-shaped decoder (the ablation).

    python recipes/synthetic/stream_train.py --data /tmp/synth --whisper /tmp/whisper-base \
        --out /tmp/run --minutes 15
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes"))

from whisfusion_cli.asr import FRAME_BUCKET
from whisfusion_cli.audio import SAMPLE_RATE
from whisfusion_cli.cache import encode_clips, pad_states
from whisfusion_cli.checkpoint import init_from_whisper, load_rescorer, load_whisfusion, save_whisfusion
from whisfusion_cli.config import DecoderConfig, WhisfusionConfig
from whisfusion_cli.curriculum import lr_factor, param_groups
from whisfusion_cli.diffusion import forward_process, masked_diffusion_loss
from whisfusion_cli.distributed import autocast
from whisfusion_cli.model import Whisfusion
from whisfusion_cli.splits import canvas_targets

from realspeech.distill import Teacher, agreement, distill_loss
from realspeech.mix import RealClips, join_windows, own_canvas


def read_audio(path: Path) -> np.ndarray:
    """16 kHz mono float32 from a 16-bit wav (no ffmpeg needed), or anything soundfile reads."""
    if path.suffix == ".wav":
        with wave.open(str(path)) as w:
            assert w.getframerate() == SAMPLE_RATE and w.getnchannels() == 1, path
            return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
    if path.suffix == ".npy":
        return np.load(path).astype(np.float32)
    import soundfile
    from scipy.signal import resample_poly

    audio, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    audio = audio.mean(1)
    g = math.gcd(sr, SAMPLE_RATE)
    return audio if sr == SAMPLE_RATE else resample_poly(audio, SAMPLE_RATE // g, sr // g).astype(np.float32)


class Store:
    """Encoder states (fp16, on the GPU) and token ids of the clips read so far, per split."""

    def __init__(self, encoder: torch.nn.Module, encode_texts, max_len: int, join: float = 0.0):
        self.encoder, self.encode_texts, self.max_len = encoder, encode_texts, max_len
        self.join, self.rand = join, random.Random(11)  # share of train clips also joined into long windows
        self.device = next(encoder.parameters()).device
        self.clips: dict[str, list[tuple[torch.Tensor, list[int], float, str]]] = {}
        self.read: dict[Path, int] = {}  # progress file -> bytes consumed
        self.pool = ThreadPoolExecutor(8)

    def count(self, split: str) -> int:
        return len(self.clips.get(split, []))

    def hours(self, split: str) -> float:
        return sum(c[2] for c in self.clips.get(split, [])) / 3600

    def _new_rows(self, progress: Path) -> list[dict]:
        with open(progress, "rb") as f:
            f.seek(self.read.get(progress, 0))
            data = f.read()
        data = data[: data.rfind(b"\n") + 1]  # a row still being written waits for the next poll
        self.read[progress] = self.read.get(progress, 0) + len(data)
        return [json.loads(line) for line in data.decode().splitlines() if line.strip()]

    @torch.inference_mode()
    def poll(self, dirs: list[Path], limit: int = 4096) -> int:
        """Reads up to `limit` new clips from the progress files of `dirs`; returns how many."""
        rows = [(d, r) for d in dirs if (d / "progress.jsonl").is_file()
                for r in self._new_rows(d / "progress.jsonl")][:limit]
        audio = list(self.pool.map(lambda dr: read_audio(dr[0] / dr[1]["audio"]), rows))
        if self.join > 0:  # long, full windows beside the single clips (realspeech.mix.join_windows)
            picked = [(a, r["text"]) for a, (_, r) in zip(audio, rows)
                      if r.get("split", "train") == "train" and self.rand.random() < self.join]
            for a, text in join_windows(picked, self.rand):
                audio.append(a)
                rows.append((None, {"text": text, "split": "train"}))
        for i in range(0, len(rows), 32):
            states = encode_clips(self.encoder, audio[i: i + 32], self.device)
            all_ids = self.encode_texts([row["text"] for _, row in rows[i: i + 32]])
            for st, clip, ids, (_, row) in zip(states, audio[i: i + 32], all_ids, rows[i: i + 32]):
                if len(ids) < self.max_len:
                    self.clips.setdefault(row.get("split", "train"), []).append(
                        (st, ids, len(clip) / SAMPLE_RATE, row["text"]))
        return len(rows)

    def batch(self, split: str, idx: list[int], eos_id: int, extra: list | None = None) -> tuple[torch.Tensor, ...]:
        """xa (B, S, C) fp16, n_frames (B,), x0 (B, L) with end-of-text padding, as training and
        decoding shape them (S bucketed to FRAME_BUCKET; L = the adaptive canvas); `extra`: more
        examples shaped as the store keeps them (real speech drawn this step)."""
        clips = [self.clips[split][i] for i in idx] + list(extra or [])
        xa, n_frames = pad_states([c[0] for c in clips], FRAME_BUCKET)
        x0 = canvas_targets([c[1] for c in clips], [c[2] for c in clips], eos_id, self.max_len)
        return xa, n_frames, x0.to(self.device)


def build(args: argparse.Namespace, device: torch.device):
    """(model, config, tokenizer): whisper-mdm from the Whisper checkpoint, SMDM-shaped from scratch,
    or (--init) a whisfusion model to train on, e.g. the bundled one with fresh speech."""
    if args.init:
        model, wcfg, tok = load_whisfusion(Path(args.init), torch.device("cpu"), torch.float32)
        return model.to(device), wcfg, tok
    model, wcfg, tok = init_from_whisper(Path(args.whisper))
    if args.scratch:
        dec = replace(DecoderConfig.from_name(args.scratch), vocab_size=wcfg.decoder.n_vocab,
                      n_audio_state=wcfg.encoder.n_audio_state)
        wcfg = WhisfusionConfig(wcfg.encoder, dec, eos_id=wcfg.eos_id, tokenizer_kind="whisper")
        scratch = Whisfusion(wcfg.encoder, dec)
        scratch.encoder.load_state_dict(model.encoder.state_dict())
        model = scratch
    elif args.no_shift:
        wcfg = replace(wcfg, decoder=replace(wcfg.decoder, shift=False))
        model.decoder.config = wcfg.decoder
    return model.to(device), wcfg, tok


def trainable(model: Whisfusion, stage: str, lr: float, train_embedding: bool,
              freeze_cross: bool = False) -> torch.optim.Optimizer:
    """AdamW over the decoder (encoder frozen). A pretrained decoder keeps its tied embedding rows
    fixed (a gradient hook zeroes them) except the [MASK] row, unless train_embedding; freeze_cross
    also keeps the cross-attention (and its norm) as they are."""
    model.encoder.requires_grad_(False)
    model.decoder.requires_grad_(True)
    for name, p in model.decoder.named_parameters():
        if freeze_cross and any(a in name for a in getattr(model.decoder, "adapter_names", ())):
            p.requires_grad_(False)
    emb = getattr(model.decoder, "embed_tokens", None)
    if emb is not None and not train_embedding and not hasattr(emb, "_row_hook"):
        keep = torch.zeros(emb.weight.shape[0], 1, device=emb.weight.device)
        keep[model.decoder.config.mask_id] = 1.0
        emb._row_hook = emb.weight.register_hook(lambda g: g * keep)
    groups = param_groups(model.decoder, stage, lr, 0.01, 0.9)
    for g in groups:
        if g["name"] == "embedding":
            g["weight_decay"] = 0.0  # frozen rows must not decay either
    return torch.optim.AdamW(groups, betas=(0.9, 0.98), eps=1e-8, fused=torch.cuda.is_available())


@torch.inference_mode()
def validate(model: Whisfusion, store: Store, wcfg: WhisfusionConfig, tok, n: int = 128) -> dict:
    """Val loss at t = 0.5 and 0.9 and greedy one-pass + 4-step PDD WER on up to n held-out-book clips."""
    from whisfusion_cli.config import DecodingOptions
    from whisfusion_cli.decoding import canvas_to_ids, eager_decoder, pdd
    from whisfusion_cli.wer import normalize, word_errors

    model.eval()
    dec, mask_id, eos = model.decoder, wcfg.decoder.mask_id, wcfg.eos_id
    idx = list(range(min(n, store.count("val"))))
    out = {"val_clips": len(idx)}
    if not idx:
        return out
    losses, errs = {0.5: [], 0.9: []}, {1: [0, 0], 4: [0, 0]}
    for s in range(0, len(idx), 32):
        xa, n_frames, x0 = store.batch("val", idx[s: s + 32], eos)
        with autocast(x0.device):
            kv = dec.cross_kv(xa.float(), n_frames)
            for t, values in losses.items():
                g = torch.Generator(x0.device).manual_seed(7)
                xt, masked, tt = forward_process(x0, mask_id, t, t, g)
                values.append(float(masked_diffusion_loss(dec(xt, kv), x0, masked, tt)))
            for steps, counts in errs.items():
                opts = DecodingOptions(k=1, steps=steps, schedule=(1.0, 0.9, 0.85, 0.8)[:steps])
                res = pdd(eager_decoder(dec, kv, len(x0)), len(x0), x0.shape[1], mask_id, eos, opts, x0.device)
                for i, row in zip(idx[s: s + 32], res.tokens):
                    hyp = tok.decode(canvas_to_ids(row, eos, tok.vocab_size))
                    e, w = word_errors(normalize(store.clips["val"][i][3]), normalize(hyp))
                    counts[0] += e
                    counts[1] += w
    model.train()
    out.update({f"val_loss_t{t}": round(sum(v) / len(v), 4) for t, v in losses.items()})
    out.update({f"val_wer_{s}step": round(e / max(1, w), 4) for s, (e, w) in errs.items()})
    return out


def draw(n_clips: int, batch: int, fresh: float, gen: torch.Generator) -> list[int]:
    """Batch indices: a `fresh` share from the newest fifth of the store, the rest uniform over it.

    Uniform draws from a growing store show the first clips ~ln(n_end / n_start) times more often
    than the last ones; favouring the newest evens out how often each clip is seen."""
    n_fresh = round(fresh * batch)
    newest = max(1, n_clips // 5)
    idx = torch.randint(n_clips, (batch - n_fresh,), generator=gen, device=gen.device)
    recent = n_clips - newest + torch.randint(newest, (n_fresh,), generator=gen, device=gen.device)
    return torch.cat([idx, recent]).tolist()


def log(out: Path, rec: dict) -> None:
    """Prints a record and appends it to out/log.jsonl."""
    print(json.dumps(rec), flush=True)
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")


def train(args: argparse.Namespace) -> None:
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    model, wcfg, tok = build(args, device)
    store = Store(model.encoder.eval(), tok.encode_transcripts, wcfg.decoder.max_seq_len, args.join)
    real = RealClips([Path(m) for m in args.real], tok.encode_transcripts, wcfg.decoder.max_seq_len, device,
                     read_audio) if args.real else None
    n_real = round(args.real_share * args.batch) if real else 0
    teacher = Teacher(load_rescorer(Path(args.init), model, wcfg)) if args.distill else None
    if real:
        log_line = {"real_clips": len(real), "real_h": round(real.hours(), 2), "real_per_batch": n_real}
        print(json.dumps(log_line), flush=True)
    dirs = [Path(d) for d in args.data]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    while store.count("train") < args.min_clips:  # wait for the first clips
        store.poll(dirs)
        time.sleep(2)
    t_start = time.time()
    stage, opt = "1", trainable(model, "1", args.lr, args.train_embedding, args.freeze_cross)
    gen = torch.Generator(device).manual_seed(args.seed)
    total_s, step, last_poll, snapshots = args.minutes * 60, 0, time.time(), list(args.snapshot_minutes)
    model.train()
    while (elapsed := time.time() - t_start) < total_s and step < args.max_steps:
        if stage == "1" and (elapsed > args.stage1_frac * total_s or step >= args.stage1_frac * args.max_steps):
            stage, opt = "2", trainable(model, "2", args.lr2, args.train_embedding, args.freeze_cross)
            stage2_step = step
        if time.time() - last_poll > args.poll_s:
            store.poll(dirs)
            last_poll = time.time()
        frac = elapsed / total_s
        if stage == "1":
            scale = lr_factor(step, args.warmup, 10**9, 1.0)
            t_range = (0.0, 1.0)
        else:
            f2 = (frac - args.stage1_frac) / (1 - args.stage1_frac)
            scale = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, f2)))
            t_range = (0.7, 1.0)
        for g in opt.param_groups:
            g.setdefault("base_lr", g["lr"])
            g["lr"] = g["base_lr"] * scale
        idx = draw(store.count("train"), args.batch - n_real, args.fresh, gen)
        extra = real.draw(n_real, model.encoder, store.rand, gen, args.real_join, args.specaug) if n_real else []
        xa, n_frames, x0 = store.batch("train", idx, wcfg.eos_id, extra)
        xt, masked, t = forward_process(x0, wcfg.decoder.mask_id, *t_range, gen)
        with autocast(device):
            kv = model.decoder.cross_kv(xa.float(), n_frames)
            if args.own > 0:  # a share of rows sees its own predictions in context (realspeech.mix.own_canvas)
                with torch.no_grad():
                    xt2, m2, t2 = own_canvas(model.decoder(xt, kv), xt, masked, wcfg.decoder.mask_id, gen)
                rows = torch.rand(len(xt), device=device, generator=gen) < args.own
                xt, masked, t = (torch.where(rows[:, None], xt2, xt), torch.where(rows[:, None], m2, masked),
                                 torch.where(rows, t2, t))
            logits = model.decoder(xt, kv)
            targets = teacher.targets(xa, n_frames, x0) if teacher else None
        loss = distill_loss(logits, x0, masked, t, targets, args.distill) if teacher else \
            masked_diffusion_loss(logits, x0, masked, t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.decoder.parameters(), 1.0)
        opt.step()
        step += 1
        if step % args.log_every == 0 or (snapshots and elapsed > snapshots[0] * 60):
            rec = {"step": step, "min": round(elapsed / 60, 2), "stage": stage, "loss": round(loss.item(), 4),
                   "grad_norm": round(float(norm), 3), "lr_scale": round(scale, 4),
                   "train_clips": store.count("train"), "train_h": round(store.hours("train"), 2)}
            if teacher:
                rec["teacher_agrees"] = round(agreement(targets, x0), 4)
            if step % (args.log_every * args.val_every) == 0 or (snapshots and elapsed > snapshots[0] * 60):
                rec.update(validate(model, store, wcfg, tok, args.val_clips))
            if snapshots and elapsed > snapshots[0] * 60:
                save_whisfusion(model, wcfg, tok, out / f"model-{snapshots.pop(0):g}min", dtype=torch.float16)
                rec["snapshot"] = True
            log(out, rec)
    rec = {"step": step, "min": round((time.time() - t_start) / 60, 2), "final": True,
           "stage2_from_step": locals().get("stage2_step"), "train_clips": store.count("train"),
           "train_h": round(store.hours("train"), 2), **validate(model, store, wcfg, tok, 512)}
    log(out, rec)
    save_whisfusion(model, wcfg, tok, out / "model", dtype=torch.float16)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", nargs="+", required=True, help="make_dataset.py output folders (progress.jsonl)")
    p.add_argument("--whisper", help="Hugging Face openai/whisper-* directory to build whisper-mdm from")
    p.add_argument("--init", help="a whisfusion model directory to go on training instead (encoder frozen)")
    p.add_argument("--out", required=True)
    p.add_argument("--scratch", help="decoder config name: train an SMDM-shaped decoder from scratch instead")
    p.add_argument("--no-shift", action="store_true", help="whisper-mdm without the shifted read (ablation)")
    p.add_argument("--minutes", type=float, default=15.0, help="wall-clock training budget")
    p.add_argument("--max-steps", type=int, default=10**9, help="stop after this many steps (tests)")
    p.add_argument("--stage1-frac", type=float, default=0.6, help="share of the budget in stage 1")
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--fresh", type=float, default=0.0, help="share of each batch from the newest fifth of the clips")
    p.add_argument("--lr", type=float, default=1e-4, help="stage-1 peak learning rate")
    p.add_argument("--lr2", type=float, default=5e-5, help="stage-2 peak learning rate (top block)")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--train-embedding", action="store_true", help="also train the tied embedding/head")
    p.add_argument("--min-clips", type=int, default=400, help="training starts once this many clips exist")
    p.add_argument("--poll-s", type=float, default=20.0)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--val-every", type=int, default=10, help="validation every this many log lines")
    p.add_argument("--val-clips", type=int, default=128, help="held-out-book clips validated on")
    p.add_argument("--snapshot-minutes", type=float, nargs="*", default=[], help="also save the model then")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--join", type=float, default=0.0,
                   help="share of new train clips also joined (with pauses) into 20-30 s windows")
    p.add_argument("--real", nargs="*", default=[], help="manifest.jsonl files of real speech (realspeech/label.py)")
    p.add_argument("--real-share", type=float, default=0.25, help="share of each batch drawn from --real")
    p.add_argument("--real-join", type=float, default=0.3,
                   help="share of real draws joined with more of the speaker's clips into one window")
    p.add_argument("--specaug", action="store_true", help="SpecAugment masks on the real clips' log-mel, drawn per step")
    p.add_argument("--own", type=float, default=0.0,
                   help="share of rows trained on a canvas holding the model's own predictions")
    p.add_argument("--freeze-cross", action="store_true", help="keep the cross-attention as it is")
    p.add_argument("--distill", type=float, default=0.0,
                   help="weight of the AR decoder's soft targets at the masked positions (--init's rescorer)")
    p.add_argument("--device", default="auto", help="auto: cuda when available")
    args = p.parse_args(argv)
    if not (args.whisper or args.init):
        p.error("give --whisper (start from a Whisper checkpoint) or --init (go on from a whisfusion model)")
    if args.distill and not args.init:
        p.error("--distill needs --init: a whisfusion model that ships its AR decoder (rescorer)")
    return args


if __name__ == "__main__":
    train(parse_args())
