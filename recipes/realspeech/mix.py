"""What the real-speech recipe adds to `stream_train.py`'s batches (see README.md beside this file).

- `RealClips`: real recordings (train-real, labelled by `label.py`) kept as audio on the GPU; each
  draw joins some of one speaker's clips into a long window, draws SpecAugment masks on its
  log-mel and encodes it with the frozen encoder then (never cached), so no two epochs of the few
  real hours look alike.
- `join_windows`: synthetic clips joined into 20-30 s windows with short pauses, the dense full
  windows most of a long file is cut into (single clips are U(1, 28) s and at most 60 words).
- `own_canvas`: a training canvas holding the model's own predictions, as PDD's later steps see it
  (MDM-ASR's lever): predict every masked position, keep the confident ones, re-mask the rest.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from whisfusion_cli.audio import N_SAMPLES, SAMPLE_RATE, audio_frames, log_mel_spectrogram

MAX_WINDOW_S = 29.5  # joined windows stay inside one 30 s encoder window
PAUSE_S = (0.15, 0.7)  # the pauses between joined clips, drawn uniformly


def pause(gen: random.Random) -> np.ndarray:
    """A short pause between joined clips: near-silence at -60 dBFS, not digital zero."""
    n = int(gen.uniform(*PAUSE_S) * SAMPLE_RATE)
    return (np.random.default_rng(gen.randrange(2**31)).standard_normal(n) * 1e-3).astype(np.float32)


def join_windows(clips: list[tuple[np.ndarray, str]], gen: random.Random, low: float = 20.0,
                 high: float = MAX_WINDOW_S) -> list[tuple[np.ndarray, str]]:
    """Consecutive clips joined with pauses into windows of U(low, high) seconds (a clip that
    would overrun a window's target closes it); windows of one clip are dropped."""
    out, audio, texts, target = [], [], [], gen.uniform(low, high)
    for clip, text in clips:
        length = sum(len(a) for a in audio) / SAMPLE_RATE
        if audio and length + PAUSE_S[1] + len(clip) / SAMPLE_RATE > target:
            if len(texts) > 1:
                out.append((np.concatenate(audio), " ".join(texts)))
            audio, texts, target = [], [], gen.uniform(low, high)
        if len(clip) / SAMPLE_RATE <= high:
            audio += ([pause(gen)] if audio else []) + [clip]
            texts.append(text.strip())
    if len(texts) > 1:
        out.append((np.concatenate(audio), " ".join(texts)))
    return out


def spec_augment(mel: Tensor, n_frames: Tensor, gen: torch.Generator, freq_width: int = 20, n_freq: int = 2,
                 time_share: float = 0.08, n_time: int = 4) -> Tensor:
    """Frequency and time masks (SpecAugment, LD policy scaled down) on log-mel (B, n_mels, T), drawn
    per call; time masks fall inside each clip's own n_frames (B,) mel frames, masked bins take the
    clip's mean."""
    b, n_mels, t = mel.shape
    dev = mel.device
    fill = (mel.sum((1, 2)) / (n_frames * n_mels).clamp(min=1))[:, None, None]  # (B, 1, 1)
    keep = torch.ones_like(mel, dtype=torch.bool)
    bins, frames = torch.arange(n_mels, device=dev), torch.arange(t, device=dev)
    for _ in range(n_freq):
        w = torch.randint(0, freq_width + 1, (b, 1), device=dev, generator=gen)
        f0 = (torch.rand(b, 1, device=dev, generator=gen) * (n_mels - w)).long()
        keep &= ~((bins >= f0) & (bins < f0 + w))[:, :, None]
    width = (time_share * n_frames.float() / n_time).clamp(min=1)  # (B,) the widest time mask
    for _ in range(n_time):
        w = (torch.rand(b, device=dev, generator=gen) * width).long()[:, None]
        s0 = (torch.rand(b, 1, device=dev, generator=gen) * (n_frames[:, None] - w).clamp(min=1)).long()
        keep &= ~((frames >= s0) & (frames < s0 + w))[:, None, :]
    return torch.where(keep, mel, fill)


class RealClips:
    """Real recordings with their labels, drawn as (encoder states, ids, seconds) training examples."""

    def __init__(self, manifests: list[Path], encode_texts, max_len: int, device: torch.device, read_audio):
        rows = []
        for m in manifests:
            rows += [(m.parent, json.loads(x)) for x in m.read_text().splitlines() if x.strip()]
        ids = encode_texts([r["text"] for _, r in rows])
        keep = [i for i, x in enumerate(ids) if 0 < len(x) < max_len]
        self.audio = [torch.from_numpy(read_audio(rows[i][0] / rows[i][1]["audio"])).to(device, torch.float16)
                      for i in keep]
        self.ids = [ids[i] for i in keep]
        self.texts = [rows[i][1]["text"] for i in keep]
        self.max_len, self.device = max_len, device
        by: dict[str, list[int]] = {}
        for j, i in enumerate(keep):
            by.setdefault(rows[i][1].get("speaker", f"clip{i}"), []).append(j)
        self.by_speaker = by
        self.speaker_of = {j: s for s, js in by.items() for j in js}

    def __len__(self) -> int:
        return len(self.audio)

    def hours(self) -> float:
        return sum(len(a) for a in self.audio) / SAMPLE_RATE / 3600

    def _pick(self, gen: random.Random, join: float) -> list[int]:
        """One clip, or (with probability `join`) that clip and more of its speaker's up to a U(15, 29.5) s window."""
        first = gen.randrange(len(self.audio))
        picked, length = [first], len(self.audio[first]) / SAMPLE_RATE
        if gen.random() < join:
            target = gen.uniform(15.0, MAX_WINDOW_S)
            others = [j for j in self.by_speaker[self.speaker_of[first]] if j != first]
            gen.shuffle(others)
            for j in others:
                more = len(self.audio[j]) / SAMPLE_RATE + PAUSE_S[1]
                if length + more > target:
                    break
                picked.append(j)
                length += more
        return picked

    @torch.no_grad()
    def draw(self, n: int, encoder: torch.nn.Module, gen: random.Random, tgen: torch.Generator, join: float,
             specaug: bool) -> list[tuple[Tensor, list[int], float, str]]:
        """n examples, each encoded now (SpecAugment masks drawn anew) as the Store keeps clips."""
        audio = torch.zeros(n, N_SAMPLES, device=self.device)
        examples = []
        for row in range(n):
            picked, end = self._pick(gen, join), 0
            for j in picked:  # each clip written in place, after a pause of near-silence as `pause` makes
                gap = int(gen.uniform(*PAUSE_S) * SAMPLE_RATE) if end else 0
                audio[row, end: end + gap] = torch.randn(gap, device=self.device, generator=tgen) * 1e-3
                clip = self.audio[j][: N_SAMPLES - end - gap]
                audio[row, end + gap: end + gap + len(clip)] = clip
                end = min(N_SAMPLES, end + gap + len(clip))
            text = " ".join(self.texts[j] for j in picked)
            ids = [i for j in picked for i in self.ids[j]]  # Whisper's BPE never merges across a space
            examples.append((end, ids[: self.max_len - 1], text))
        param = encoder.conv1.weight
        mel = log_mel_spectrogram(audio, encoder.config.n_mels, pad=False, device=param.device)  # (n, 80, 3000)
        if specaug:
            n_mel_frames = torch.tensor([e[0] // (N_SAMPLES // mel.shape[-1]) for e in examples], device=mel.device)
            mel = spec_augment(mel, n_mel_frames, tgen)
        with torch.autocast("cuda", torch.bfloat16, enabled=param.device.type == "cuda"):
            xa = encoder(mel.to(param.dtype))  # (n, 1500, C)
        return [(xa[i, : audio_frames(e[0])].to(torch.float16), e[1], e[0] / SAMPLE_RATE, e[2])
                for i, e in enumerate(examples)]


@torch.no_grad()
def own_canvas(logits: Tensor, xt: Tensor, masked: Tensor, mask_id: int, gen: torch.Generator,
               keep_low: float = 0.1, keep_high: float = 0.8) -> tuple[Tensor, Tensor, Tensor]:
    """A canvas as a later PDD step sees it: the model's argmax fills a share U(keep_low, keep_high)
    of each row's masked positions, its most confident ones (PDD keeps its confident tokens and
    re-masks the rest), wrong tokens included; the rest stay masked and are the loss positions.

    logits (B, L, V) of the model on xt (B, L); masked (B, L). Returns xt', masked', t' (B,)."""
    prob, pred = logits.float().softmax(-1).max(-1)  # (B, L) each
    n_masked = masked.sum(-1)  # (B,)
    share = torch.rand(xt.shape[0], device=xt.device, generator=gen) * (keep_high - keep_low) + keep_low
    n_fill = (share * n_masked).floor().long()  # (B,)
    score = torch.where(masked, -prob, torch.full_like(prob, float("inf")))  # most confident first
    rank = score.argsort(-1).argsort(-1)  # (B, L) each position's rank
    fill = masked & (rank < n_fill[:, None])
    new_masked = masked & ~fill
    t = (new_masked.sum(-1).float() / xt.shape[1]).clamp(min=1e-3)
    return torch.where(fill, pred, xt), new_masked, t
